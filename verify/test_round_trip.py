"""lemma1 read backwards, and hard-limit on plain self-attention: attention_to_conv.

Lemma 1 maps heads one-to-one to the kernel's shifts with W_val^(h) W_out^(h) = W[Delta^(h)]; reading
the shifts and the merge blocks back must return the convolution itself. Numerically:
`attention_to_conv(conv_to_attention(conv, alpha))` (alpha = inf, or large enough to be within the
converter's tolerance of one-hot) has the conv's class, channels, kernel, stride, resolved padding
('valid' -> 0), dilation (on axes with kernel > 1), groups, padding mode and bias, and bit-identical
weights and bias.

hard-limit: "As alpha -> oo an isotropic head over a box of integer keys attends one-hot to the key
nearest its centre, i.e. Delta clamped into the box axis by axis." A hard-limit layer of plain
self-attention (no padding) therefore reads clamped keys, which is replicate padding: attention_to_conv
returns a replicate-padded conv equal to the layer.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from impl.convert import attention_to_conv, conv_padding, conv_to_attention
from verify import strategies
from verify.assertions import assert_all_within
from verify.cases import ConvCase, LayerCase
from verify.profiles import examples
from verify.tolerances import hard_limit_tolerance


def _differences(back, conv) -> list[tuple[str, float, float]]:
    kernel_gt_1 = [k > 1 for k in conv.kernel_size]
    expected_padding = (0,) * len(conv.kernel_size) if conv.padding == "valid" else conv.padding
    if conv.padding == "same":  # 'same', or its symmetric resolution
        padding_ok = back.padding == "same" or conv_padding(back) == conv_padding(conv)
    else:
        padding_ok = back.padding == expected_padding
    same_shape = back.weight.shape == conv.weight.shape
    facts = [
        ("class", type(back) is type(conv)),
        ("in/out channels", (back.in_channels, back.out_channels) == (conv.in_channels, conv.out_channels)),
        ("kernel_size", back.kernel_size == conv.kernel_size),
        ("stride", back.stride == conv.stride),
        ("padding", padding_ok),
        ("resolved padding", conv_padding(back) == conv_padding(conv)),
        ("dilation (kernel > 1)", [d for d, big in zip(back.dilation, kernel_gt_1) if big]
         == [d for d, big in zip(conv.dilation, kernel_gt_1) if big]),
        ("groups", back.groups == conv.groups),
        ("padding_mode", back.padding_mode == conv.padding_mode),
        ("dtype", back.weight.dtype == conv.weight.dtype),
        ("bias present", (back.bias is None) == (conv.bias is None)),
        ("weight bit-identical", same_shape and torch.equal(back.weight, conv.weight)),
        ("bias bit-identical", conv.bias is None or (back.bias is not None and torch.equal(back.bias, conv.bias))),
    ]
    return [(f"mismatch: {name}: {_show(back, conv, name)}" if not ok else name, float(not ok), 0.0)
            for name, ok in facts]


def _show(back, conv, name: str) -> str:
    return f"got {back!r}, expected {conv!r}"


@pytest.mark.statement("lemma1")
@examples(2)
@given(case=strategies.conv_cases(),
       alpha=st.one_of(st.just(math.inf), strategies.alphas(24.0, 64.0)))
def test_round_trip_returns_the_conv(case: ConvCase, alpha: float):
    conv = case.conv()
    back = attention_to_conv(conv_to_attention(conv, alpha))
    assert_all_within("lemma1", _differences(back, conv), case.describe() + f", alpha={alpha}",
                      case.reproduce(f"back = attention_to_conv(conv_to_attention(conv, {alpha!r})); print(back)"))


@pytest.mark.statement("hard-limit")
@examples(1)
@given(case=strategies.layer_cases(encoding=st.just("quadratic"), content=st.just(False), hard=st.just(True),
                                   identity=st.just(True), centres=st.sampled_from(("random", "integer"))))
def test_plain_hard_attention_is_replicate_conv(case: LayerCase):
    layer, x = case.build()
    conv = attention_to_conv(layer)
    with torch.no_grad():
        actual, expected = layer(x), conv(x)
    error = (actual - expected).abs() if actual.shape == expected.shape else torch.tensor(math.inf)
    modes = conv.padding_mode == "replicate" or not any(conv.padding)
    assert_all_within("hard-limit", [
        ("max|hard attention - attention_to_conv(attention)|", error, hard_limit_tolerance(conv, x)),
        ("padding_mode is replicate" if modes else f"mismatch: padding_mode {conv.padding_mode}", float(not modes), 0.0),
    ], case.describe(), case.reproduce("conv = attention_to_conv(layer); print((layer(x) - conv(x)).abs().max())"))
