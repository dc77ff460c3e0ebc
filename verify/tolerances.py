"""Error budgets built from spec's bounds: every tolerance of verify/ comes from here, none is tuned.

Three kinds of error are told apart:

- the maths' own error at finite alpha: `spec.output_error_bound` (and `spec.tail_bound`);
- rounding in a convolution or a hard-limit layer (sums of products):
  `spec.rounding_bound` = gamma_n * sum|terms| with n the number of terms of each output's sum;
- rounding in a softmax layer, propagated through the softmax (`attention_rounding` below): an error
  delta_k in score k moves p_k by the factor e^{delta_k} / sum_j p_j e^{delta_j}, so the head's
  average moves by at most 2 E/(1 - E) max|x|, E = sum_k p_k delta_k e^{delta_k} (the expectation
  under the exact probabilities, computed from the float64 reference); the sums of the softmax, the
  average and the merge add gamma_n terms as above.

Each function returns the bound for ONE computation in `dtype` against the exact value; a comparison
of two computations adds the two sides' bounds.
"""

from __future__ import annotations

import copy
import math

import torch

import spec
from impl.attention.encodings import probability_floor
from verify import reference

EXP_ROUNDINGS = 40
"""Rounding units charged to one exp(): torch's CPU flash-attention kernel uses a vectorised exp
accurate to 20 ulp (= 40 u); the plain softmax's exp is within 1 ulp, so this over-covers it."""

CHAIN_ROUNDINGS = 16
"""Roundings on one term's path through the gradients' chain rule beyond the sums `gradient_tolerances`
counts: the softmax backward p_k (u_k - sum_j p_j u_j) (a difference and a product), the score's
derivative (alpha = width^2 / 2: a square; delta - Delta: a difference; its square and the sum over
n <= 3 axes: at most 5; the products by alpha and by the width: 2) and the products by the upstream
gradient and the merge weight (2): 12 at most, charged as 16."""


def negligible(dtype: torch.dtype) -> float:
    """How far one probability of a layer computing in dtype may be from its exact value besides the
    softmax's rounding: exp underflows below `tiny`, and the layer drops probabilities below
    `impl.attention.encodings.probability_floor` (eps^2 in float32)."""
    return torch.finfo(dtype).tiny + probability_floor(dtype)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def unit_roundoff(dtype: torch.dtype) -> float:
    return spec.unit_roundoff(dtype_name(dtype))


def gamma(n: int, dtype: torch.dtype) -> float:
    """spec.gamma: Higham's gamma_n = n u / (1 - n u) for the dtype's unit roundoff."""
    return spec.gamma(int(n), unit_roundoff(dtype))


# -- convolutions and the hard limit -------------------------------------------------------------------


def conv_terms(conv) -> int:
    """Terms in each output's sum: in_channels/groups * prod(kernel) products, plus the bias."""
    return conv.in_channels // conv.groups * math.prod(conv.kernel_size) + 1


def conv_abs(conv, x: torch.Tensor) -> torch.Tensor:
    """sum |x| |W| + |b| at every output: the same convolution run on |x| with |W| and |b| (float64)."""
    twin = float64_twin(conv)
    with torch.no_grad():
        twin.weight.copy_(conv.weight.detach().abs())
        if conv.bias is not None:
            twin.bias.copy_(conv.bias.detach().abs())
        return twin(x.detach().abs().double())


def float64_twin(conv):
    """A float64 convolution of `conv`'s class and hyperparameters (weights: torch's default init)."""
    twin = type(conv)(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                      bias=conv.bias is not None, padding_mode=conv.padding_mode)
    return twin.double()


