"""Every hypothesis generator of verify/, in one module (as array-api-tests' hypothesis_helpers.py).

The generators cover the whole constructor space of nn.Conv1d/2d/3d (odd, even and non-square
kernels, stride, int/tuple/'same'/'valid' padding, the four padding modes, dilation, groups, bias)
and of `RelativeSelfAttention` (three encodings, content on/off, hard limit, 1-3 spatial dims, any
padding/stride/margin geometry). Inputs are constructed valid: the padded input holds the dilated
kernel, reflect padding stays below the size and circular padding at most the size.

Sizes are capped so that the dense reference (every query against every key, per head) stays cheap;
each cap is an environment variable (VERIFY_MAX_*) so a thorough run can widen it.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import strategies as st

from verify.cases import ConvCase, ConvertedCase, LayerCase

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
ENCODINGS = ("quadratic", "generalized", "learned")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]
"""A `device` parametrization: the CPU always, CUDA where there is one (reported as skipped elsewhere)."""


def _cap(name: str, default: int) -> int:
    """The environment variable `name` as a positive int (default when unset)."""
    text = os.environ.get(name, str(default))
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"{name} must be a positive int, got {text!r}")
    return int(text)


MAX_KERNEL = _cap("VERIFY_MAX_KERNEL", 4)
"""Kernel size per axis: 4 covers odd and even kernels with an off-centre anchor."""
MAX_KERNEL_3D = _cap("VERIFY_MAX_KERNEL_3D", 3)
"""Conv3d kernels: 27 heads already; larger ones only slow the dense reference down."""
MAX_STRIDE = _cap("VERIFY_MAX_STRIDE", 3)
"""Stride per axis: 3 makes the query lattice skip more than one key."""
MAX_DILATION = _cap("VERIFY_MAX_DILATION", 3)
"""Dilation per axis: 3 spreads a kernel of 4 over 10 pixels."""
MAX_PADDING = _cap("VERIFY_MAX_PADDING", 2)
"""Explicit padding per side (int or tuple padding): 2 puts queries two pixels outside the image."""
MAX_CHANNELS = _cap("VERIFY_MAX_CHANNELS", 6)
"""in/out channels: 6 allows groups of 2 and 3 with more than one channel per group."""
MAX_SIDE = _cap("VERIFY_MAX_SIDE", 9)
"""Input side (2D): 9x9 leaves interior queries under a 4x4 kernel; the reference is O(side^4)."""
MAX_SIDE_1D = _cap("VERIFY_MAX_SIDE_1D", 20)
"""Input length (1D)."""
MAX_SIDE_3D = _cap("VERIFY_MAX_SIDE_3D", 5)
"""Input side (3D): 5^3 = 125 tokens."""
MAX_BATCH = _cap("VERIFY_MAX_BATCH", 3)
"""Batch size: 3 checks that nothing mixes images (shared positional attention, per-image content)."""
MAX_CHANNELS_3D = _cap("VERIFY_MAX_CHANNELS_3D", 4)
"""in/out channels of Conv3d: up to 27 heads x 4 channels is already a wide merge."""
MAX_DILATION_3D = _cap("VERIFY_MAX_DILATION_3D", 2)
"""Dilation of Conv3d: 2 spreads a 3x3x3 kernel over 5x5x5, the whole capped input."""
MAX_HEADS = _cap("VERIFY_MAX_HEADS", 9)
"""Heads of a random layer: the paper's 9."""
LAYER_SIDE = {1: _cap("VERIFY_MAX_LAYER_SIDE_1D", 12), 2: _cap("VERIFY_MAX_LAYER_SIDE", 6),
              3: _cap("VERIFY_MAX_LAYER_SIDE_3D", 3)}
"""Input side of random layers (before padding): their geometry adds up to 4 padded tokens per axis,
and the reference scores every (query, key) pair of every head: (6 + 4)^4 pairs in 2D."""


def side_cap(dims: int) -> int:
    return {1: MAX_SIDE_1D, 2: MAX_SIDE, 3: MAX_SIDE_3D}[dims]


def kernel_cap(dims: int) -> int:
    return MAX_KERNEL_3D if dims == 3 else MAX_KERNEL


# -- small pieces ------------------------------------------------------------------------------------
def dtypes() -> st.SearchStrategy[str]:
    return st.sampled_from(("float32", "float64"))


def seeds() -> st.SearchStrategy[int]:
    return st.integers(0, 2**31 - 2)


