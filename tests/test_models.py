"""The model zoo: registry, exact parameter counts of the paper's models, forwards at any size, pruning, CLI."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from impl.attention import RelativeSelfAttention, content
from impl.models import AttentionClassifier, ResNet, build, depth_to_space, list_models, space_to_depth
from impl.models import __main__ as cli
from impl.models import pruning
from impl.models.registry import allowed_overrides

# paper.md: computed from the reference architecture; they match the paper's Table 1 (rounded there).
PAPER_COUNTS = {"resnet18": 11_173_962, "sa_quadratic": 12_086_844, "sa_learned": 12_278_682,
                "sa_learned_content": 29_601_882}
NAMES = ["resnet18", "sa_quadratic", "sa_generalized", "sa_learned", "sa_learned_content", "sa_many_heads",
         "tiny_resnet18", "tiny_quadratic", "tiny_generalized", "tiny_learned", "tiny_learned_content",
         "tiny_many_heads"]
TINY = [name for name in NAMES if name.startswith("tiny_")]
SA = [name for name in NAMES if not name.endswith("resnet18")]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- registry ---------------------------------------------------------------------------------------------
def test_registry_lists_every_model():
    assert list_models() == sorted(NAMES)
    assert list_models("tiny_*") == sorted(TINY)
    assert list_models("nothing*") == []


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_paper_parameter_counts(name):
    torch.manual_seed(0)
    assert n_params(build(name)) == PAPER_COUNTS[name]


def test_paper_architecture():
    model = build("sa_quadratic")
    assert isinstance(model, AttentionClassifier)
    assert (model.embed.in_features, model.embed.out_features) == (12, 400)
    assert len(model.layers) == 6 and (model.classifier.in_features, model.classifier.out_features) == (400, 10)
    layer = model.layers[0]
    attention = layer.attention
    assert isinstance(attention, RelativeSelfAttention) and attention.heads == 9
    assert tuple(attention.merge.weight.shape) == (400, 9 * 400)
    assert attention.attn_dropout == 0.1 and layer.dropout.p == 0.1
    assert layer.attention_norm.eps == 1e-12 and layer.mlp_norm.eps == 1e-12
    assert (layer.mlp[0].out_features, layer.mlp[2].in_features) == (512, 512)
    assert isinstance(layer.mlp[1], nn.GELU) and layer.mlp[1].approximate == "none"
    assert build("sa_many_heads").layers[0].attention.heads == 16
    assert build("sa_learned_content").layers[0].attention.content


def test_resnet18_architecture():
    model = build("resnet18")
    assert isinstance(model, ResNet)
    stem = model.stem[0]
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride) == (3, 64, (3, 3), (1, 1))
    assert [len(stage) for stage in model.stages] == [2, 2, 2, 2]
    assert [stage[0].conv1.out_channels for stage in model.stages] == [64, 128, 256, 512]
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert [stage[0].conv1.out_channels for stage in build("tiny_resnet18").stages] == [16, 32, 64, 128]


def test_build_errors():
    with pytest.raises(ValueError, match=r"unknown model 'vit'.*resnet18.*tiny_quadratic"):
        build("vit")
    with pytest.raises(ValueError, match=r"'heds'.*allowed: .*heads"):
        build("tiny_quadratic", heds=4)
    with pytest.raises(ValueError, match=r"'downsample'.*allowed: in_channels, num_classes, image_size"):
        build("tiny_resnet18", downsample=2)
    with pytest.raises(ValueError, match="encoding"):  # the names fix the encoding
        build("tiny_quadratic", encoding="learned")
    bad = [dict(image_size=(0, 8)), dict(image_size="32"), dict(dim=0), dict(depth=-1), dict(heads=1.5),
           dict(mlp_dim=True), dict(dropout=1.0), dict(attn_dropout=-0.1), dict(downsample=0),
           dict(num_classes=0), dict(in_channels=0)]
    for overrides in bad:
        (name,) = overrides
        with pytest.raises(ValueError, match=f"^{name} must be"):
            build("tiny_learned", **overrides)
    with pytest.raises(ValueError, match=r"image_size \(30, 32\) must be divisible by downsample=4"):
        build("tiny_learned", image_size=(30, 32), downsample=4)
    with pytest.raises(ValueError, match="image_size"):
        build("tiny_resnet18", image_size=(8, -8))
    assert set(allowed_overrides("tiny_learned")) == {"in_channels", "num_classes", "image_size", "downsample",
                                                     "dim", "depth", "heads", "mlp_dim", "dropout", "attn_dropout"}


# -- forwards -----------------------------------------------------------------------------------------------
def test_space_to_depth_is_the_reference_bijection():
    x = torch.randn(2, 3, 6, 10)
    tokens = space_to_depth(x, 2)
    assert tokens.shape == (2, 3, 5, 12)
    # token[b, y, x, (i f + j) C + c] = image[b, c, f y + i, f x + j]
    b, y, xx, i, j, c = 1, 2, 4, 1, 0, 2
    assert tokens[b, y, xx, (i * 2 + j) * 3 + c] == x[b, c, 2 * y + i, 2 * xx + j]
    assert torch.equal(depth_to_space(tokens, 2), x)
    assert torch.equal(space_to_depth(depth_to_space(tokens, 2), 2), tokens)
    with pytest.raises(ValueError, match="divisible"):
        space_to_depth(torch.randn(1, 3, 5, 4), 2)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("size", [None, (12, 20)])
def test_tiny_models_forward_any_size(name, size):
    torch.manual_seed(0)
    model = build(name) if size is None else build(name, image_size=size)
    h, w = model.image_size
    out = model.train()(torch.randn(2, 3, h, w))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, h, w)).shape == (1, 10)


@pytest.mark.parametrize("name", [n for n in TINY if n != "tiny_resnet18"])
def test_attention_model_traces_under_torch_compile_as_one_graph(name):
    """`python -m impl.train --compile`: dynamo and AOTAutograd trace the model with fake tensors, which
    oneDNN's ops reject, so while compiling the layers take the plain products (`gemm.onednn_gemm`), the
    autograd merge (`positional_merge.positional_merge`), the compiler's random integers for the dropout masks
    (`impl.dropout.keep_mask`) and no positional cache: one graph (fullgraph), training mode included. The
    aot_eager backend needs no C++ compiler; the outputs, and the parameters' gradients, are compared in
    eval mode (no dropout mask; with grad enabled the layers take no positional cache either)."""
    torch._dynamo.reset()  # each model compiles afresh (the other cases' graphs count towards the recompile limit)
    torch.manual_seed(0)
    model = build(name)
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(x)                                                   # training mode: dropout traced too
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)
    grads = {}
    for which, forward in (("compiled", compiled), ("eager", model)):
        model.zero_grad(set_to_none=True)
        forward(x).sum().backward()
        grads[which] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for n, eager in grads["eager"].items():
        torch.testing.assert_close(grads["compiled"][n], eager, rtol=1e-4, atol=1e-5, msg=lambda m: f"{n}: {m}")


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # the eager reference
def test_flex_attention_inside_a_compiled_model_is_traced_with_it():
    """On CUDA the content layers call FlexAttention (`content.flex_content`, itself a torch.compile
    wrapper); under `--compile` it is traced with the rest of the model. Checked on the CPU's FlexAttention
    (forward): one graph, equal to the eager function."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(2, 3, 16, 4, generator=g), torch.randn(2, 3, 16, 4, generator=g)
    x = torch.randn(2, 5, 4, 4, generator=g)
    tables = [torch.randn(3, 4, 4, generator=g), torch.randn(3, 4, 4, generator=g)]

    def attend(queries, keys, x):
        return content.flex_content(queries, keys, x, tables, (4, 4), (4, 4))

    with torch.no_grad():
        got = torch.compile(attend, backend="aot_eager", fullgraph=True)(queries, keys, x)
        want = content.flex_content(queries, keys, x, tables, (4, 4), (4, 4), compiled=False)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", [n for n in TINY if n != "tiny_resnet18"])
