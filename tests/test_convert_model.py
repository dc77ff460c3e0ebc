"""convert_model end to end: whole networks give the same logits after every convolution became attention.

Theorem 1 (with Lemma 1 and the quadratic encoding at alpha = inf) says each converted layer computes its
convolution exactly; so a converted network computes the original function, and the only differences are
floating-point rounding:

- float64: the logits agree to 1e-10 relative (the issue's acceptance threshold; rounding gives ~1e-15).
- float32: the bound is computed, not chosen. Both networks evaluate the same exact function; each output of a
  convolution (or of the attention replacing it: an exact gather, then the merge's dot product over the same
  n = C_in/groups * prod(kernel) products) is a sum whose n rounding events each perturb it by at most
  u S, S = |W| * |x| + |b| (spec's `rounding-bound` terms). The other layers of a ResNet round too, on
  inputs that now differ slightly: BatchNorm (4 events, S = |x a| + |mu a| + |beta|, a = w / sqrt(var + eps)),
  average pooling (n events, S = mean|x|), the linear classifier (like a convolution), a residual add (1 event,
  S = |y|); ReLU and max-pool are exact. To first order, a rounding event delta (|delta| <= u) at output
  element e of layer l moves logit i by (d z_i / d y_e) S_e delta.

  Summing the worst cases (sum_e |g_e| gamma_n S_e) is vacuous for a deep network: over 10^5 elements all
  assumed to round the same way, it reached half the logits' size for torchvision's resnet18. Under the
  standard probabilistic model of rounding (Higham & Mary 2019: independent, mean-zero errors) Hoeffding's
  inequality bounds each network's logit error by LAMBDA u sqrt(sum_e n_e (g_e S_e)^2), except with
  probability 2 exp(-LAMBDA^2 / 2) < 1e-21 at LAMBDA = 10; the two networks' errors add.
  `rounding_bound_of_conversion` evaluates this with the float64 network's activations and per-logit
  gradients. A leaf module whose rounding it does not model makes it raise, so no layer is silently ignored.
  Two checks keep the bound honest: it stays below 1% of the logits' scale, and a real conversion bug (one
  layer's kernel reflected) breaks it.
"""

from __future__ import annotations

import copy
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from impl.attention import RelativeSelfAttention
from impl.convert import CONV_TYPES, convert_model
from spec.bounds import unit_roundoff

torchvision = pytest.importorskip("torchvision")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


F64_RELATIVE = 1e-10  # the acceptance threshold for float64 logits


# -- helpers -----------------------------------------------------------------------------------------------
def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


def convert(model: nn.Module) -> nn.Module:
    return convert_model(model, verbose=False).model


def snapshot(model: nn.Module) -> tuple[dict, dict]:
    """Module types by name and a copy of every parameter and buffer."""
    types = {name: type(module) for name, module in model.named_modules()}
    state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    return types, state


def assert_unchanged(model: nn.Module, before: tuple[dict, dict]) -> None:
    types, state = snapshot(model)
    assert types == before[0], "convert_model changed the original model's modules"
    assert state.keys() == before[1].keys()
    for name, value in state.items():
        assert torch.equal(value, before[1][name]), f"convert_model changed the original's {name}"


def assert_converted_structure(original: nn.Module, converted: nn.Module, rows) -> None:
    """Every conv replaced by a RelativeSelfAttention at the same name; every other module untouched."""
    convs = {name for name, m in original.named_modules() if isinstance(m, CONV_TYPES)}
    assert convs, "the model has no convolution to convert"
    assert [row.name for row in rows] == [n for n, m in original.named_modules() if isinstance(m, CONV_TYPES)]
    modules = dict(converted.named_modules())
    assert not any(isinstance(m, CONV_TYPES) for m in modules.values()), "a convolution was left"
    for name in convs:
        assert isinstance(modules[name], RelativeSelfAttention), f"{name} is {type(modules[name]).__name__}"
    inside_converted = tuple(name + "." for name in convs)
    for name, module in original.named_modules():
        if name in convs or name.startswith(inside_converted):
            continue
        assert type(modules[name]) is type(module), f"{name} changed type"
        own = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
        new = dict(modules[name].named_parameters(recurse=False)) | dict(modules[name].named_buffers(recurse=False))
        assert own.keys() == new.keys(), f"{name}'s parameters changed"
        for key, value in own.items():
            assert torch.equal(value, new[key]), f"{name}.{key} changed"
            assert value.data_ptr() != new[key].data_ptr(), f"{name}.{key} is shared, not copied"