def scales() -> st.SearchStrategy[float]:
    """Std of a conv's weights and input: 1 mostly, and 2^-10 or 2^10 to show that every tolerance scales
    with the data (bounds are relative to sums of |terms|, never absolute)."""
    return st.sampled_from((1.0, 2.0 ** -10, 2.0 ** 10))


def batches() -> st.SearchStrategy[int]:
    return st.integers(1, MAX_BATCH)


def alphas(low: float = 0.25, high: float = 64.0) -> st.SearchStrategy[float]:
    """Finite alpha, log-uniform in [low, high]."""
    return st.floats(math.log2(low), math.log2(high)).map(lambda e: float(2.0 ** e))


def per_axis(dims: int, values: st.SearchStrategy[int]) -> st.SearchStrategy:
    """An int (every axis the same) or a tuple of `dims` ints, as torch's conv arguments accept."""
    return st.one_of(values, st.tuples(*[values] * dims))


@st.composite
def kwargs(draw, **strategies) -> dict:
    """A dict holding a value from each strategy, with any keyword possibly left out (one time in
    four), so that the callee's defaults get tested too (array-api-tests' `kwargs`)."""
    return {name: draw(strategy) for name, strategy in strategies.items() if draw(st.integers(0, 3)) > 0}


def paddings(dims: int) -> st.SearchStrategy:
    """A conv's `padding`: an int, a tuple of ints, 'same' or 'valid', each kind equally likely."""
    values = st.integers(0, MAX_PADDING)
    kinds = {"int": values, "tuple": st.tuples(*[values] * dims), "same": st.just("same"),
             "valid": st.just("valid")}
    return st.sampled_from(tuple(kinds)).flatmap(kinds.__getitem__)


def _axes(value, dims: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, tuple) else (value,) * dims