def test_tiny_models_on_digits(name):
    model = build(name, in_channels=1, image_size=8, downsample=1, num_classes=7).eval()
    assert model(torch.randn(1, 1, 8, 8)).shape == (1, 7)


def test_learned_tables_sized_from_the_image():
    model = build("tiny_learned_content", image_size=(16, 24))
    tables = model.layers[0].attention.encoding.tables
    assert [t.num_embeddings for t in tables] == [2 * 8 - 1, 2 * 12 - 1]
    model = build("tiny_learned", image_size=(8, 12), downsample=1)
    assert [t.num_embeddings for t in model.layers[0].attention.encoding.tables] == [15, 23]
    with pytest.raises(ValueError, match="grid_size"):  # larger than it was built for
        model(torch.randn(1, 3, 10, 12))


def test_paper_model_forward_at_full_size():
    torch.manual_seed(0)
    model = build("sa_quadratic").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("name", [n for n in SA if not n.startswith("tiny_")] + ["resnet18"])
def test_big_models_forward_small_non_square(name):
    model = build(name, image_size=(8, 12)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 8, 12)).shape == (1, 10)


def test_input_checks():
    model = build("tiny_quadratic")
    with pytest.raises(ValueError, match="3, H, W"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(1, 3, 31, 32))
    with pytest.raises(ValueError, match="3, H, W"):
        build("tiny_resnet18")(torch.randn(1, 4, 32, 32))


