"""The converter at the edges of its API: the convolutions it refuses rather than converting wrongly, the
widths and centres it keeps exact in every dtype, and the memory layout of the converted layer's output
(that of `nn.Conv*`, so that code viewing the conv's output keeps working).

The equivalences themselves (every hyperparameter, both alphas) are verify/'s; these are the cases a
review found converting silently wrong or failing deep inside torch before they were guarded.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from impl.attention import RelativeSelfAttention
from impl.convert import attention_to_conv, conv_to_attention, convert_model


class StandardizedConv2d(nn.Conv2d):
    """Weight standardisation in the forward (BiT / timm's StdConv2d): not what its weight computes."""

    def forward(self, x):
        w = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
        return self._conv_forward(x, w, self.bias)


class Doubled(nn.Module):
    def forward(self, w):
        return 2 * w


def test_a_conv_subclass_with_its_own_forward_is_refused():
    with pytest.raises(TypeError, match="StandardizedConv2d overrides forward"):
        conv_to_attention(StandardizedConv2d(3, 4, 3))
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Sequential(StandardizedConv2d(3, 4, 3)))
    with pytest.raises(TypeError, match=r"model\.1\.0: conv must compute"):
        convert_model(model, verbose=False)


def test_a_parametrized_conv_converts_its_parametrized_weight():
    conv = nn.Conv2d(3, 4, 3).double()
    parametrize.register_parametrization(conv, "weight", Doubled())
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(conv_to_attention(conv)(x), conv(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_alpha_beyond_the_squared_range_stays_finite(dtype):
    # width = sqrt(2 * 3.3e4) = 257: its square overflows float16 (max 65504); alpha is taken in float32
    conv = nn.Conv2d(3, 4, 3, padding=1).to(dtype)
    layer = conv_to_attention(conv, 3.3e4)
    assert bool(torch.isfinite(layer.encoding.alpha).all())
    out = layer(torch.randn(2, 3, 8, 8).to(dtype))
    assert bool(torch.isfinite(out).all())  # NaN before: -inf * 0 at each head's centre


@pytest.mark.parametrize("dtype, alpha", [(torch.float16, 3e9), (torch.float32, 1e39)])
def test_an_alpha_the_dtype_cannot_hold_is_refused_naming_alpha(dtype, alpha):
    with pytest.raises(ValueError, match=r"alpha.*math\.inf"):
        conv_to_attention(nn.Conv2d(3, 4, 3).to(dtype), alpha)


def test_float64_widths_are_set_in_float64():
    layer = conv_to_attention(nn.Conv2d(3, 4, 3).double(), 0.1)
    assert layer.encoding.width.dtype == torch.float64
    assert layer.encoding.width[0].item() == math.sqrt(0.2)  # not rounded through float32
    big = conv_to_attention(nn.Conv2d(3, 4, 3).double(), 1e80)   # beyond float32, within float64
    assert big.encoding.alpha[0].item() == pytest.approx(1e80, rel=1e-12)


def test_a_shift_the_dtype_cannot_hold_is_refused():
    # bfloat16 holds integers exactly up to 256: a tap at offset 257 would move to 256 (a wrong key)
    conv = nn.Conv1d(2, 2, 3, dilation=257, padding="same").bfloat16()
    with pytest.raises(ValueError, match="offset 257.*bfloat16"):
        conv_to_attention(conv)
    conv_to_attention(nn.Conv1d(2, 2, 3, dilation=128, padding="same").bfloat16())  # 128 is exact


def test_numpy_scalars_are_alphas():
    assert conv_to_attention(nn.Conv2d(3, 4, 3), np.float32(8.0)).encoding.alpha[0].item() == pytest.approx(8.0)


@pytest.mark.parametrize("alpha", [math.inf, 8.0])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_output_is_laid_out_as_the_convs(alpha, dims):
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1](3, 4, 3)
    layer = conv_to_attention(conv, alpha)
    x = torch.randn(2, 3, *[6] * dims)
    out = layer(x)
    assert out.is_contiguous()
    out.view(2, -1)  # what a model flattening its conv's output does
    if dims > 1:
        layout = (torch.channels_last, torch.channels_last_3d)[dims - 2]
        x_cl = x.contiguous(memory_format=layout)
        assert conv(x_cl).is_contiguous(memory_format=layout)
        assert layer(x_cl).is_contiguous(memory_format=layout)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_output_is_contiguous(dtype):
    layer = conv_to_attention(nn.Conv2d(3, 4, 3).to(dtype), 8.0)
    assert layer(torch.randn(2, 3, 6, 6).to(dtype)).is_contiguous()


def test_a_hard_head_midway_between_two_keys_is_no_conv():
    layer = RelativeSelfAttention(2, heads=1, out_dim=2, spatial_dims=1, alpha=math.inf).double()
    with torch.no_grad():
        layer.encoding.centre.fill_(0.5)
    with pytest.raises(ValueError, match="head 0's centre .* midway between two keys"):
        attention_to_conv(layer)
    with torch.no_grad():
        layer.encoding.centre.fill_(0.4)  # nearest key 0: a 1x1 conv, exactly
    x = torch.randn(2, 2, 5, dtype=torch.float64)
    torch.testing.assert_close(attention_to_conv(layer)(x), layer(x))


def test_an_empty_grid_is_refused_naming_x():
    layer = conv_to_attention(nn.Conv2d(3, 4, 3, padding=2), 2.0)
    with pytest.raises(ValueError, match="x must have a non-empty grid"):
        layer(torch.randn(1, 3, 0, 5))


def test_requires_grad_is_carried_per_parameter():
    conv = nn.Conv2d(3, 4, 3)
    conv.bias.requires_grad_(False)
    layer = conv_to_attention(conv)
    assert layer.merge.weight.requires_grad and not layer.merge.bias.requires_grad


def test_hooks_on_converted_convolutions_are_reported():
    conv = nn.Conv2d(3, 4, 3)
    conv.register_forward_hook(lambda module, args, out: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert_model(nn.Sequential(conv), verbose=False)
    assert any("model.0 has forward hooks" in str(w.message) for w in caught)
