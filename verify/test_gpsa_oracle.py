"""A peer as an oracle: timm's ConViT GPSA after `local_init` attends as our quadratic heads do.

quadratic-identity (Lemma 2, eq. 9): "With r_delta = (||delta||^2, delta) and v = -alpha (1, -2 Delta),
v . r_delta = -alpha(||delta - Delta||^2 - ||Delta||^2)."
softmax-shift-invariance (Lemma 2, proof): "softmax_k(s_k + c) = softmax_k(s_k) for a per-query constant c."

ConViT (d'Ascoli et al. 2021) writes the same encoding independently: `GPSA.get_rel_indices` gives every
(query, key) pair r = (dx, dy, dx^2 + dy^2) (key minus query, x the column offset, y the row offset), and
`local_init` sets the positional projection of head `h1 + K h2` (K = sqrt(heads), c the kernel's centre) to
locality_strength * (2 (h2 - c), 2 (h1 - c), -1). Its positional score is then
-locality_strength ||delta - Delta||^2 + locality_strength ||Delta||^2 + bias_h with Delta = (h1 - c, h2 - c)
(row, column), i.e. our quadratic head with alpha = locality_strength and that centre, up to a per-query
constant that the softmax ignores. GPSA mixes it with content attention through a gate sigmoid(gating_param)
on the *positional* map: gating_param = +1e4 gives sigmoid = 1.0 exactly in float64, a closed content gate.

Tolerances: our side is `tolerances.probability_tolerance` (the score roundings propagated through the
softmax); GPSA's side is the same propagation for its 4-term score (three products and a bias: gamma_4 of
their absolute sum), plus its renormalisation by the sum over the keys (gamma_{N+1} relative).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from impl.attention import RelativeSelfAttention
from verify import reference, tolerances
from verify.assertions import assert_all_within, not_recorded
from verify.profiles import examples

convit = pytest.importorskip("timm.models.convit")

CLOSED = 1e4  # gating_param: sigmoid(1e4) == 1.0 and 1 - sigmoid(1e4) == 0.0 exactly in float64


def gpsa(dim: int, heads: int, locality_strength: float, seed: int) -> "convit.GPSA":
    torch.manual_seed(seed)
    module = convit.GPSA(dim, num_heads=heads, locality_strength=locality_strength).double().eval()
    with torch.no_grad():
        module.local_init()
        module.gating_param.fill_(CLOSED)
    return module


def gpsa_centres(heads: int) -> torch.Tensor:
    """(heads, 2) centres (row, column) that `local_init` gives head h1 + K h2: (h1 - c, h2 - c)."""
    k = math.isqrt(heads)
    c = (k - 1) / 2
    centre = torch.zeros(heads, 2, dtype=torch.float64)
    for h1 in range(k):
        for h2 in range(k):
            centre[h1 + k * h2] = torch.tensor([h1 - c, h2 - c])
    return centre


def our_layer(dim: int, centres: torch.Tensor, alpha: float) -> RelativeSelfAttention:
    layer = RelativeSelfAttention(dim, heads=centres.shape[0], encoding="quadratic", alpha=alpha).double().eval()
    with torch.no_grad():
        layer.encoding.centre.copy_(centres)
        layer.encoding.width.fill_(math.sqrt(2 * alpha))  # in float64 (the constructor's is float32)
    return layer


def gpsa_positional(module, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(pos_proj(rel_indices)) (H, N, N) straight from GPSA's positional path, and the absolute
    sum of each score's four terms (H, N, N)."""
    rel = module.get_rel_indices(n_tokens)[0]                      # (N, N, 3): dx, dy, dx^2 + dy^2
    scores = module.pos_proj(rel).permute(2, 0, 1)                 # (H, N, N)
    weight, bias = module.pos_proj.weight.detach(), module.pos_proj.bias.detach()
    magnitude = torch.einsum("nmd,hd->hnm", rel.abs(), weight.abs()) + bias.abs()[:, None, None]
    return scores.softmax(-1), magnitude.detach()