# -- optimiser helpers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TINY)
def test_attention_layers_and_no_weight_decay(name):
    model = build(name)
    layers = model.attention_layers()
    params = dict(model.named_parameters())
    names = model.no_weight_decay()
    assert set(names) <= set(params)
    if name == "tiny_resnet18":
        assert layers == [] and names == []
        return
    assert len(layers) == model.depth and all(isinstance(layer, RelativeSelfAttention) for layer in layers)
    expected = {"quadratic": {"centre", "width"}, "generalized": {"centre", "scale"}, "learned": set()}
    assert {name.rsplit(".", 1)[1] for name in names} == expected[model.encoding]
    assert len(names) == len(expected[model.encoding]) * model.depth


# -- pruning ----------------------------------------------------------------------------------------------
def zero_merge_blocks(model: nn.Module, plan: dict[str, list[int]]) -> nn.Module:
    """A copy of `model` in which the given heads contribute nothing: their merge column blocks zeroed."""
    model = copy.deepcopy(model)
    layers = dict(pruning.named_attention_layers(model))
    with torch.no_grad():
        for name, heads in plan.items():
            layer = layers[name]
            for h in heads:
                layer.merge.weight[:, h * layer.dim:(h + 1) * layer.dim] = 0
    return model


def assert_same_function(pruned: nn.Module, reference: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(pruned.eval()(x), reference.eval()(x))  # float64 defaults: exact maths


def test_prune_quadratic_heads():
    torch.manual_seed(0)
    model = build("tiny_quadratic", depth=3).double()
    layers = model.attention_layers()
    with torch.no_grad():
        layers[0].encoding.width[[1, 4]] = 3e-3      # s^2 = 9e-6 < 1e-5: pruned
        layers[0].encoding.width[2] = 3.3e-3         # s^2 = 1.09e-5: kept
        layers[2].encoding.width[0] = -1e-4          # the sign of s does not matter
    plan = {"layers.0.attention": [1, 4], "layers.1.attention": [], "layers.2.attention": [0]}
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    reference = zero_merge_blocks(model, plan)
    kept_centres = layers[0].encoding.centre[[0, 2, 3, 5, 6, 7, 8]].clone()
    assert pruning.prune_degenerate_heads(model) == list(plan.items())
    assert [layer.heads for layer in layers] == [7, 9, 8]
    assert layers[0].encoding.heads == 7 and layers[0].encoding.width.shape == (7,)
    assert torch.equal(layers[0].encoding.centre, kept_centres)
    assert layers[0].merge.weight.shape == (64, 7 * 64) and layers[0].merge.in_features == 7 * 64
    assert_same_function(model, reference, x)
    model.train()(x).sum().backward()  # the new parameters train
    assert layers[0].encoding.centre.grad is not None and layers[0].merge.weight.grad is not None
    assert pruning.prune_degenerate_heads(model) == [(name, []) for name in plan]  # idempotent


def test_prune_generalized_heads():
    torch.manual_seed(0)
    model = build("tiny_generalized").double()
    encoding = model.attention_layers()[1].encoding
    with torch.no_grad():
        encoding.scale[0] = torch.diag(torch.tensor([1.0, 0.03]))   # cond 1111 > 1000: pruned
        encoding.scale[3] = torch.diag(torch.tensor([1.0, 0.0325]))  # cond 947: kept
        encoding.scale[5] = 3e-3 * torch.eye(2)                     # largest eigenvalue 9e-6: pruned
        encoding.scale[6] = 3.3e-3 * torch.eye(2)                   # 1.09e-5: kept
        encoding.scale[7] = torch.tensor([[1.0, 2.0], [0.5, 1.0]])  # singular (cond inf): pruned
    plan = {"layers.0.attention": [], "layers.1.attention": [0, 5, 7]}
    assert pruning.degenerate_heads(model.attention_layers()[1]) == [0, 5, 7]
    reference = zero_merge_blocks(model, plan)
    assert pruning.prune_degenerate_heads(model) == list(plan.items())
    assert encoding.scale.shape == (6, 2, 2) and encoding.centre.shape == (6, 2)
    assert_same_function(model, reference, torch.randn(2, 3, 16, 24, dtype=torch.float64))


def test_prune_content_layer_and_refusals():
    torch.manual_seed(0)
    layer = RelativeSelfAttention(8, heads=4, encoding="quadratic", content=True).double()
    with torch.no_grad():
        layer.encoding.width[2] = 0.0
    model = nn.Sequential(layer)
    reference = zero_merge_blocks(model, {"0": [2]})
    assert pruning.prune_degenerate_heads(model) == [("0", [2])]
    assert layer.query.weight.shape == (3 * 8, 8) and layer.key.bias.shape == (3 * 8,)
    assert_same_function(model, reference, torch.randn(2, 8, 5, 6, dtype=torch.float64))

    model = build("tiny_quadratic")
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        model.attention_layers()[1].encoding.width.zero_()
    with pytest.raises(ValueError, match="every head of layer 'layers.1.attention'"):
        pruning.prune_degenerate_heads(model)
    assert [layer.heads for layer in model.attention_layers()] == [9, 9]  # nothing changed
    assert before["layers.0.attention.merge.weight"].shape == model.layers[0].attention.merge.weight.shape
    learned = build("tiny_learned")
    assert pruning.prune_degenerate_heads(learned) == [("layers.0.attention", []), ("layers.1.attention", [])]
    with pytest.raises(ValueError, match="quadratic and generalized"):
        pruning.remove_heads(learned.attention_layers()[0], [0])
    with pytest.raises(ValueError, match=r"heads must be indices in \[0, 9\)"):
        pruning.remove_heads(model.attention_layers()[0], [9])


def test_pruned_checkpoint_loads_into_a_fresh_model():
    torch.manual_seed(0)
    model = build("tiny_quadratic")
    with torch.no_grad():
        model.attention_layers()[0].encoding.width[[0, 3]] = 0.0
    pruning.prune_degenerate_heads(model)
    state = model.state_dict()
    fresh = build("tiny_quadratic")
    assert pruning.match_heads(fresh, state) == [("layers.0.attention", 7), ("layers.1.attention", 9)]
    fresh.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model.eval()(x))


