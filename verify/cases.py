"""Plain records of one generated example that rebuild its module and input exactly.

Hypothesis draws a `ConvCase` or a `LayerCase` (see `verify.strategies`); `.build()` turns it into
modules and an input with every value drawn from a `torch.Generator` seeded by the record, so a
failure message can print the record itself as the reproduction: paste it, call `.build()`, get the
same tensors bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from impl.attention import Axis, Geometry, RelativeSelfAttention
from impl.convert import conv_to_attention

CONV_TYPES = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _normal(shape, generator: torch.Generator, std: float = 1.0) -> torch.Tensor:
    """N(0, std^2) in float64 (cast later), so float32 and float64 examples share their values."""
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float64) * std


def _call(name: str, args: tuple, kwargs: dict) -> str:
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


class _KeywordCase:
    """What ConvCase and LayerCase share: constructor keywords kept as (name, value) pairs (hashable, so
    that hypothesis can shrink and report them) and a dtype name."""

    @property
    def options(self) -> dict:
        return dict(self.kwargs)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclass(frozen=True)
class ConvCase(_KeywordCase):
    """A torch convolution and its input.

    Attributes:
        dims: 1, 2 or 3 (nn.Conv1d, nn.Conv2d, nn.Conv3d).
        in_channels, out_channels: the conv's channel counts.
        kwargs: the keyword arguments given to the conv's constructor, as (name, value) pairs; a
            keyword that is absent takes torch's default (that is tested too).
        size: the input's spatial shape.
        batch: the input's batch size.
        dtype: "float32" or "float64" (weights and input).
        seed: seeds the generator that draws weights, bias and input (N(0, scale^2)).
        scale: standard deviation of every drawn value.
    """

    dims: int
    in_channels: int
    out_channels: int
    kwargs: tuple[tuple[str, object], ...]
    size: tuple[int, ...]
    batch: int = 1
    dtype: str = "float64"
    seed: int = 0
    scale: float = 1.0

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.batch, self.in_channels, *self.size)

    def conv(self) -> nn.modules.conv._ConvNd:
        """The convolution with weights and bias drawn from the case's seed."""
        conv = CONV_TYPES[self.dims](self.in_channels, self.out_channels, **self.options)
        generator = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            conv.weight.copy_(_normal(conv.weight.shape, generator, self.scale))
            if conv.bias is not None:
                conv.bias.copy_(_normal(conv.bias.shape, generator, self.scale))
        return conv.to(self.torch_dtype)

    def input(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + 1)
        return _normal(self.input_shape, generator, self.scale).to(self.torch_dtype)

    def build(self) -> tuple[nn.modules.conv._ConvNd, torch.Tensor]:
        return self.conv(), self.input()

    def describe(self) -> str:
        """One line: `Conv2d(4, 6, kernel_size=(2, 3), stride=2) on (1, 4, 7, 9) float64`."""
        name = CONV_TYPES[self.dims].__name__
        return f"{_call(name, (self.in_channels, self.out_channels), self.options)} on {self.input_shape} {self.dtype}"

    def reproduce(self, check: str) -> str:
        """Lines to paste into a Python prompt: rebuild the conv and the input, then run `check`."""
        return "\n".join([
            "import math, torch",
            "from impl.convert import conv_to_attention, attention_to_conv",
            "from verify.cases import ConvCase",
            f"case = {self!r}",
            f"conv, x = case.build()  # torch.nn.{self.describe()}",
            check,
        ])


@dataclass(frozen=True)
class ConvertedCase:
    """A convolution converted at finite alpha (`conv_to_attention`): its heads share their per-axis
    matrices (one row matrix per kernel row, one column matrix per kernel column), `ProductMerge`'s case."""

    conv: ConvCase
    alpha: float

    @property
    def seed(self) -> int:
        return self.conv.seed

    def build(self):
        conv, x = self.conv.build()
        return conv_to_attention(conv, alpha=self.alpha), x

    def describe(self) -> str:
        return f"conv_to_attention({self.conv.describe()}, alpha={self.alpha})"

    def reproduce(self, check: str) -> str:
        return self.conv.reproduce(f"layer = conv_to_attention(conv, alpha={self.alpha!r})\n{check}")


