"""tail-bound: how far a quadratic head at finite alpha is from one-hot.

Statement (new): "For any finite set S of integer offsets in Z^n (relative to the head's integer centre
Delta) with 0 in S and alpha > 0: 1 - p_Delta <= B_n(alpha) = 1 - tanh(alpha/2)^n."

Numerically: the attention probabilities (`attention_probabilities`, float64) of (a) layers converted
from every conv of the generated space at alpha in [1/4, 64] and (b) random quadratic layers with
integer centres on random geometries (other key sets: borders, padding, strides) satisfy
1 - p at q + Delta^(h) <= spec.tail_bound(alpha_h, n) for every head and every query whose centre key
exists, up to the rounding of p (tolerances.probability_tolerance).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from impl.convert import conv_to_attention
from verify import checks, reference, strategies, tolerances
from verify.cases import ConvCase, LayerCase
from verify.profiles import examples


def _check(layer, x, context, reproduce, converted_at=None):
    """The tail bound at the heads' alphas; for a layer converted at alpha `converted_at`, those alphas
    are checked to be the one requested (`checks.converted_alpha`)."""
    ref = reference.attention(layer, x)
    probs = layer.attention_probabilities(tuple(x.shape[2:]), torch.float64)
    slack = tolerances.probability_tolerance(layer, ref, torch.float64)
    extra = () if converted_at is None else (checks.converted_alpha(layer, converted_at),)
    checks.tail("tail-bound", layer, probs, ref, layer.encoding.alpha.detach(), context, reproduce, slack, extra)


@pytest.mark.statement("tail-bound")
@examples(1.5)
@given(case=strategies.conv_cases(), alpha=strategies.alphas())
def test_converted_heads_within_tail_bound(case: ConvCase, alpha: float):
    conv, x = case.build()
    _check(conv_to_attention(conv, alpha), x, case.describe() + f", alpha={alpha:.4g}",
           case.reproduce(f"probs = conv_to_attention(conv, {alpha!r}).attention_probabilities(x.shape[2:], torch.float64)"),
           converted_at=alpha)


@pytest.mark.statement("tail-bound")
@examples(1)
@given(case=strategies.layer_cases(encoding=st.just("quadratic"), content=st.just(False), hard=st.just(False),
                                   centres=st.just("integer")))
def test_random_integer_heads_within_tail_bound(case: LayerCase):
    layer, x = case.build()
    # a head centred off the grid has no centre key for any query: such an example would check nothing
    assume(bool((checks.centre_keys(layer, reference.attention(layer, x)) >= 0).any()))
    _check(layer, x, case.describe(),
           case.reproduce("probs = layer.attention_probabilities(x.shape[2:], torch.float64)"))