def conv_rounding(conv, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Per output: spec.rounding_bound(n, sum|x||W| + |b|, dtype) for ONE computation of the conv
    (or of its hard-limit attention, whose gather is exact and whose merge sums the same terms)."""
    dtype = conv.weight.dtype if dtype is None else dtype
    return gamma(conv_terms(conv), dtype) * conv_abs(conv, x)


def hard_limit_tolerance(conv, x: torch.Tensor) -> torch.Tensor:
    """|attn(x) - conv(x)| at alpha = inf: both sides round, so twice `conv_rounding`."""
    return 2 * conv_rounding(conv, x)


def gradient_terms_and_abs(conv, x: torch.Tensor, upstream: torch.Tensor):
    """For the loss sum(conv(x) * upstream): per input entry and per weight entry, the number of
    product terms in its gradient's sum and the sum of their absolute values (float64), obtained by
    differentiating the same conv with |W|, |x|, |upstream| (and with all-ones for the counts)."""
    results = []
    for values in ("abs", "count"):
        twin = float64_twin(conv)
        ones = values == "count"
        with torch.no_grad():
            twin.weight.copy_(torch.ones_like(conv.weight) if ones else conv.weight.detach().abs())
            if twin.bias is not None:
                twin.bias.zero_()
        inp = (torch.ones_like(x) if ones else x.detach().abs()).double().requires_grad_(True)
        up = torch.ones_like(upstream) if ones else upstream.detach().abs()
        (twin(inp) * up.double()).sum().backward()
        results.append((inp.grad, twin.weight.grad))
    (x_abs, w_abs), (x_count, w_count) = results
    return {"input": (x_count, x_abs), "weight": (w_count, w_abs)}


def sum_rounding(terms: torch.Tensor, abs_sum: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Elementwise spec.rounding_bound(terms, abs_sum, dtype) (terms >= 1 assumed; 0 terms: 0)."""
    count = int(terms.max().round()) if terms.numel() else 1
    return gamma(max(count, 1), dtype) * abs_sum


# -- softmax layers -------------------------------------------------------------------------------------


def score_magnitude(layer, ref: reference.Attention) -> tuple[torch.Tensor, int]:
    """(A, m): per (head, query, key) the sum of |terms| of the score's computation and the number
    of rounding operations on its longest path, so that |computed - exact score| <= gamma_m A."""
    p, dims = ref.pairs, layer.spatial_dims
    A, m = torch.zeros(()), 1
    encoding = layer.encoding
    if layer.encoding_name == "quadratic" and not layer.hard:
        A = _quadratic_abs(layer, p)
        m = dims + 5   # delta - centre, square, sum over axes, width^2, alpha * .
    elif layer.encoding_name == "generalized":
        s = encoding.scale.detach().double().abs()
        diff = (p.delta[None] - encoding.centre.detach().double()[:, None, None, :]).abs()
        A = torch.einsum("hqki,hij,hqkj->hqk", diff, s @ s.transpose(-1, -2), diff) / 2
        m = dims * dims + 2 * dims + 4
    elif layer.encoding_name == "learned":
        A = 0
        for axis, (table, projection) in enumerate(zip(encoding.tables, encoding.projections)):
            index = p.delta[..., axis].long() + encoding.grid_size[axis] - 1
            A = A + torch.einsum("qke,he->hqk", table.weight.detach().double().abs()[index],
                                 projection.weight.detach().double().abs())
        m = encoding.tables[0].weight.shape[1] + dims + 1
    if layer.content:
        d = layer.content_dim
        tokens = ref.tokens.abs()
        q = tokens[:, p.query_index] @ layer.query.weight.detach().double().abs().T \
            + layer.query.bias.detach().double().abs()
        k = tokens @ layer.key.weight.detach().double().abs().T + layer.key.bias.detach().double().abs()
        q = q.reshape(*q.shape[:2], layer.heads, d)
        k = k.reshape(*k.shape[:2], layer.heads, d)
        A = A + torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(d)
        m = max(m, d + 2 * (layer.dim + 1) + 4) + 1
    return torch.as_tensor(A, dtype=torch.float64), m


def _quadratic_abs(layer, p) -> torch.Tensor:
    alpha = layer.encoding.width.detach().double() ** 2 / 2
    diff = p.delta[None] - layer.encoding.centre.detach().double()[:, None, None, :]
    return alpha[:, None, None] * (diff ** 2).sum(-1)


def _score_errors(layer, ref: reference.Attention, dtype: torch.dtype) -> torch.Tensor:
    """delta_k bound per (.., head, query, key): u |s_k - max s| (the max subtraction) + gamma_m A_k."""
    if ref.scores is None:  # hard limit: exact probabilities
        return torch.zeros_like(ref.probabilities)
    A, m = score_magnitude(layer, ref)
    s = ref.scores
    return unit_roundoff(dtype) * (s - s.amax(-1, keepdim=True)).abs() + gamma(m, dtype) * A


def _prob_terms(ref: reference.Attention, dims: int) -> int:
    """Roundings of one probability and of one head's average: exp, the normalising sum over the
    keys and the division (per axis when separable), the product of the axes' factors, and the
    sum of the average over the keys."""
    keys = ref.pairs.keys.shape[0]
    return 2 * keys + 4 * dims + EXP_ROUNDINGS


def _require_bounded(E: torch.Tensor, layer, dtype: torch.dtype) -> None:
    """The softmax's relative error bound 2E / (1 - E) holds for E < 1 only: beyond, the bound says
    nothing, and an example checked against it would pass whatever it computed. A failure, not a pass."""
    if bool((E >= 1).any()):
        raise AssertionError(f"unbounded: the scores' rounding in {dtype} gives E = {float(E.max()):.3g} >= 1 for "
                             f"{layer.extra_repr()}; the rounding bound cannot check this example")


def attention_rounding(layer, ref: reference.Attention, dtype: torch.dtype) -> torch.Tensor:
    """Per output (B, O, *Q): the rounding error of ONE computation of the layer in `dtype`."""
    delta = _score_errors(layer, ref, dtype)
    p = ref.probabilities
    E = (p * delta * delta.exp()).sum(-1)                                   # (.., H, Nq)
    _require_bounded(E, layer, dtype)
    relative = 2 * E / (1 - E)
    g1 = gamma(_prob_terms(ref, layer.spatial_dims), dtype)
    max_abs = float(ref.tokens.abs().max()) if ref.tokens.numel() else 0.0
    underflow = ref.pairs.keys.shape[0] * negligible(dtype)
    head = ((relative + g1 + relative * g1) * max_abs + underflow * max_abs)  # (.., H, Nq)
    if head.dim() == 2:
        head = head[None]
    weight = layer.merge.weight.detach().double().abs().reshape(layer.out_dim, layer.heads, layer.dim)
    l1 = weight.sum(-1)                                                      # (O, H)
    g2 = gamma(layer.heads * layer.dim + 1, dtype)
    bias = torch.zeros(layer.out_dim, dtype=torch.float64) if layer.merge.bias is None \
        else layer.merge.bias.detach().double().abs()
    out = (1 + g2) * torch.einsum("oh,bhq->boq", l1, head) \
        + g2 * (l1.sum(-1) * max_abs + bias)[None, :, None]
    return out.reshape(*out.shape[:2], *ref.pairs.query_shape)


def fast_path_tolerance(layer, ref: reference.Attention) -> torch.Tensor:
    """|layer(x) - reference(x)|: the layer in its dtype plus the reference in float64."""
    dtype = layer.merge.weight.dtype
    return attention_rounding(layer, ref, dtype) + attention_rounding(layer, ref, torch.float64)


def probability_tolerance(layer, ref: reference.Attention, dtype: torch.dtype) -> torch.Tensor:
    """Per entry |p_computed - p_exact| for ONE computation of the positional probabilities in dtype:
    p_k (e^{delta_k} (1 + g) / (1 - E) - 1) plus `negligible` (exp's underflow and the layer's floor),
    g the softmax's roundings."""
    delta = _score_errors(layer, ref, dtype)
    p = ref.probabilities
    E = (p * delta * delta.exp()).sum(-1, keepdim=True)
    _require_bounded(E, layer, dtype)
    g = gamma(ref.pairs.keys.shape[0] + 2 * layer.spatial_dims + EXP_ROUNDINGS, dtype)
    return p * (delta.exp() * (1 + g) / (1 - E) - 1) + negligible(dtype)


def finite_alpha_tolerance(conv, layer, x: torch.Tensor, ref: reference.Attention,
                           alpha: float) -> tuple[torch.Tensor, float]:
    """|attn(x) - conv(x)| for the layer converted from conv at finite `alpha` (the conversion's request:
    its heads' alphas are checked against it, `checks.converted_alpha`, and may round below it, which
    the smallest of them accounts for): spec.output_error_bound (the maths) plus the rounding of both
    computations. Returns (per-output bound, the maths' part alone)."""
    alpha = min(alpha, float(layer.encoding.alpha.detach().min()))
    weight = conv.weight.detach().double().abs()
    kernel_l1 = float(weight.flatten(1).sum(-1).max())
    max_abs = float(x.detach().abs().max())
    maths = spec.output_error_bound(alpha, kernel_l1, max_abs, dims=layer.spatial_dims)
    dtype = conv.weight.dtype
    return maths + attention_rounding(layer, ref, dtype) + conv_rounding(conv, x), maths


# -- gradients of positional layers ---------------------------------------------------------------------


def gradient_tolerances(layer, x: torch.Tensor, upstream: torch.Tensor, ref: reference.Attention) -> dict:
    """Bounds on |grad computed - grad exact| for the loss sum(layer(x) * upstream) of a positional
    (no content) layer, ONE computation in the layer's dtype; keys: "x", "merge.weight", "merge.bias",
    and in float64 the encoding's parameters ("encoding.centre", "encoding.width", "encoding.scale",
    "encoding.tables.a.weight", "encoding.projections.a.weight").

    The gradients wrt x, W and b are sums of products g W p (x): their sums of |terms| come from the
    reference run on |x|, |W|, |b| and |g| (p >= 0 already), and each term carries the relative error
    of p (`probability_tolerance`) and gamma_N for its path through the sums. The encoding's gradients
    go through the softmax backward ds_k = p_k (u_k - sum_j p_j u_j), u_k = sum g W x_k; their sums of
    |terms| replace every factor by its absolute value (and the difference by a sum), by hand below.
    """
    if layer.content:
        raise ValueError("layer must be positional (content=False): content gradients are not bounded here")
    dtype = layer.merge.weight.dtype
    p = ref.probabilities                                                       # (H, Nq, Nk)
    pairs = ref.pairs
    batch, heads, channels, out_dim = x.shape[0], layer.heads, layer.dim, layer.out_dim
    n_q, n_k, dims = pairs.queries.shape[0], pairs.keys.shape[0], layer.spatial_dims
    m = score_magnitude(layer, ref)[1] if ref.scores is not None else 1
    paths = batch * n_q + 2 * n_k + out_dim * heads * channels + m + 4 * dims + EXP_ROUNDINGS + CHAIN_ROUNDINGS
    g = gamma(paths, dtype)
    rel = (probability_tolerance(layer, ref, dtype) - negligible(dtype)) / p
    rel = torch.where(p > 0, rel, 0.0).amax() if p.numel() else torch.tensor(0.0)
    rel = float(rel)
    factor = rel * (1 + g) + g

    # sums of |terms| for x, W, b: autograd through the reference on absolute values
    twin = _abs_twin(layer)
    x_abs = x.detach().abs().double().requires_grad_(True)
    g_abs = upstream.detach().abs().double()
    out = reference.attention(twin, x_abs, differentiable=True).output
    (out * g_abs).sum().backward()
    # probabilities that underflow or are dropped as negligible err by at most `negligible` each
    floor = negligible(dtype)
    w_abs = layer.merge.weight.detach().double().abs().reshape(out_dim, heads, channels)
    tokens_abs = ref.tokens.detach().abs()                                         # (B, Nk, C)
    g_sum = torch.einsum("boq,ohc->bc", g_abs.flatten(2), w_abs)                   # sum_{o,h,q} |g||W|
    gx_sum = torch.einsum("boq,bkc->oc", g_abs.flatten(2), tokens_abs)             # sum_{b,q,k} |g||x|
    bounds = {"x": factor * x_abs.grad + floor * g_sum.reshape(*g_sum.shape, *[1] * dims),
              "merge.weight": factor * twin.merge.weight.grad
              + floor * gx_sum[:, None, :].expand(out_dim, heads, channels).reshape(out_dim, -1)}
    if layer.merge.bias is not None:
        bounds["merge.bias"] = gamma(batch * n_q, dtype) * twin.merge.bias.grad
    if dtype != torch.float64 or ref.scores is None:
        return bounds

    # encoding parameters: D[h, q, k] = sum_b p (|u_k| + sum_j p_j |u_j|), |u| = sum_{o,c} |g| |W| |x_k|
    u = torch.einsum("boq,ohc,bkc->bhqk", g_abs.flatten(2), w_abs, tokens_abs)
    D = (p * (u + (p * u).sum(-1, keepdim=True))).sum(0)                        # (H, Nq, Nk)
    encoding = layer.encoding
    scale = 2 * (g + 2 * rel)
    if layer.encoding_name in ("quadratic", "generalized"):
        diff = (pairs.delta[None] - encoding.centre.detach().double()[:, None, None, :]).abs()  # (H, Nq, Nk, n)
    if layer.encoding_name == "quadratic":
        width = encoding.width.detach().double().abs()
        alpha = width ** 2 / 2
        bounds["encoding.centre"] = scale * torch.einsum("hqk,hqki->hi", D, 2 * alpha[:, None, None, None] * diff)
        bounds["encoding.width"] = scale * width * torch.einsum("hqk,hqk->h", D, (diff ** 2).sum(-1))
    elif layer.encoding_name == "generalized":
        s = encoding.scale.detach().double().abs()
        bounds["encoding.centre"] = scale * torch.einsum("hqk,hij,hqkj->hi", D, s @ s.transpose(-1, -2), diff)
        bounds["encoding.scale"] = scale * torch.einsum("hqk,hqki,hqkl,hlj->hij", D, diff, diff, s)
    elif layer.encoding_name == "learned":
        for axis, (table, projection) in enumerate(zip(encoding.tables, encoding.projections)):
            index = pairs.delta[..., axis].long() + encoding.grid_size[axis] - 1           # (Nq, Nk)
            t_abs = table.weight.detach().double().abs()
            p_abs = projection.weight.detach().double().abs()                              # (H, E)
            bounds[f"encoding.projections.{axis}.weight"] = scale * torch.einsum("hqk,qke->he", D, t_abs[index])
            per_pair = torch.einsum("hqk,he->qke", D, p_abs).reshape(-1, p_abs.shape[1])
            rows = torch.zeros_like(t_abs).index_add_(0, index.reshape(-1), per_pair)
            bounds[f"encoding.tables.{axis}.weight"] = scale * rows
    return bounds


def _abs_twin(layer):
    """A float64 copy of the layer with |W| and |b| in its merge (the same encoding: the same p)."""
    twin = copy.deepcopy(layer).double()
    with torch.no_grad():
        twin.merge.weight.abs_()
        if twin.merge.bias is not None:
            twin.merge.bias.abs_()
    twin.zero_grad()
    return twin