def gpsa_tolerance(probs: torch.Tensor, scores_abs: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """|p_GPSA - p_exact| per entry, the propagation of `verify.tolerances` applied to GPSA's scores, plus
    the renormalisation attn / attn.sum(-1) (a sum of N terms and a division)."""
    dtype = torch.float64
    u = tolerances.unit_roundoff(dtype)
    n = probs.shape[-1]
    delta = u * (scores - scores.amax(-1, keepdim=True)).abs() + tolerances.gamma(4, dtype) * scores_abs
    E = (probs * delta * delta.exp()).sum(-1, keepdim=True)
    assert bool((E < 1).all())
    g = tolerances.gamma(n + 4 + tolerances.EXP_ROUNDINGS, dtype)
    softmax_part = probs * (delta.exp() * (1 + g) / (1 - E) - 1) + torch.finfo(dtype).tiny
    return softmax_part + tolerances.gamma(n + 2, dtype) * (probs + softmax_part)


def check_maps(statement: str, heads: int, size: int, locality_strength: float, seed: int,
               centres: torch.Tensor | None = None, gate: float = CLOSED) -> None:
    """Assert our layer's positional attention equals GPSA's, both through `get_attention` (the gate) and
    through its positional path alone. `centres`/`gate` let test_can_fail-style checks break it."""
    __tracebackhide__ = True
    dim = 2 * heads
    module = gpsa(dim, heads, locality_strength, seed)
    with torch.no_grad():
        module.gating_param.fill_(gate)
    layer = our_layer(dim, gpsa_centres(heads) if centres is None else centres, locality_strength)
    n_tokens = size * size
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, dim, size, size, generator=generator, dtype=torch.float64)

    with torch.no_grad():
        ours = layer.attention_probabilities((size, size), torch.float64)             # (H, N, N)
        module.rel_indices = module.get_rel_indices(n_tokens)
        tokens = x.flatten(2).transpose(1, 2)                                        # (1, N, C)
        gated = module.get_attention(tokens)[0]                                      # (H, N, N)
        positional, magnitude = gpsa_positional(module, n_tokens)
        raw_scores = module.pos_proj(module.get_rel_indices(n_tokens)[0]).permute(2, 0, 1)
    ref = reference.attention(layer, x)
    ours_tol = tolerances.probability_tolerance(layer, ref, torch.float64)
    theirs_tol = gpsa_tolerance(positional, magnitude, raw_scores)
    context = (f"GPSA(dim={dim}, num_heads={heads}, locality_strength={locality_strength:.4g}) after "
               f"local_init, {size}x{size} tokens, gating_param={gate:g}, seed={seed}")
    reproduce = (f"from verify.test_gpsa_oracle import check_maps\n"
                 f"check_maps({statement!r}, {heads}, {size}, {locality_strength!r}, {seed})")
    assert_all_within(statement, [
        ("max|p_ours - p_GPSA.get_attention|", (ours - gated).abs(), ours_tol + theirs_tol),
        ("max|p_ours - softmax(GPSA.pos_proj(rel_indices))|", (ours - positional).abs(), ours_tol + theirs_tol),
    ], context, reproduce)


@pytest.mark.statement("softmax-shift-invariance")
@examples(0.3)
@given(heads=st.sampled_from((1, 4, 9, 16)), size=st.integers(2, 7),
       locality_strength=st.floats(0.05, 8.0), seed=st.integers(0, 2**16))
def test_gpsa_local_init_equals_our_quadratic_heads(heads, size, locality_strength, seed):
    """Equal positional attention maps, odd (centres on pixels) and even (centres between pixels) K."""
    check_maps("softmax-shift-invariance", heads, size, locality_strength, seed)


@pytest.mark.statement("quadratic-identity")
@pytest.mark.parametrize("heads", [4, 9, 16])
def test_gpsa_scores_are_eq9_plus_a_per_head_constant(heads):
    """GPSA's positional score minus ours is locality_strength ||Delta||^2 + bias_h, the same for every
    (query, key): eq. 9's r_delta and v, in ConViT's order (dx, dy, ||delta||^2)."""
    size, strength = 5, 1.7
    module = gpsa(2 * heads, heads, strength, seed=heads)
    layer = our_layer(2 * heads, gpsa_centres(heads), strength)
    n = size * size
    with torch.no_grad():
        rel = module.get_rel_indices(n)[0]
        theirs = module.pos_proj(rel).permute(2, 0, 1)
        ours = layer.encoding.dense_logits(layer.axis_offsets((size, size), torch.float64, "cpu"))
    centre = gpsa_centres(heads)
    constant = strength * centre.square().sum(-1) + module.pos_proj.bias.detach()
    gap = theirs - ours - constant[:, None, None]
    _, magnitude = gpsa_positional(module, n)
    # GPSA: a 4-term dot product; ours: -alpha sum (delta - Delta)^2 (n + 5 roundings, as
    # verify/test_quadratic.py charges it); the constant and the two subtractions: a few more.
    g = lambda k: tolerances.gamma(k, torch.float64)  # noqa: E731
    bound = g(4) * magnitude + g(7) * ours.abs() \
        + g(4) * (theirs.abs() + ours.abs() + 2 * constant.abs()[:, None, None])
    assert_all_within("quadratic-identity", [("max|s_GPSA - s_ours - (alpha ||Delta||^2 + b_h)|", gap.abs(), bound)],
                      f"GPSA(num_heads={heads}, locality_strength={strength}) on {size}x{size} tokens")


@pytest.mark.parametrize("mutation", ["transposed centres", "content gate open"])
def test_oracle_check_can_fail(mutation):
    """The comparison notices a swapped axis convention (row/column) and an open content gate."""
    heads, size, strength, seed = 9, 5, 1.3, 3
    centres, gate = None, CLOSED
    if mutation == "transposed centres":
        centres = gpsa_centres(heads).flip(-1)
    else:
        gate = -CLOSED
    with not_recorded(), pytest.raises(AssertionError):
        check_maps("softmax-shift-invariance", heads, size, strength, seed, centres=centres, gate=gate)
