"""Lemma 2 and its relatives, numerically: quadratic-identity, softmax-shift-invariance, softmax-limit,
generalized-encoding.

quadratic-identity (Lemma 2, eq. 9): "With r_delta = (||delta||^2, delta) and v = -alpha (1, -2 Delta),
v . r_delta = -alpha(||delta - Delta||^2 - ||Delta||^2)."
softmax-shift-invariance (Lemma 2, proof): "softmax_k(s_k + c) = softmax_k(s_k) for a per-query
constant c, so the quadratic head's softmax is that of -alpha ||delta - Delta||^2."
softmax-limit (Lemma 2): "As alpha -> oo, softmax_delta(-alpha ||delta - Delta||^2) over any finite set
of integer offsets containing Delta tends to the one-hot at Delta."
generalized-encoding (Sec. 4): "v . r_delta = -(delta - Delta)^T Sigma^-1 (delta - Delta)/2 + const,
and the softmax -> one-hot at Delta as Sigma -> 0."
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import spec
from impl.attention import RelativeSelfAttention
from impl.convert import conv_to_attention
from verify import checks, reference, strategies, tolerances
from verify.assertions import assert_all_within, assert_within
from verify.cases import ConvCase, LayerCase
from verify.profiles import examples


# -- quadratic-identity --------------------------------------------------------------------------------
def _paper_scores(layer, p: reference.Pairs) -> tuple[torch.Tensor, torch.Tensor, int]:
    """v . r_delta with the paper's r_delta = (||delta||^2, delta) and v = -alpha (1, -2 Delta), the
    sum of |terms| of that dot product (float64), and r_delta's dimension D_p."""
    alpha = layer.encoding.width.detach().double() ** 2 / 2                       # (H,)
    centre = layer.encoding.centre.detach().double()                              # (H, n)
    r = torch.cat([(p.delta ** 2).sum(-1, keepdim=True), p.delta], -1)           # (Nq, Nk, n + 1)
    v = -alpha[:, None] * torch.cat([torch.ones_like(alpha)[:, None], -2 * centre], -1)  # (H, n + 1)
    return torch.einsum("hd,qkd->hqk", v, r), torch.einsum("hd,qkd->hqk", v.abs(), r.abs()), r.shape[-1]


@pytest.mark.statement("quadratic-identity")
@examples(1)
@given(case=strategies.layer_cases(encoding=st.just("quadratic"), content=st.just(False), hard=st.just(False)))
def test_layer_scores_are_eq9_minus_a_constant(case: LayerCase):
    """impl's scores -alpha ||delta - Delta||^2 = v . r_delta - alpha ||Delta||^2, D_p = n + 1."""
    layer, x = case.build()
    spatial = tuple(x.shape[2:])
    p = reference.pairs(layer.geometry, spatial)
    with torch.no_grad():
        impl = layer.encoding.dense_logits(layer.axis_offsets(spatial, x.dtype, x.device)).double()
    paper, paper_abs, encoding_dim = _paper_scores(layer, p)
    alpha = layer.encoding.width.detach().double() ** 2 / 2
    constant = alpha * (layer.encoding.centre.detach().double() ** 2).sum(-1)       # alpha ||Delta||^2
    n = layer.spatial_dims
    diff = p.delta[None] - layer.encoding.centre.detach().double()[:, None, None, :]
    impl_abs = alpha[:, None, None] * (diff ** 2).sum(-1)
    bound = tolerances.gamma(n + 5, x.dtype) * impl_abs \
        + tolerances.gamma(n + 4, torch.float64) * (paper_abs + constant[:, None, None])
    error = (impl - (paper - constant[:, None, None])).abs()
    assert_all_within("quadratic-identity", [
        ("max|impl score - (v . r_delta - alpha ||Delta||^2)|", error, bound),
        ("|dim(r_delta) - spec's D_p|", abs(encoding_dim - spec.encoding_dim(n)), 0),
    ], case.describe(), case.reproduce("# see verify/test_quadratic.py::_paper_scores"))


# -- softmax-shift-invariance ---------------------------------------------------------------------------
def _shifted(layer: RelativeSelfAttention, seed: int) -> RelativeSelfAttention:
    """A copy whose scores differ by a per-(head, query) constant: a vector added to every row of each
    learned table (+<v_a, P_a[h]> on every key), and a vector added to the key projection's bias
    (+q . b / sqrt(d) on every key)."""
    shifted = copy.deepcopy(layer)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if layer.encoding_name == "learned":
            for table in shifted.encoding.tables:
                row = torch.randn(table.weight.shape[1], generator=generator, dtype=torch.float64)
                table.weight += row.to(table.weight.dtype)
        if layer.content:
            bias = shifted.key.bias
            bias += torch.randn(bias.shape, generator=generator, dtype=torch.float64).to(bias.dtype)
    return shifted


@pytest.mark.statement("softmax-shift-invariance")
@examples(1)
@given(case=st.one_of(
    strategies.layer_cases(encoding=st.just("learned"), content=st.booleans()),
    strategies.layer_cases(encoding=st.sampled_from(("quadratic", "generalized", "learned", None)),
                           content=st.just(True))),
       seed=strategies.seeds())
def test_constant_added_to_every_score_changes_nothing(case: LayerCase, seed: int):
    layer, x = case.build()
    shifted = _shifted(layer, seed)
    with torch.no_grad():
        error = (layer(x).double() - shifted(x).double()).abs()
    ref, ref_shifted = reference.attention(layer, x), reference.attention(shifted, x)
    bound = tolerances.attention_rounding(layer, ref, x.dtype) + tolerances.attention_rounding(shifted, ref_shifted, x.dtype)
    assert_within("softmax-shift-invariance", error, bound, case.describe(),
                  case.reproduce("# see verify/test_quadratic.py::_shifted"), what="max|layer(x) - shifted layer(x)|")


