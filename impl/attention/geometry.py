"""Which tokens are keys and which are queries: padding, stride lattice and margins per spatial axis.

A self-attention layer of a model attends from every token to every token. A layer converted from a
convolution first pads its input the way the convolution does (padded tokens are keys like any other),
then keeps only the queries the convolution has outputs for: the stride lattice, starting at the kernel's
anchor and stopping where the kernel's window would leave the padded image. `spec.geometry` derives
these rules; `verify/` checks this module against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


@dataclass(frozen=True)
class Axis:
    """One spatial axis: padding before/after, query stride, and the margins where no query sits."""

    pad_before: int = 0
    pad_after: int = 0
    stride: int = 1
    margin_before: int = 0
    margin_after: int = 0

    def __post_init__(self) -> None:
        for name in ("pad_before", "pad_after", "margin_before", "margin_after"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if not isinstance(self.stride, int) or isinstance(self.stride, bool) or self.stride < 1:
            raise ValueError(f"stride must be a positive int, got {self.stride!r}")

    def padded_length(self, length: int) -> int:
        return length + self.pad_before + self.pad_after

    def query_count(self, length: int) -> int:
        """Number of queries on this axis for an input of `length` tokens (may be <= 0: too small)."""
        span = self.padded_length(length) - self.margin_before - self.margin_after
        return (span - 1) // self.stride + 1 if span >= 1 else 0

    def query_positions(self, length: int) -> range:
        """Query coordinates in the padded image."""
        return range(self.margin_before, self.margin_before + self.query_count(length) * self.stride, self.stride)


@dataclass(frozen=True)
class Geometry:
    """Per-axis `Axis` records plus the padding mode; the identity geometry is plain self-attention."""

    axes: tuple[Axis, ...]
    padding_mode: str = "zeros"

    def __post_init__(self) -> None:
        if not isinstance(self.axes, tuple) or not self.axes or not all(isinstance(a, Axis) for a in self.axes):
            raise TypeError(f"axes must be a non-empty tuple of Axis records, got {self.axes!r}")
        if not isinstance(self.padding_mode, str) or self.padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {self.padding_mode!r}")

    @classmethod
    def identity(cls, spatial_dims: int) -> "Geometry":
        if isinstance(spatial_dims, bool) or not isinstance(spatial_dims, int) or spatial_dims < 1:
            raise ValueError(f"spatial_dims must be a positive int, got {spatial_dims!r}")
        return cls(tuple(Axis() for _ in range(spatial_dims)))

    @property
    def spatial_dims(self) -> int:
        return len(self.axes)

    @property
    def is_identity(self) -> bool:
        return all(axis == Axis() for axis in self.axes)

    def output_shape(self, spatial_shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(axis.query_count(length) for axis, length in zip(self.axes, spatial_shape))

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Pad the trailing spatial dimensions of `x` as the convolution does (tokens are added, not masked)."""
        # F.pad lists (before, after) pairs starting from the last dimension.
        pairs = [p for axis in reversed(self.axes) for p in (axis.pad_before, axis.pad_after)]
        if not any(pairs):
            return x
        if self.padding_mode == "zeros":
            return F.pad(x, pairs)
        return F.pad(x, pairs, mode=self.padding_mode)

    def describe(self) -> str:
        parts = []
        pads = [(a.pad_before, a.pad_after) for a in self.axes]
        if any(p != (0, 0) for p in pads):
            parts.append(f"padding={pads}, padding_mode={self.padding_mode}")
        if any(a.stride != 1 for a in self.axes):
            parts.append(f"stride={tuple(a.stride for a in self.axes)}")
        margins = [(a.margin_before, a.margin_after) for a in self.axes]
        if any(m != (0, 0) for m in margins):
            parts.append(f"query_margins={margins}")
        return ", ".join(parts)
