"""The numerical checks themselves, one function per property, shared by the tests and by
test_can_fail (which feeds them mutated layers and expects an AssertionError).

Each takes the statement id it checks, the modules and input, a one-line context and a
reproduction, and ends in one `assert_within`/`assert_all_within` call (one recorded example).
"""

from __future__ import annotations

import copy
import itertools
import math

import torch

import spec
from impl.convert import conv_to_attention, merge_weight
from verify import reference, tolerances
from verify.assertions import assert_all_within


def _difference(actual: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """|actual - expected| in float64, or inf when the shapes differ (a failure that says so)."""
    if actual.shape != expected.shape:
        return torch.tensor(math.inf)
    return (actual.detach().double() - expected.detach().double()).abs()


def hard_limit_checks(conv, layer, x) -> list:
    """(what, error, bound) of Lemma 1: the hard-limit layer equals the convolution, within both
    computations' rounding; and so does the plain attention (one-hot softmax limit, head averages, merge:
    `reference.attention`, float64) with the layer's parameters, since the layer itself runs a
    pure-shift layer as a convolution."""
    tolerance = tolerances.hard_limit_tolerance(conv, x)
    with torch.no_grad():
        expected = conv(x)
        error = _difference(layer(x), expected)
    attention = _difference(reference.attention(layer, x).output, expected)
    return [("max|attn - conv|", error, tolerance), ("max|plain attention - conv|", attention, tolerance)]


def hard_limit(statement: str, conv, layer, x, context: str, reproduce: str) -> None:
    """Lemma 1 for one example (`hard_limit_checks`)."""
    assert_all_within(statement, hard_limit_checks(conv, layer, x), context, reproduce)


def converted_gradients(statement: str, case, seed: int) -> None:
    """`gradients` for the case's convolution and its hard-limit conversion, upstream ~ N(0, 1) from seed."""
    conv, x = case.build()
    layer = conv_to_attention(conv)
    with torch.no_grad():
        out_shape = conv(x).shape
    generator = torch.Generator().manual_seed(seed)
    upstream = torch.randn(out_shape, generator=generator, dtype=torch.float64).to(x.dtype)
    gradients(statement, conv, layer, x, upstream, case.describe(),
              case.reproduce("# gradients of sum(out * upstream), upstream ~ N(0, 1)"))


def gradients(statement: str, conv, layer, x, upstream, context: str, reproduce: str) -> None:
    """The hard-limit layer's gradients equal the convolution's: wrt the input, wrt the weights (the
    merge weight's diagonal blocks, read in `impl.convert.merge_weight`'s layout) and wrt the bias,
    for the loss sum(out * upstream)."""
    taps = list(itertools.product(*(range(k) for k in conv.kernel_size)))
    x_conv = x.detach().clone().requires_grad_(True)
    x_attn = x.detach().clone().requires_grad_(True)
    conv.zero_grad()
    layer.zero_grad()
    (conv(x_conv) * upstream).sum().backward()
    (layer(x_attn) * upstream).sum().backward()
    dtype = x.dtype
    sums = tolerances.gradient_terms_and_abs(conv, x, upstream)
    x_terms, x_abs = sums["input"]
    w_terms, w_abs = sums["weight"]
    checks = [("max|d/dx attn - d/dx conv|", _difference(x_attn.grad, x_conv.grad),
               2 * tolerances.sum_rounding(x_terms, x_abs, dtype))]
    mask = merge_weight(torch.ones_like(conv.weight), taps, conv.groups) != 0
    mapped = merge_weight(conv.weight.grad, taps, conv.groups)
    w_bound = 2 * tolerances.sum_rounding(w_terms, merge_weight(w_abs, taps, conv.groups), dtype)
    w_error = _difference(layer.merge.weight.grad, mapped)
    checks.append(("max|d/dW attn - d/dW conv| (diagonal blocks)",
                   torch.where(mask, w_error, 0.0) if w_error.dim() else w_error, w_bound))
    if conv.bias is not None:
        count = upstream[:, 0].numel()
        b_abs = upstream.detach().double().abs().transpose(0, 1).flatten(1).sum(-1)
        checks.append(("max|d/db attn - d/db conv|", _difference(layer.merge.bias.grad, conv.bias.grad),
                       2 * tolerances.gamma(max(count, 1), dtype) * b_abs))
    assert_all_within(statement, checks, context, reproduce)


def converted_alpha(layer, alpha: float) -> tuple[str, torch.Tensor, float]:
    """(what, error, bound): every head of a layer converted at `alpha` has that alpha, within the rounding
    of its width sqrt(2 alpha) to the layer's dtype and of squaring it (gamma_3 relative). The bounds
    below take alpha from the conversion's request, not from the layer they check."""
    actual = layer.encoding.alpha.detach().double()
    return ("max|alpha_h / alpha - 1|", (actual / alpha - 1).abs(), tolerances.gamma(3, layer.encoding.width.dtype))


def finite_alpha_checks(conv, layer, x, alpha: float) -> list:
    """(what, error, bound) of output-error-bound: |attn(x) - conv(x)| <= spec.output_error_bound(alpha)
    + rounding for the layer converted from conv at `alpha` (which its heads must have)."""
    ref = reference.attention(layer, x)
    bound, _ = tolerances.finite_alpha_tolerance(conv, layer, x, ref, alpha)
    with torch.no_grad():
        error = _difference(layer(x), conv(x))
    return [converted_alpha(layer, alpha), ("max|attn - conv|", error, bound)]


def finite_alpha(statement: str, conv, layer, x, alpha: float, context: str, reproduce: str) -> float:
    """output-error-bound for one example (`finite_alpha_checks`); returns the largest error (for the
    tightness check)."""
    checks = finite_alpha_checks(conv, layer, x, alpha)
    assert_all_within(statement, checks, context, reproduce)
    return float(checks[-1][1].max())


def centre_keys(layer, ref: reference.Attention) -> torch.Tensor:
    """(H, Nq) flat key index of q + Delta^(h) (-1 where that key is not in the padded grid): the
    centres must be integers."""
    centre = layer.encoding.centre.detach().double()
    target = ref.pairs.queries[None] + centre[:, None, :]                # (H, Nq, n)
    shape = torch.tensor(ref.pairs.padded_shape, dtype=torch.float64)
    inside = ((target >= 0) & (target < shape)).all(-1)
    strides = torch.tensor([math.prod(ref.pairs.padded_shape[a + 1:]) for a in range(len(shape))],
                           dtype=torch.float64)
    index = (target.clamp(min=0) * strides).sum(-1).long()
    return torch.where(inside, index, -1)


def tail(statement: str, layer, probs: torch.Tensor, ref: reference.Attention, alpha_of_head: torch.Tensor,
         context: str, reproduce: str, slack: torch.Tensor | None = None, extra=()) -> None:
    """tail-bound: 1 - p at the key q + Delta^(h) <= spec.tail_bound(alpha_h, dims) for every head and
    every query whose centre key exists (plus `slack`, the rounding of p, per entry); `extra`: more
    (what, error, bound) checks of the same example."""
    index = centre_keys(layer, ref)
    present = index >= 0
    gathered = probs.gather(-1, index.clamp(min=0)[..., None])[..., 0]          # (H, Nq)
    bound = torch.tensor([spec.tail_bound(float(a), layer.spatial_dims) for a in alpha_of_head],
                         dtype=torch.float64)[:, None].expand_as(gathered)
    if slack is not None:
        bound = bound + slack.gather(-1, index.clamp(min=0)[..., None])[..., 0]
    error = torch.where(present, 1 - gathered.double(), 0.0)
    assert_all_within(statement, [*extra, ("max(1 - p_Delta)", error, bound)], context, reproduce)


def _on_device(layer, x, device: str):
    """The layer and x as run on `device` (a copy of the layer off the CPU; both themselves on it)."""
    if device == "cpu":
        return layer, x
    return copy.deepcopy(layer).to(device), x.to(device)


def fast_path(statement: str, layer, x, context: str, reproduce: str, ref=None, extra=(), device="cpu") -> None:
    """The layer's forward (and its positional probabilities), run on `device`, equal the plain reference
    (on the CPU); `extra`: more (what, error, bound) checks of the same example."""
    ref = reference.attention(layer, x) if ref is None else ref
    run_layer, run_x = _on_device(layer, x, device)
    with torch.no_grad():
        out = run_layer(run_x).cpu()
    checks = [*extra,
              ("max|layer - reference|", _difference(out, ref.output), tolerances.fast_path_tolerance(layer, ref))]
    if not layer.content:
        probs = run_layer.attention_probabilities(tuple(x.shape[2:]), x.dtype, run_x.device).cpu()
        bound = tolerances.probability_tolerance(layer, ref, x.dtype) \
            + tolerances.probability_tolerance(layer, ref, torch.float64)
        checks.append(("max|p - p_reference|", _difference(probs, ref.probabilities), bound))
    assert_all_within(statement, checks, context, reproduce)


def fast_path_gradients(statement: str, layer, x, upstream, context: str, reproduce: str, device="cpu") -> None:
    """The layer's gradients (wrt x, the merge and, in float64, the encoding's parameters) for the loss
    sum(layer(x) * upstream), run on `device`, equal autograd through the plain reference (positional
    layers)."""
    twin = copy.deepcopy(layer).double()
    twin.zero_grad()
    x_ref = x.detach().double().requires_grad_(True)
    ref = reference.attention(twin, x_ref, differentiable=True)
    (ref.output * upstream.double()).sum().backward()
    run_layer, run_x = _on_device(layer, x, device)
    x_layer = run_x.detach().clone().requires_grad_(True)
    run_layer.zero_grad()
    (run_layer(x_layer) * upstream.to(run_x.device)).sum().backward()
    values = reference.attention(layer, x)
    mine = tolerances.gradient_tolerances(layer, x, upstream, values)
    exact = tolerances.gradient_tolerances(twin, x, upstream.double(), values)   # the reference's side
    grads = {"x": (x_layer.grad, x_ref.grad)}
    params, twin_params = dict(run_layer.named_parameters()), dict(twin.named_parameters())
    for name in mine:
        if name != "x":
            grads[name] = (params[name].grad, twin_params[name].grad)
    grads = {name: tuple(None if g is None else g.cpu() for g in pair) for name, pair in grads.items()}
    checks = []
    for name, (actual, expected) in grads.items():
        if actual is None or expected is None:
            missing = (actual is None) != (expected is None)
            checks.append((f"gradient wrt {name}: {'missing on one side' if missing else 'none'}", float(missing), 0.0))
            continue
        bound = mine[name] + exact[name]
        checks.append((f"max|d/d{name} layer - d/d{name} reference|", _difference(actual, expected), bound))
    assert_all_within(statement, checks, context, reproduce)
