"""Argument checks shared by the model constructors: each raises ValueError/TypeError naming the argument."""

from __future__ import annotations

import torch


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def probability(name: str, value) -> float:
    """A dropout rate: a float in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a float in [0, 1), got {value!r}")
    return float(value)


def image_size(value) -> tuple[int, int]:
    """An int (square) or a pair (H, W) of positive ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2 \
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise ValueError(f"image_size must be a positive int or a pair (H, W) of positive ints, got {value!r}")
    return int(value[0]), int(value[1])


def int_tuple(name: str, value, length: int) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) != length:
        raise ValueError(f"{name} must be a sequence of {length} positive ints, got {value!r}")
    return tuple(positive_int(name, v) for v in value)


def image_batch(x, in_channels: int) -> None:
    """A model's input: a floating-point tensor of shape (batch, in_channels, H, W)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a floating-point torch.Tensor of shape (batch, {in_channels}, H, W), "
                        f"got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor (float16, bfloat16, float32 or float64), got {x.dtype}; "
                        f"convert integer images first, e.g. x.float() / 255")
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(f"x must have shape (batch, {in_channels}, H, W), got {tuple(x.shape)}")