# -- convolutions ------------------------------------------------------------------------------------
@st.composite
def channels(draw, max_channels: int = MAX_CHANNELS) -> tuple[int, int, int]:
    """(in_channels, out_channels, groups) with groups dividing both."""
    groups = draw(st.sampled_from([g for g in (1, 2, 3) if g <= max_channels]))
    in_channels = groups * draw(st.integers(1, max_channels // groups))
    out_channels = groups * draw(st.integers(1, max_channels // groups))
    return in_channels, out_channels, groups


def resolved_padding(padding, kernel: tuple[int, ...], dilation: tuple[int, ...]) -> list[tuple[int, int]]:
    """(before, after) per axis as torch pads: 'same' puts the odd pixel after, 'valid' is 0."""
    if padding == "valid":
        return [(0, 0)] * len(kernel)
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return [(t // 2, t - t // 2) for t in totals]
    return [(p, p) for p in _axes(padding, len(kernel))]


def min_length(kernel: int, dilation: int, before: int, after: int, mode: str) -> int:
    """The smallest input length a conv accepts: the padded input must hold the dilated kernel,
    reflect padding must be < length and circular padding <= length."""
    length = max(1, dilation * (kernel - 1) + 1 - before - after)
    if mode == "reflect" and max(before, after) > 0:
        length = max(length, max(before, after) + 1)
    if mode == "circular":
        length = max(length, before, after)
    return length


@st.composite
def conv_cases(draw, dims=st.sampled_from((1, 2, 3)), dtype=dtypes(), kernel=None,
               scale=scales()) -> ConvCase:
    """A convolution anywhere in torch's constructor space plus a valid input for it.

    Args:
        dims: strategy for 1, 2 or 3 spatial dims.
        dtype: strategy for "float32"/"float64".
        kernel: optional strategy for the kernel size (int or tuple); default any per-axis size up
            to `kernel_cap(dims)`.
        scale: strategy for the std of weights and inputs.
    """
    dims = draw(dims)
    kernel_value = draw(kernel if kernel is not None else per_axis(dims, st.integers(1, kernel_cap(dims))))
    in_channels, out_channels, groups = draw(channels(MAX_CHANNELS_3D if dims == 3 else MAX_CHANNELS))
    options = {"kernel_size": kernel_value}
    options.update(draw(kwargs(
        stride=per_axis(dims, st.integers(1, MAX_STRIDE)),
        padding=paddings(dims),
        dilation=per_axis(dims, st.integers(1, MAX_DILATION_3D if dims == 3 else MAX_DILATION)),
        groups=st.just(groups),
        bias=st.booleans(),
        padding_mode=st.sampled_from(PADDING_MODES),
    )))
    if options.get("padding") == "same":  # torch: padding='same' needs stride 1
        options.pop("stride", None)
    if groups != 1 and "groups" not in options:  # channels were drawn for these groups
        options["groups"] = groups
    kernel_size = _axes(kernel_value, dims)
    dilation = _axes(options.get("dilation", 1), dims)
    pads = resolved_padding(options.get("padding", 0), kernel_size, dilation)
    mode = options.get("padding_mode", "zeros")
    size = []
    for k, d, (before, after) in zip(kernel_size, dilation, pads):
        low = min_length(k, d, before, after, mode)
        size.append(draw(st.integers(low, max(low, side_cap(dims)))))
    return ConvCase(dims, in_channels, out_channels, tuple(options.items()), tuple(size),
                    batch=draw(batches()), dtype=draw(dtype), seed=draw(seeds()), scale=draw(scale))


@st.composite
def converted_cases(draw, alpha=None) -> ConvertedCase:
    """A 2-D convolution with at least two taps converted at finite alpha (`ConvertedCase`)."""
    kernel = per_axis(2, st.integers(1, kernel_cap(2))).filter(
        lambda k: (k * k if isinstance(k, int) else k[0] * k[1]) > 1)
    conv = draw(conv_cases(dims=st.just(2), dtype=st.just("float64"), kernel=kernel))
    return ConvertedCase(conv, draw(alpha if alpha is not None else alphas(0.25, 16.0)))


# -- attention layers -------------------------------------------------------------------------------
@st.composite
def geometries(draw, dims: int, identity: bool = False):
    """(axes, padding_mode, size): per axis (pad_before, pad_after, stride, margin_before,
    margin_after) and an input size that leaves at least one query."""
    if identity:
        axes = [(0, 0, 1, 0, 0)] * dims
        mode = "zeros"
    else:
        axes = [tuple(draw(st.integers(0, MAX_PADDING)) for _ in range(2)) + (draw(st.integers(1, MAX_STRIDE)),)
                + tuple(draw(st.integers(0, 2)) for _ in range(2)) for _ in range(dims)]
        mode = draw(st.sampled_from(PADDING_MODES))
    cap = LAYER_SIDE[dims]
    size = []
    for before, after, _, margin_before, margin_after in axes:
        low = max(1, margin_before + margin_after + 1 - before - after)
        if mode == "reflect" and max(before, after) > 0:
            low = max(low, max(before, after) + 1)
        if mode == "circular":
            low = max(low, before, after)
        size.append(draw(st.integers(low, max(low, cap))))
    return tuple(axes), mode, tuple(size)


@st.composite
def layer_cases(draw, encoding=st.sampled_from(ENCODINGS + (None,)), content=st.booleans(),
                dims=st.sampled_from((1, 2, 3)), hard=st.booleans(), identity=st.booleans(),
                dtype=dtypes(), centres=None) -> LayerCase:
    """A random `RelativeSelfAttention` (any encoding, with or without content, hard-limit quadratic
    heads included) on a random geometry, and an input for it.

    `centres`: strategy for "random", "integer" or "tie" (see `LayerCase`); by default hard-limit
    layers draw any of the three and the others "random"."""
    encoding, dims = draw(encoding), draw(dims)
    content = draw(content) or encoding is None
    hard = encoding == "quadratic" and not content and draw(hard)
    axes, mode, size = draw(geometries(dims, identity=draw(identity)))
    dim = draw(st.integers(1, 4))
    heads = draw(st.integers(1, MAX_HEADS if dims < 3 else 4))
    options = {"heads": heads} if heads != 9 or draw(st.booleans()) else {}
    options.update(draw(kwargs(out_dim=st.integers(1, 4), bias=st.booleans())))
    if dims != 2 or draw(st.booleans()):
        options["spatial_dims"] = dims
    if encoding != "quadratic" or draw(st.booleans()):
        options["encoding"] = encoding
    if content:
        options["content"] = True
        options.update(draw(kwargs(content_dim=st.integers(1, 4))))
    if hard:
        options["alpha"] = math.inf
    if encoding == "learned":
        padded = [n + b + a for n, (b, a, *_) in zip(size, axes)]
        options["grid_size"] = tuple(p + draw(st.integers(0, 2)) for p in padded)
        options.update(draw(kwargs(embed_dim=st.integers(1, 4))))
    if centres is None:
        centres = st.sampled_from(("random", "integer", "tie")) if hard else st.just("random")
    centres = draw(centres)
    return LayerCase(dims, dim, tuple(options.items()), axes, mode, size, batch=draw(batches()),
                     dtype=draw(dtype), seed=draw(seeds()), centres=centres)
