"""separable-quadratic and hard-limit: the two shortcuts the layer takes for isotropic heads.

separable-quadratic (new): "An isotropic quadratic head (or a learned row + column score) over a rows x
cols grid of keys has attention kron(R, C), R and C the rows' and columns' 1D softmax matrices."
Numerically: the layer's separable path (one small softmax per axis, applied axis by axis; its
`attention_probabilities` are the Kronecker product of the per-axis matrices) equals the reference's
single softmax over every key of the grid, for random quadratic and learned layers, 1-3 dims, random
geometries.

hard-limit (new): "As alpha -> oo an isotropic head over a box of integer keys attends one-hot to the
key nearest its centre Delta, i.e. Delta clamped into the box axis by axis." Numerically: hard-limit
layers' probabilities are exactly one-hot at clamp(q + round(Delta)) in the padded key box, and their
output is the merge of those clamped tokens.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from verify import checks, reference, strategies, tolerances
from verify.assertions import assert_all_within
from verify.cases import LayerCase
from verify.profiles import examples


@pytest.mark.statement("separable-quadratic")
@examples(2)
@given(case=strategies.layer_cases(encoding=st.sampled_from(("quadratic", "learned")), content=st.just(False),
                                   hard=st.just(False)))
def test_separable_path_equals_dense_softmax(case: LayerCase):
    layer, x = case.build()
    checks.fast_path("separable-quadratic", layer, x, case.describe(),
                     case.reproduce("print(layer(x) - reference.attention(layer, x).output)"))


@pytest.mark.statement("hard-limit")
@examples(1.5)
@given(case=strategies.layer_cases(encoding=st.just("quadratic"), content=st.just(False), hard=st.just(True),
                                   centres=st.sampled_from(("random", "integer"))))
def test_hard_heads_attend_to_the_clamped_centre(case: LayerCase):
    layer, x = case.build()
    spatial = tuple(x.shape[2:])
    p = reference.pairs(layer.geometry, spatial)
    # the key each (head, query) must read: q + round(Delta), clamped into the padded box, per axis
    centre = layer.encoding.centre.detach().double().round()
    upper = torch.tensor(p.padded_shape, dtype=torch.float64) - 1
    target = torch.minimum(torch.clamp(p.queries[None] + centre[:, None, :], min=0), upper)  # (H, Nq, n)
    strides = torch.tensor([math.prod(p.padded_shape[a + 1:]) for a in range(len(spatial))], dtype=torch.float64)
    index = (target * strides).sum(-1).long()                                              # (H, Nq)
    one_hot = torch.nn.functional.one_hot(index, p.keys.shape[0]).double()
    probs = layer.attention_probabilities(spatial, x.dtype)
    # the output: merge of the clamped tokens, in float64
    padded = reference.pad(x.double(), [(a.pad_before, a.pad_after) for a in layer.geometry.axes],
                           layer.geometry.padding_mode).flatten(2)                         # (B, C, Nk)
    read = padded[:, :, index]                                                             # (B, C, H, Nq)
    weight = layer.merge.weight.detach().double().reshape(layer.out_dim, layer.heads, layer.dim)
    expected = torch.einsum("ohc,bchq->boq", weight, read)
    abs_sum = torch.einsum("ohc,bchq->boq", weight.abs(), read.abs())
    if layer.merge.bias is not None:
        expected = expected + layer.merge.bias.detach().double()[None, :, None]
        abs_sum = abs_sum + layer.merge.bias.detach().double().abs()[None, :, None]
    with torch.no_grad():
        out = layer(x).double().flatten(2)
    n = layer.heads * layer.dim + 1
    bound = (tolerances.gamma(n, x.dtype) + tolerances.gamma(n, torch.float64)) * abs_sum
    assert_all_within("hard-limit", [
        ("max|p - one-hot at the clamped centre|", (probs.double() - one_hot).abs(), 0.0),
        ("max|hard attention - merge of clamped tokens|", (out - expected).abs(), bound),
    ], case.describe(), case.reproduce("probs = layer.attention_probabilities(x.shape[2:], x.dtype)"))
