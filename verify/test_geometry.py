"""conv-geometry: where a converted convolution's queries and heads sit.

Statement (Remarks on padding, stride, dilation): "Per axis, conv output i reads padded indices
i*s + a*d; the query q_i = i*s + c with c = d*((K-1)//2) and heads on Delta_a = a*d - c read exactly
these; the floor((L_p - d(K-1) - 1)/s) + 1 outputs are the stride-lattice queries whose keys fit;
zero padding = zero padded tokens."

Numerically, for every conv of the generated space: impl's shifts, anchors, padding, query positions
and output sizes equal spec.geometry's and torch's output shape; a convolution written from
spec.geometry's queries and shifts (verify.reference.conv, padding by index arithmetic) equals torch's;
and the layer's padding of its input equals the reference's index-arithmetic padding, in all modes.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

import spec
from impl.convert import conv_padding, conv_to_attention, kernel_anchor, kernel_shifts
from verify import reference, strategies, tolerances
from verify.assertions import assert_all_within, assert_within
from verify.cases import ConvCase, LayerCase
from verify.profiles import examples


def _mismatches(pairs) -> list[tuple[str, float, float]]:
    return [(f"{name}: impl {a!r} vs spec {b!r}" if a != b else name, float(a != b), 0.0) for name, a, b in pairs]


@pytest.mark.statement("conv-geometry")
@examples(2)
@given(case=strategies.conv_cases())
def test_impl_geometry_matches_spec(case: ConvCase):
    conv, x = case.build()
    layer = conv_to_attention(conv)
    pads = conv_padding(conv)
    with torch.no_grad():
        torch_shape = tuple(conv(x).shape[2:])
        layer_shape = tuple(layer(x).shape[2:])
    expected_pads = strategies.resolved_padding(conv.padding, conv.kernel_size, conv.dilation)
    pairs = [("padding (before, after)", pads, expected_pads),
             ("output shape (layer vs torch)", layer_shape, torch_shape)]
    spec_shape = []
    for axis, (k, s, d, (before, after), n) in enumerate(zip(conv.kernel_size, conv.stride, conv.dilation,
                                                             pads, x.shape[2:])):
        pairs.append((f"axis {axis} shifts", kernel_shifts(k, d), spec.shifts(k, d)))
        pairs.append((f"axis {axis} anchor", kernel_anchor(k, d), spec.anchor(k, d)))
        pairs.append((f"axis {axis} query positions", list(layer.geometry.axes[axis].query_positions(n)),
                      spec.query_positions(n, k, s, before, after, d)))
        spec_shape.append(spec.output_length(n, k, s, before, after, d))
    pairs.append(("output shape (spec vs torch)", tuple(spec_shape), torch_shape))
    pairs.append(("head centres (spec.shifts, row-major)",
                  [tuple(int(c) for c in centre) for centre in layer.encoding.centre.detach().round().tolist()],
                  [s if isinstance(s, tuple) else (s,)
                   for s in spec.shifts(tuple(conv.kernel_size), tuple(conv.dilation))]))
    assert_all_within("conv-geometry", _mismatches(pairs), case.describe(),
                      case.reproduce("attn = conv_to_attention(conv); print(attn.geometry)"))


@pytest.mark.statement("conv-geometry")
@examples(1)
@given(case=strategies.conv_cases())
def test_spec_geometry_conv_equals_torch(case: ConvCase):
    conv, x = case.build()
    pads = strategies.resolved_padding(conv.padding, conv.kernel_size, conv.dilation)
    written = reference.conv(x, conv.weight, conv.bias, stride=conv.stride, padding=pads,
                             dilation=conv.dilation, groups=conv.groups, padding_mode=conv.padding_mode)
    with torch.no_grad():
        expected = conv(x)
    if written.shape != expected.shape:
        error = torch.tensor(float("inf"))
    else:
        error = (written - expected.double()).abs()
    bound = tolerances.conv_rounding(conv, x) + tolerances.conv_rounding(conv, x, torch.float64)
    assert_within("conv-geometry", error, bound, case.describe(),
                  case.reproduce("from verify import reference  # reference.conv(x, conv.weight, ...)"),
                  what="max|spec-geometry conv - torch conv|")


@pytest.mark.statement("conv-geometry")
@examples(1)
@given(case=strategies.layer_cases())
def test_layer_padding_equals_index_arithmetic(case: LayerCase):
    layer, x = case.build()
    expected = reference.pad(x, [(a.pad_before, a.pad_after) for a in layer.geometry.axes],
                             layer.geometry.padding_mode)
    actual = layer.geometry.pad(x)
    error = torch.tensor(float("inf")) if actual.shape != expected.shape else (actual - expected).abs()
    assert_within("conv-geometry", error, 0.0, case.describe(), case.reproduce("layer.geometry.pad(x)"),
                  what="max|geometry.pad - index-arithmetic padding|")
