"""Bad input at the converter's and the layer's boundaries: TypeError/ValueError naming the argument.

Not a statement: the house rule that public entry points reject what they cannot handle before
computing anything, with a message that names the argument (and the allowed values).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from impl.attention import RelativeSelfAttention
from impl.convert import attention_to_conv, conv_to_attention


@pytest.mark.parametrize("module, error, match", [
    (nn.Linear(2, 2), TypeError, r"conv must be nn\.Conv1d, nn\.Conv2d or nn\.Conv3d, got Linear"),
    (nn.ConvTranspose2d(2, 2, 3), TypeError, r"conv must be .*transposed"),
    (nn.ConvTranspose1d(2, 2, 3), TypeError, r"conv must be .*transposed"),
    (nn.LazyConv2d(2, 3), ValueError, r"conv is a lazy convolution"),
    ("conv", TypeError, r"conv must be"),
    (None, TypeError, r"conv must be"),
])
def test_conv_to_attention_rejects_non_convolutions(module, error, match):
    with pytest.raises(error, match=match):
        conv_to_attention(module)


@pytest.mark.parametrize("alpha, error", [
    (0, ValueError), (0.0, ValueError), (-1, ValueError), (-math.inf, ValueError), (math.nan, ValueError),
    ("x", TypeError), (True, TypeError), (None, TypeError), (torch.tensor(2.0), TypeError),
])
def test_conv_to_attention_rejects_bad_alpha(alpha, error):
    with pytest.raises(error, match=r"alpha must be a positive float or math\.inf"):
        conv_to_attention(nn.Conv2d(2, 2, 3), alpha)


def test_attention_to_conv_rejects_non_layers():
    with pytest.raises(TypeError, match=r"attn must be a RelativeSelfAttention, got Conv2d"):
        attention_to_conv(nn.Conv2d(2, 2, 3))


@pytest.mark.parametrize("options", [dict(encoding="generalized"), dict(encoding="learned", grid_size=5),
                                     dict(content=True)])
def test_attention_to_conv_rejects_non_quadratic_layers(options):
    with pytest.raises(ValueError, match=r"attn must have quadratic heads and no content scores"):
        attention_to_conv(RelativeSelfAttention(2, heads=4, **options))


@pytest.mark.parametrize("alpha", [0.25, 1.0, 4.0])
def test_attention_to_conv_names_the_head_that_is_not_one_hot(alpha):
    layer = conv_to_attention(nn.Conv2d(2, 2, 3), alpha)
    with pytest.raises(ValueError, match=r"head 0 is .* from one-hot .* more than tol=1e-06"):
        attention_to_conv(layer)


@pytest.mark.parametrize("tol", [-0.1, 1.0, 2, "x", True])
def test_attention_to_conv_rejects_bad_tol(tol):
    with pytest.raises(ValueError, match=r"tol must be a float in \[0, 1\)"):
        attention_to_conv(conv_to_attention(nn.Conv2d(2, 2, 3)), tol=tol)


CONVERTED = [
    (nn.Conv1d(3, 2, 3), (1, 3, 8)),
    (nn.Conv2d(3, 2, 3), (1, 3, 8, 8)),
    (nn.Conv3d(3, 2, 3), (1, 3, 5, 5, 5)),
]


@pytest.mark.parametrize("conv, shape", CONVERTED)
def test_layer_rejects_wrong_rank(conv, shape):
    layer = conv_to_attention(conv)
    for bad in (shape[1:], shape + (4,)):
        with pytest.raises(ValueError, match=rf"x must have shape \(batch, 3, \*{len(shape) - 2}-d grid\)"):
            layer(torch.zeros(bad))


@pytest.mark.parametrize("conv, shape", CONVERTED)
def test_layer_rejects_wrong_channel_count(conv, shape):
    layer = conv_to_attention(conv)
    with pytest.raises(ValueError, match=r"x must have 3 channels \(dim 1\)"):
        layer(torch.zeros(shape[0], 4, *shape[2:]))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_layer_rejects_non_float_input(dtype):
    layer = conv_to_attention(nn.Conv2d(3, 2, 3))
    with pytest.raises(TypeError, match=r"x must be a floating-point tensor"):
        layer(torch.zeros(1, 3, 8, 8, dtype=dtype))


@pytest.mark.parametrize("value", [[[0.0]], 3.0, None])
def test_layer_rejects_non_tensors(value):
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        conv_to_attention(nn.Conv2d(3, 2, 3))(value)


@pytest.mark.parametrize("conv, shape, match", [
    (nn.Conv2d(1, 1, 3), (1, 1, 2, 2), r"x of spatial shape \(2, 2\) is too small"),
    (nn.Conv2d(1, 1, 3, dilation=2, padding=1), (1, 1, 2, 2), r"x of spatial shape \(2, 2\) is too small"),
    (nn.Conv1d(1, 1, 5, padding=2, padding_mode="reflect"), (1, 1, 2), r"too small for reflect padding"),
    (nn.Conv1d(1, 1, 5, padding=2, padding_mode="circular"), (1, 1, 1), r"too small for circular padding"),
    (nn.Conv3d(1, 1, 2, stride=2), (1, 1, 1, 4, 4), r"x of spatial shape \(1, 4, 4\) is too small"),
])
def test_layer_rejects_too_small_inputs(conv, shape, match):
    with pytest.raises(ValueError, match=match):
        conv_to_attention(conv)(torch.zeros(shape))


@pytest.mark.parametrize("options, match", [
    (dict(dim=0), r"dim must be a positive int"),
    (dict(dim=2, heads=0), r"heads must be a positive int"),
    (dict(dim=2, encoding="cubic"), r"encoding must be one of"),
    (dict(dim=2, encoding=None), r"encoding=None needs content=True"),
    (dict(dim=2, spatial_dims=4), r"spatial_dims must be 1, 2 or 3"),
    (dict(dim=2, encoding="generalized", alpha=1.0), r"alpha applies to encoding='quadratic' only"),
    (dict(dim=2, alpha=math.inf, content=True), r"content=True cannot be combined with alpha=math\.inf"),
    (dict(dim=2, encoding="learned"), r"encoding='learned' needs grid_size"),
    (dict(dim=2, attn_dropout=1.0), r"attn_dropout must be a float in \[0, 1\)"),
    (dict(dim=2, alpha=-1.0), r"alpha must be a positive float"),
])
def test_layer_constructor_rejects_bad_arguments(options, match):
    dim = options.pop("dim")
    with pytest.raises(ValueError, match=match):
        RelativeSelfAttention(dim, **options)