def randomise_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial running statistics and affine parameters, so BatchNorm is not the identity in eval."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))


def _residual_blocks() -> tuple[type, ...]:
    from impl.models import BasicBlock
    from torchvision.models.resnet import BasicBlock as TVBasic, Bottleneck as TVBottleneck

    return (BasicBlock, TVBasic, TVBottleneck)


EXACT_LEAVES = (nn.ReLU, nn.MaxPool2d, nn.Identity, nn.Dropout, nn.Flatten, nn.Sequential)  # empty Sequential: identity


LAMBDA = 10.0  # probabilistic rounding: the bound fails with probability <= 2 exp(-LAMBDA^2 / 2) < 1e-21


def rounding_terms(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Float64 logits and, for every rounding layer, (output, n, S): its output tensor, the number of
    rounding events per output element and S, the elementwise bound on the partial sums (|W| * |x| + |b| for
    a convolution). `model` is a float64 deepcopy in eval mode."""
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    blocks = _residual_blocks()
    records: list[tuple[torch.Tensor, int, torch.Tensor]] = []

    def hook(module, inputs, output):
        x_in = inputs[0]
        if isinstance(module, CONV_TYPES):
            n = module.in_channels // module.groups * math.prod(module.kernel_size) + (module.bias is not None)
            bias = None if module.bias is None else module.bias.abs()
            partial = module._conv_forward(x_in.abs(), module.weight.abs(), bias)
        elif isinstance(module, nn.Linear):
            n = module.in_features + (module.bias is not None)
            partial = F.linear(x_in.abs(), module.weight.abs(), None if module.bias is None else module.bias.abs())
        elif isinstance(module, nn.BatchNorm2d):
            scale = module.weight / (module.running_var + module.eps).sqrt()
            shape = (1, -1, 1, 1)
            n = 4
            partial = ((x_in * scale.reshape(shape)).abs() + (module.running_mean * scale).abs().reshape(shape)
                       + module.bias.abs().reshape(shape))
        elif isinstance(module, nn.AdaptiveAvgPool2d):
            n = math.ceil(x_in.shape[-1] * x_in.shape[-2] / (output.shape[-1] * output.shape[-2])) + 1
            partial = F.adaptive_avg_pool2d(x_in.abs(), output.shape[-2:])
        elif isinstance(module, blocks):
            n, partial = 1, output.abs()  # the residual add before the block's last ReLU
        elif isinstance(module, EXACT_LEAVES) or list(module.children()):
            return None
        else:
            raise TypeError(f"no rounding model for leaf module {type(module).__name__}")
        records.append((output, n, partial.detach()))
        return output.clone()  # keep `output` itself free of the in-place ops that follow

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        logits = model(x.double())
    finally:
        for handle in handles:
            handle.remove()
    return logits, records


def rounding_bound_of_conversion(model: nn.Module, x: torch.Tensor, dtype_name: str) -> torch.Tensor:
    """(batch, classes): bound on |logits(converted) - logits(original)| when both run in `dtype_name`.

    Every rounding event j of either network perturbs the logits by c_j delta_j, |delta_j| <= u, to first
    order, with |c_j| <= |dz_i/dy_e| S_e for the output element e it belongs to. Worst case, the deltas add
    up: sum_e |g_e| gamma_n S_e, which is vacuous for a deep network (over 10^5 elements, all assumed to
    round the same way). Under the standard probabilistic model (Higham & Mary 2019: independent, mean-zero
    rounding errors) Hoeffding's inequality gives, for each network,
    |error_i| <= LAMBDA u sqrt(sum_e n_e (g_e S_e)^2) except with probability 2 exp(-LAMBDA^2 / 2);
    the two networks' errors add.
    """
    u = unit_roundoff(dtype_name)
    logits, records = rounding_terms(copy.deepcopy(model).double().eval(), x)
    outputs = [y for y, _, _ in records]
    variance = torch.zeros_like(logits)
    for i in range(logits.shape[1]):
        grads = torch.autograd.grad(logits[:, i].sum(), outputs, retain_graph=True, allow_unused=True)
        for g, (_, n, partial) in zip(grads, records):
            if g is not None:
                variance[:, i] += n * (g * partial).square().flatten(1).sum(1)
    return (2 * LAMBDA * u * variance.sqrt()).detach()


def assert_float32_within_bound(model32: nn.Module, x32: torch.Tensor) -> None:
    converted = convert(model32)
    with torch.no_grad():
        expected, actual = model32(x32), converted(x32)
    bound = rounding_bound_of_conversion(model32, x32, "float32")
    error = (actual.double() - expected.double()).abs()
    assert bool((error <= bound).all()), (
        f"float32 logits differ by up to {float(error.max()):.3g}, beyond the rounding bound "
        f"(max error/bound = {float((error / bound).max()):.3g})")
    # The bound must say something: below 1% of the logits' scale, and a real conversion bug breaks it:
    # the reflected kernel of the paper's "k = q - shift" convention, in the first 3x3 layer.
    assert float(bound.max()) < 1e-2 * float(expected.abs().max()), f"bound {float(bound.max()):.3g} is vacuous"
    layer = next(m for m in converted.modules() if isinstance(m, RelativeSelfAttention) and m.heads == 9)
    with torch.no_grad():
        layer.encoding.centre.neg_()
        reflected = converted(x32)
    assert not bool(((reflected.double() - expected.double()).abs() <= bound).all())


def check_float64(model: nn.Module, x: torch.Tensor) -> None:
    model = model.double().eval()
    before = snapshot(model)
    conversion = convert_model(model, verbose=False)
    with torch.no_grad():
        expected, actual = model(x.double()), conversion.model(x.double())
    assert_unchanged(model, before)
    assert_converted_structure(model, conversion.model, conversion.layers)
    error = relative_error(actual, expected)
    assert error < F64_RELATIVE, f"float64 logits differ by {error:.3g} relative (> {F64_RELATIVE})"


# -- torchvision and our ResNet18: float64 and float32 --------------------------------------------------
def torchvision_resnet18(generator: torch.Generator) -> nn.Module:
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    randomise_batchnorm(model, generator)
    return model


def cifar_resnet18(generator: torch.Generator) -> nn.Module:
    from impl.models import build

    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    model = build("resnet18").eval()
    randomise_batchnorm(model, generator)
    return model


@pytest.mark.parametrize("builder, size", [(torchvision_resnet18, 64), (cifar_resnet18, 32)],
                         ids=["torchvision-resnet18", "cifar-resnet18"])
def test_resnet18_float64_same_logits(builder, size):
    generator = torch.Generator().manual_seed(0)
    model = builder(generator)
    x = torch.randn(2, 3, size, size, generator=generator, dtype=torch.float64)
    check_float64(model, x)


@pytest.mark.parametrize("builder, size", [(torchvision_resnet18, 64), (cifar_resnet18, 32)],
                         ids=["torchvision-resnet18", "cifar-resnet18"])
def test_resnet18_float32_within_rounding_bound(builder, size):
    generator = torch.Generator().manual_seed(1)
    model = builder(generator)
    before = snapshot(model)
    x = torch.randn(1, 3, size, size, generator=generator)
    assert_float32_within_bound(model, x)
    assert_unchanged(model, before)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "squeezenet1_0"])
def test_other_torchvision_architectures_float64(name):
    """Depthwise/grouped convolutions, squeeze-excitation 1x1 convs on a 1x1 map, a conv classifier."""
    generator = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    randomise_batchnorm(model, generator)
    if name == "mobilenet_v3_small":
        assert any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())
    x = torch.randn(2, 3, 64, 64, generator=generator, dtype=torch.float64)
    check_float64(model, x)


def test_a_shared_convolution_is_replaced_everywhere():
    conv = nn.Conv2d(2, 2, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv).double().eval()
    converted = convert(model)
    assert not any(isinstance(m, CONV_TYPES) for m in converted)
    assert converted[0] is converted[2]  # still shared, as the weights were
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        assert relative_error(converted(x), model(x)) < F64_RELATIVE


def test_conversion_keeps_train_mode_and_gradients():
    """Training mode and requires_grad carry over, so a converted network can be fine-tuned."""
    model = torchvision.models.resnet18(weights=None, num_classes=10).train()
    converted = convert(model)
    attention = [m for m in converted.modules() if isinstance(m, RelativeSelfAttention)]
    assert attention and all(m.training for m in attention)
    assert all(p.requires_grad for m in attention for p in m.parameters())


# -- a trained digits ResNet keeps its test predictions ------------------------------------------------
def digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from impl.data import load

    data = load("digits", split, augment=False)
    images, labels = zip(*(data[i] for i in range(len(data))))
    return torch.stack(images), torch.tensor(labels)


def train_digits_resnet(epochs: int = 1) -> nn.Module:
    """tiny_resnet18 trained on the digits for one epoch (Adam, batch 64)."""
    from impl.models import build

    torch.manual_seed(0)
    model = build("tiny_resnet18", in_channels=1, image_size=8)
    images, labels = digits_split("train")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), 64):
            batch = order[start:start + 64]
            optimizer.zero_grad()
            F.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()
    return model.eval()


def test_trained_digits_resnet_keeps_its_predictions():
    model = train_digits_resnet()
    images, labels = digits_split("test")
    with torch.no_grad():
        logits = model(images)
    accuracy = float((logits.argmax(1) == labels).float().mean())
    assert accuracy > 0.5, f"the digits ResNet did not train (test accuracy {accuracy:.2f})"

    # float64: rounding is ~1e-15 of the logits, far below any margin: every prediction is kept.
    model64 = copy.deepcopy(model).double()
    with torch.no_grad():
        expected64, actual64 = model64(images.double()), convert(model64)(images.double())
    assert relative_error(actual64, expected64) < F64_RELATIVE
    assert torch.equal(actual64.argmax(1), expected64.argmax(1))

    # float32 (how the model was trained): a prediction is decided when its top-2 margin exceeds twice the
    # rounding bound of the logits; every decided prediction must be kept.
    with torch.no_grad():
        actual32 = convert(model)(images)
    bound = rounding_bound_of_conversion(model, images, "float32").max(1).values
    top2 = logits.double().topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1]) > 2 * bound
    assert bool(decided.float().mean() > 0.99), f"only {int(decided.sum())} of {len(decided)} decided"
    changed = (actual32.argmax(1) != logits.argmax(1)) & decided
    assert not bool(changed.any()), f"{int(changed.sum())} decided test predictions changed"


# -- the CLI -------------------------------------------------------------------------------------------------
def test_cli_reports_float64_logit_error():
    result = subprocess.run([sys.executable, "-m", "impl.convert", "--model", "resnet18"],
                            capture_output=True, text=True, timeout=300,
                            env=os.environ | {"OMP_NUM_THREADS": "1"}, check=True)
    out = result.stdout
    assert "20 convolutions converted" in out, out
    assert re.search(r"^stages\.3\.1\.conv2\s+Conv2d\s+3x3\s+9\s", out, re.M), out
    match = re.search(r"= ([0-9.eE+-]+) \(model=resnet18, alpha=inf, float64\)", out)
    assert match, out
    assert float(match.group(1)) < F64_RELATIVE


def test_cli_rejects_bad_alpha(capsys):
    from impl.convert import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--alpha", "-1"])
    assert exit_info.value.code == 2 and "--alpha" in capsys.readouterr().err