# -- the CLI ----------------------------------------------------------------------------------------------
def test_flops_counted_by_hand_for_resnet():
    """2 x multiply-adds of every convolution and of the classifier, from the shapes seen by hooks."""
    model = build("tiny_resnet18", image_size=(16, 24))
    expected = []

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            expected.append(2 * output.numel() * module.in_channels * kh * kw)
        else:
            expected.append(2 * output.numel() * module.in_features)

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(hook)
    assert cli.flops_per_image(model) == sum(expected)


def test_cli_lists_models_with_counts():
    env = dict(os.environ, OMP_NUM_THREADS="1")  # one thread is faster on a loaded machine
    result = subprocess.run([sys.executable, "-m", "impl.models", "--list"], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["model", "params", "GFLOPs/image", "input"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert sorted(rows) == sorted(NAMES)
    for name, count in PAPER_COUNTS.items():
        assert rows[name][0] == f"{count:,}"
    assert len({len(line) for line in lines}) == 1  # aligned
    assert float(rows["sa_quadratic"][1]) > float(rows["resnet18"][1]) > 0


@pytest.mark.parametrize("argv", [[], ["--bogus"], ["--list", "nothing*"]])
def test_cli_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_cli_pattern():
    assert cli.main(["--list", "tiny_l*"]) == 0
