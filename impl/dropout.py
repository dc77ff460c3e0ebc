"""Dropout with a cheap mask on CPU: `dropout` (functional) and `Dropout` (an `nn.Dropout`).

PyTorch's CPU dropout draws its mask with `bernoulli_`, one serial call at about 5 ns an element here
(float mask, then a division and a product): on the paper's model it drew (16, 9, 256, 256) attention masks
in a sixth of the training step, on one thread whatever the thread count (docs/RESULTS.md). This one draws
31 random bits an element (`random_` on int32, about 2 ns), keeps the element when they reach
round(p * 2^31), and applies the mask with one `where`; the backward keeps only the boolean mask. The
keep probability is 1 - round(p * 2^31) / 2^31, within 2^-32 of 1 - p, and kept values are scaled by
exactly 1 / (1 - p), as `nn.Dropout` does. Same generator (torch's default, or the one given), so
`torch.manual_seed` makes it reproducible and a checkpoint of the RNG state resumes it.

CUDA tensors take `torch.nn.functional.dropout` (a fused kernel there).

`shape`: an output larger than the input, the input broadcast to it with an independent mask per
element (attention probabilities shared by a batch, one mask per image) without materialising the
broadcast input; the gradient is summed back to the input's shape.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

_BITS = 31  # `random_` on int32 draws uniformly from [0, 2^31 - 1]


def _check_p(p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"p must be a float in [0, 1], got {p!r}")
    return float(p)


def keep_mask(shape: Sequence[int], p: float, device: torch.device | str = "cpu",
              generator: torch.Generator | None = None) -> torch.Tensor:
    """A bool tensor of `shape`, each element True with probability 1 - round(p * 2^31) / 2^31."""
    p = _check_p(p)
    bits = torch.empty(tuple(shape), dtype=torch.int32, device=device).random_(generator=generator)
    return bits >= round(p * (1 << _BITS))


def _broadcasts(shape: tuple, target: tuple) -> bool:
    return len(shape) <= len(target) and all(a in (1, b) for a, b in zip(reversed(shape), reversed(target)))


class _MaskedScale(torch.autograd.Function):
    """where(keep, x * scale, 0), x broadcast to keep's shape; backward where(keep, g, 0) * scale summed
    back to x's shape."""

    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        ctx.x_shape = x.shape
        return torch.where(keep, x * scale, 0)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0).sum_to_size(ctx.x_shape) * ctx.scale, None, None


def dropout(x: torch.Tensor, p: float, training: bool = True, *, shape: Sequence[int] | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero each element of x (broadcast to `shape` if given) with probability p and scale the others by
    1 / (1 - p); x itself (or its broadcast view) when not training or p == 0."""
    p = _check_p(p)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    out_shape = tuple(x.shape) if shape is None else tuple(shape)
    if shape is not None and not _broadcasts(tuple(x.shape), out_shape):
        raise ValueError(f"shape {out_shape} is not one that x {tuple(x.shape)} broadcasts to")
    if not training or p == 0:
        return x if shape is None else x.expand(out_shape)
    if p == 1:
        return x.expand(out_shape) * 0
    if x.device.type != "cpu" or not x.is_floating_point():
        return nn.functional.dropout(x.expand(out_shape), p, training=True)
    return _MaskedScale.apply(x, keep_mask(out_shape, p, x.device, generator), 1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """`nn.Dropout` (same arguments and repr) with `dropout`'s mask on CPU."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__(_check_p(p), inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)