@dataclass(frozen=True)
class LayerCase(_KeywordCase):
    """A randomly initialised (not converted) `RelativeSelfAttention` and its input.

    Attributes:
        dims: the layer's spatial_dims.
        dim: input channels.
        kwargs: keyword arguments of `RelativeSelfAttention` other than `geometry` (absent ones take
            the layer's defaults).
        axes: per axis (pad_before, pad_after, stride, margin_before, margin_after) of the geometry.
        padding_mode: the geometry's padding mode.
        size: the input's spatial shape.
        batch, dtype, seed: as for `ConvCase`.
        centres: "random" (real centres), "integer" (rounded) or "tie" (some coordinates exactly
            halfway between two keys: the hard limit's uniform-over-ties case).
    """

    dims: int
    dim: int
    kwargs: tuple[tuple[str, object], ...]
    axes: tuple[tuple[int, int, int, int, int], ...]
    padding_mode: str = "zeros"
    size: tuple[int, ...] = (4, 4)
    batch: int = 1
    dtype: str = "float64"
    seed: int = 0
    centres: str = "random"

    @property
    def geometry(self) -> Geometry:
        return Geometry(tuple(Axis(*axis) for axis in self.axes), padding_mode=self.padding_mode)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.batch, self.dim, *self.size)

    def layer(self) -> RelativeSelfAttention:
        """The layer with every parameter redrawn from the case's seed (see `_draw_parameters`)."""
        layer = RelativeSelfAttention(self.dim, geometry=self.geometry, **self.options)
        _draw_parameters(layer, torch.Generator().manual_seed(self.seed), self.centres)
        return layer.to(self.torch_dtype).eval()

    def input(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + 1)
        return _normal(self.input_shape, generator).to(self.torch_dtype)

    def build(self) -> tuple[RelativeSelfAttention, torch.Tensor]:
        return self.layer(), self.input()

    def describe(self) -> str:
        """One line: the constructor call, the geometry, the input and how centres were drawn."""
        geometry = self.geometry.describe()
        text = _call("RelativeSelfAttention", (self.dim,), self.options)
        if geometry:
            text += f" [{geometry}]"
        return f"{text} on {self.input_shape} {self.dtype}, centres={self.centres}"

    def reproduce(self, check: str) -> str:
        return "\n".join([
            "import math, torch",
            "from verify import reference",
            "from verify.cases import LayerCase",
            f"case = {self!r}",
            "layer, x = case.build()",
            check,
        ])


def _draw_parameters(layer: RelativeSelfAttention, generator: torch.Generator, centres: str) -> None:
    """Redraw every parameter so that no path sees torch's default init.

    Centres ~ N(0, 1.5^2) (rounded for "integer"; "tie" puts every other coordinate on a half
    integer), widths ~ 0.3 + |N(0, 1)| (alpha between about 0.05 and 10), generalized scale
    S = I + N(0, 0.5^2), learned tables and projections N(0, 0.5^2), content projections
    N(0, 1/dim), merge N(0, 1).
    """
    with torch.no_grad():
        for name, parameter in layer.named_parameters():
            shape = parameter.shape
            if name == "encoding.centre":
                value = _normal(shape, generator, 1.5)
                if centres in ("integer", "tie"):
                    value = value.round()
                if centres == "tie":
                    value.view(-1)[::2] += 0.5
            elif name == "encoding.width":
                value = 0.3 + _normal(shape, generator).abs()
            elif name == "encoding.scale":
                value = torch.eye(shape[-1], dtype=torch.float64) + _normal(shape, generator, 0.5)
            elif name.startswith(("query.", "key.")):
                value = _normal(shape, generator, 1 / math.sqrt(layer.dim))
            elif name.startswith("encoding."):
                value = _normal(shape, generator, 0.5)
            else:
                value = _normal(shape, generator)
            parameter.copy_(value)


__all__ = ["CONV_TYPES", "DTYPES", "ConvCase", "LayerCase"]