# -- softmax-limit --------------------------------------------------------------------------------------
LIMIT_ALPHAS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


@pytest.mark.statement("softmax-limit")
@examples(0.6)
@given(case=strategies.conv_cases(dtype=st.just("float64")))
def test_finite_alpha_tends_to_the_hard_limit(case: ConvCase):
    """|layer_alpha(x) - layer_inf(x)| <= output_error_bound(alpha) + rounding, a bound that -> 0, and the
    largest 1 - p_Delta never grows with alpha (beyond the rounding of p)."""
    conv, x = case.build()
    hard = conv_to_attention(conv)
    with torch.no_grad():
        limit = hard(x).double()
    checks_ = []
    previous = None
    for alpha in LIMIT_ALPHAS:
        layer = conv_to_attention(conv, alpha)
        ref = reference.attention(layer, x)
        bound, _ = tolerances.finite_alpha_tolerance(conv, layer, x, ref, alpha)
        with torch.no_grad():
            error = (layer(x).double() - limit).abs()
        checks_.append((f"max|layer(alpha={alpha:g}) - layer(inf)|", error, bound))
        probs = layer.attention_probabilities(tuple(x.shape[2:]), torch.float64).detach()
        index = checks.centre_keys(layer, ref)
        gap = torch.where(index >= 0, 1 - probs.gather(-1, index.clamp(min=0)[..., None])[..., 0], 0.0).max()
        slack = float(tolerances.probability_tolerance(layer, ref, torch.float64).max())
        if previous is not None:
            checks_.append((f"max(1 - p_Delta) at alpha={alpha:g} minus at alpha/2", max(float(gap - previous), 0.0),
                            2 * slack + 1e-300))
        previous = gap
    assert_all_within("softmax-limit", checks_, case.describe(),
                      case.reproduce("print([(conv_to_attention(conv, a)(x) - conv_to_attention(conv)(x)).abs().max()\n"
                                     "       for a in (1, 8, 64)])"))


# -- generalized-encoding ------------------------------------------------------------------------------
def _generalized_twin(layer: RelativeSelfAttention) -> RelativeSelfAttention:
    """The generalized layer with Sigma^-1 = 2 alpha_h I (S = |width| I) and the quadratic layer's
    centres, merge and geometry."""
    twin = RelativeSelfAttention(layer.dim, heads=layer.heads, out_dim=layer.out_dim, encoding="generalized",
                                 spatial_dims=layer.spatial_dims, bias=layer.merge.bias is not None,
                                 geometry=layer.geometry).to(layer.merge.weight.dtype).eval()
    with torch.no_grad():
        twin.encoding.centre.copy_(layer.encoding.centre)
        eye = torch.eye(layer.spatial_dims, dtype=twin.encoding.scale.dtype)
        twin.encoding.scale.copy_(layer.encoding.width.abs()[:, None, None] * eye)
        twin.merge.load_state_dict(layer.merge.state_dict())
    return twin


@pytest.mark.statement("generalized-encoding")
@examples(1)
@given(case=strategies.layer_cases(encoding=st.just("quadratic"), content=st.just(False), hard=st.just(False)))
def test_isotropic_generalized_heads_are_quadratic_heads(case: LayerCase):
    layer, x = case.build()
    twin = _generalized_twin(layer)
    with torch.no_grad():
        error = (layer(x).double() - twin(x).double()).abs()
    bound = tolerances.attention_rounding(layer, reference.attention(layer, x), x.dtype) \
        + tolerances.attention_rounding(twin, reference.attention(twin, x), x.dtype)
    assert_within("generalized-encoding", error, bound, case.describe(),
                  case.reproduce("# generalized twin: S = |width| I, see verify/test_quadratic.py"),
                  what="max|quadratic layer - generalized layer with Sigma^-1 = 2 alpha I|")


@pytest.mark.statement("generalized-encoding")
@examples(1)
@given(case=strategies.layer_cases(encoding=st.just("generalized"), content=st.just(False),
                                   dtype=st.just("float64")),
       sharpness=strategies.alphas(1.0, 256.0))
def test_sharp_generalized_heads_approach_one_hot(case: LayerCase, sharpness: float):
    """Integer centres, S scaled by sqrt(t): (delta - Delta)^T Sigma^-1 (delta - Delta)/2 >=
    lambda_min(Sigma^-1)/2 ||delta - Delta||^2, so 1 - p_Delta <= spec.tail_bound(lambda_min/2, n) -> 0."""
    layer, x = case.build()
    with torch.no_grad():
        layer.encoding.centre.round_()
        layer.encoding.scale.mul_(math.sqrt(sharpness))
    ref = reference.attention(layer, x)
    probs = layer.attention_probabilities(tuple(x.shape[2:]), torch.float64)
    precision = layer.encoding.precision.detach().double()
    lowest = torch.linalg.eigvalsh(precision)[:, 0]
    # eigvalsh errs by at most ~ n u ||Sigma^-1||: take the bound's alpha a hair lower
    lowest = (lowest - 8 * precision.shape[-1] * 2.0 ** -53 * torch.linalg.matrix_norm(precision, 2)).clamp(min=1e-300)
    slack = tolerances.probability_tolerance(layer, ref, torch.float64)
    checks.tail("generalized-encoding", layer, probs, ref, lowest / 2, case.describe() + f", t={sharpness:.4g}",
                case.reproduce("# scale S by sqrt(t), round the centres"), slack)
