"""Hard-limit heads (alpha = inf): each head reads exactly one key per query, so attention is a shift.

`pure_shifts` tells whether every head reads key q + s_h for every query q; then `shifts_as_conv` runs the
heads and the merge as one convolution with W_h at tap s_h. Otherwise (the border clamps the shift)
`shifts_merge` gathers every head's key into channels-last tokens and projects them once. Never a dense
one-hot matmul.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .gemm import project


def pure_shifts(axis_indices: Sequence[torch.Tensor], query_positions: Sequence[Sequence[int]]) -> list[list[int]] | None:
    """Per axis, the key - query shift of every head when each head reads key q + shift for every query q
    (no clamping at the border); None otherwise."""
    shifts = []
    for idx, positions in zip(axis_indices, query_positions):
        pos = torch.as_tensor(list(positions), device=idx.device)
        delta = idx - pos[None, :]
        if not bool((delta == delta[:, :1]).all()):
            return None
        shifts.append(delta[:, 0].tolist())
    return shifts


def shifts_as_conv(x: torch.Tensor, shifts: Sequence[Sequence[int]], margins_before: Sequence[int],
                   strides: Sequence[int], query_shape: Sequence[int], weight: torch.Tensor,
                   bias: torch.Tensor | None, max_taps: int,
                   zero_pads: Sequence[tuple[int, int]] | None = None) -> torch.Tensor | None:
    """Hard heads that read key q + s_h for every query q: out = sum_h W_h x[q + s_h] is a convolution
    over the box of shifts (dilated by their common step), with W_h at tap s_h.

    x is the padded input (B, C, *K), or with `zero_pads` the unpadded one, to be zero-padded by
    (before, after) per axis (then the convolution pads, and only as far as its window reaches). Returns
    None when the box has more than `max_taps` taps (then the gather is cheaper)."""
    n = len(shifts)
    heads = len(shifts[0])
    channels = x.shape[1]
    low = [min(s) for s in shifts]
    step = [math.gcd(*[v - lo for v in s]) or 1 for s, lo in zip(shifts, low)]
    kernel = [(max(s) - lo) // d + 1 for s, lo, d in zip(shifts, low, step)]
    if math.prod(kernel) > max_taps:
        return None
    taps = torch.zeros(heads, dtype=torch.long)
    for axis in range(n):
        taps = taps * kernel[axis] + torch.tensor([(v - low[axis]) // step[axis] for v in shifts[axis]])
    blocks = weight.view(weight.shape[0], heads, channels).transpose(1, 2)            # (O, C, H)
    kernel_w = blocks.new_zeros(weight.shape[0], channels, math.prod(kernel))
    kernel_w = kernel_w.index_add(2, taps.to(weight.device), blocks).view(weight.shape[0], channels, *kernel)
    window, pads = [], []
    for axis in range(n):
        begin = margins_before[axis] + low[axis]             # padded coordinates
        length = (query_shape[axis] - 1) * strides[axis] + step[axis] * (kernel[axis] - 1) + 1
        if zero_pads is None:
            window.append(slice(begin, begin + length))
            pads.append((0, 0))
        else:                                                # unpadded coordinates, zeros outside
            size = x.shape[2 + axis]
            start, stop = begin - zero_pads[axis][0], begin - zero_pads[axis][0] + length
            window.append(slice(max(start, 0), min(stop, size)))
            pads.append((max(0, -start), max(0, stop - size)))
    xs = x[(slice(None), slice(None), *window)]
    if all(b == a for b, a in pads):
        padding = tuple(b for b, _ in pads)
    else:
        xs = F.pad(xs, [p for pair in reversed(pads) for p in pair])
        padding = 0
    conv = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    return conv(xs, kernel_w.to(x.dtype), None if bias is None else bias.to(x.dtype),
                stride=tuple(strides), padding=padding, dilation=tuple(step))


def shifts_merge(x: torch.Tensor, axis_indices: Sequence[torch.Tensor], weight: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    """Any hard heads: gather every head's key into channels-last (B, *Q, H, C), then one projection."""
    n = len(axis_indices)
    heads = axis_indices[0].shape[0]
    x_cl = x.movedim(1, -1)                                                  # (B, *K, C)
    index = []
    for axis, idx in enumerate(axis_indices):
        shape = [1] * n + [heads]
        shape[axis] = idx.shape[1]
        index.append(idx.t().reshape(shape))
    gathered = x_cl[(slice(None), *index)]                                   # (B, *Q, H, C)
    tokens = gathered.reshape(*gathered.shape[:-2], -1)
    out = project(tokens, weight.to(x.dtype))
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out.movedim(-1, 1)
