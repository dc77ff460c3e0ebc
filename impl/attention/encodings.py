"""Relative positional encodings: each turns key-minus-query offsets into per-head attention scores.

An encoding is *separable* when its score is a sum of one term per spatial axis (isotropic quadratic,
learned row + column tables). Then a head's attention over a box of keys is the Kronecker product of one
small softmax per axis (`spec.separable` proves it), which the layer exploits. The generalized quadratic
encoding couples the axes and is only available densely.
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch
from torch import nn

ENCODINGS = ("quadratic", "generalized", "learned")


def _check_positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_std(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite float >= 0, got {value!r}")
    return float(value)


def check_alpha(alpha) -> float:
    """alpha must be a positive real number (a Python or NumPy scalar) or math.inf (the hard limit)."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a positive float or math.inf, got {type(alpha).__name__}")
    alpha = float(alpha)
    if math.isnan(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a positive float or math.inf, got {alpha!r}")
    return alpha


def width_of(alpha, dtype: torch.dtype) -> float:
    """The width parameter s = sqrt(2 alpha) of a finite alpha, checked to fit `dtype` (and alpha to fit
    the scores' dtype, at least float32): beyond that alpha becomes inf and the scores NaN."""
    alpha = check_alpha(alpha)
    width = math.sqrt(2 * alpha)
    score_dtype = torch.promote_types(dtype, torch.float32)
    if width > torch.finfo(dtype).max or alpha > torch.finfo(score_dtype).max:
        raise ValueError(f"alpha must be small enough that its width sqrt(2 alpha) fits {dtype} and alpha "
                         f"itself fits {score_dtype}, got {alpha!r}: use alpha=math.inf for the hard limit "
                         f"(one-hot attention, exactly)")
    return width


def probability_floor(dtype: torch.dtype) -> float:
    """Attention probabilities below this are set to 0 (`drop_negligible`): eps^2 in float32 (1.4e-14),
    none in float64 (the dtype of the checks)."""
    return torch.finfo(torch.float32).eps ** 2 if dtype == torch.float32 else 0.0


def drop_negligible(probs: torch.Tensor) -> torch.Tensor:
    """probs with every entry below `probability_floor` set to 0.

    Far keys of a quadratic head get probabilities like exp(-alpha d^2) that land among the subnormal
    numbers (below 1.2e-38 in float32), and products of small probabilities with small gradients do too;
    on Intel CPUs every operation with a subnormal operand or result takes a microcode assist: a 16x16
    row matrix with 22 subnormal entries made its mixing pass 18x slower there, and the attention
    products of the paper's model ran at a fifth of the GEMM rate (docs/RESULTS.md). Above eps^2, a
    probability times anything above tiny / eps^2 (6e-25) stays normal. Each probability moves by less
    than eps^2, far below the rounding of any average it enters (eps times its largest probability,
    at least 1 / keys); verify/'s bounds charge it with the underflow of exp."""
    floor = probability_floor(probs.dtype)
    return probs.masked_fill(probs < floor, 0) if floor else probs


def attention_softmax(logits: torch.Tensor) -> torch.Tensor:
    """softmax over the last axis, negligible probabilities dropped (`drop_negligible`)."""
    return drop_negligible(logits.softmax(-1))


class RelativeEncoding(nn.Module):
    """Base: `heads` heads over a `spatial_dims`-dimensional grid."""

    separable: bool = False

    def __init__(self, heads: int, spatial_dims: int) -> None:
        super().__init__()
        self.heads = _check_positive_int("heads", heads)
        self.spatial_dims = _check_positive_int("spatial_dims", spatial_dims)

    def axis_logits(self, axis: int, offsets: torch.Tensor) -> torch.Tensor:
        """Scores of one axis, (heads, nq, nk), for integer offsets (nq, nk) = key - query on that axis."""
        raise NotImplementedError(f"{type(self).__name__} is not separable")

    def axis_probabilities(self, axis: int, offsets: torch.Tensor) -> torch.Tensor:
        return attention_softmax(self.axis_logits(axis, offsets))

    def dense_logits(self, axis_offsets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Scores (heads, Nq, Nk) over flattened query and key grids, from per-axis offset tables."""
        total = sum(_on_product_grid(self.axis_logits(axis, offsets), axis, self.spatial_dims)
                    for axis, offsets in enumerate(axis_offsets))
        return total.reshape(self.heads, *_flat_sizes(axis_offsets))


def _on_product_grid(per_axis: torch.Tensor, axis: int, n: int) -> torch.Tensor:
    """View (..., q_a, k_a) as (..., 1, q_a, 1, .., 1, k_a, 1, ..): axis `axis` of the query and key grids."""
    lead = per_axis.shape[:-2]
    shape = [1] * (2 * n)
    shape[axis], shape[n + axis] = per_axis.shape[-2:]
    return per_axis.reshape(*lead, *shape)


def _flat_sizes(axis_offsets: Sequence[torch.Tensor]) -> tuple[int, int]:
    """(Nq, Nk): sizes of the flattened query and key grids."""
    # lists, not generators: torch.compile cannot hand a generator to math.prod
    return math.prod([o.shape[0] for o in axis_offsets]), math.prod([o.shape[1] for o in axis_offsets])


class QuadraticEncoding(RelativeEncoding):
    """Isotropic quadratic heads (the paper's eq. 9): score = -alpha ||delta - centre||^2.

    Args:
        heads: number of heads.
        spatial_dims: 1, 2 or 3.
        alpha: fixed initial width for every head; `math.inf` is the hard limit (one-hot attention on the
            key nearest the centre, no width parameter). None: the paper's init, width s = 1 + N(0, 0.01^2)
            and alpha = s^2 / 2.
        centre_std: centres are drawn from N(0, centre_std^2) per coordinate (the paper uses 2).
    """

    separable = True

    def __init__(self, heads: int, spatial_dims: int = 2, *, alpha: float | None = None,
                 centre_std: float = 2.0) -> None:
        super().__init__(heads, spatial_dims)
        self.centre = nn.Parameter(torch.randn(heads, spatial_dims) * _check_std("centre_std", centre_std))
        self.hard = alpha is not None and check_alpha(alpha) == math.inf
        if self.hard:
            self.register_parameter("width", None)
        elif alpha is None:
            self.width = nn.Parameter(1 + 0.01 * torch.randn(heads))
        else:
            self.width = nn.Parameter(torch.full((heads,), width_of(alpha, torch.get_default_dtype())))

    @property
    def alpha(self) -> torch.Tensor:
        """Per-head alpha = width^2 / 2 (inf in the hard limit), in at least float32: squared in half
        precision, a width above 256 would overflow to inf and give NaN scores."""
        if self.hard:
            return torch.full((self.heads,), math.inf, device=self.centre.device)
        width = self.width
        return width.to(torch.promote_types(width.dtype, torch.float32)).square() / 2

    def axis_logits(self, axis: int, offsets: torch.Tensor) -> torch.Tensor:
        if self.hard:
            raise RuntimeError("a hard-limit quadratic encoding has probabilities, not finite scores")
        centre = self.centre[:, axis].to(offsets.dtype)
        alpha = self.alpha.to(offsets.dtype)
        return -alpha[:, None, None] * (offsets[None] - centre[:, None, None]).square()

    def axis_probabilities(self, axis: int, offsets: torch.Tensor) -> torch.Tensor:
        if not self.hard:
            return super().axis_probabilities(axis, offsets)
        # The alpha -> inf limit: uniform over the keys nearest the centre (one-hot unless tied).
        distance = (offsets[None] - self.centre[:, axis].to(offsets.dtype)[:, None, None]).square()
        nearest = (distance == distance.amin(-1, keepdim=True)).to(offsets.dtype)
        return nearest / nearest.sum(-1, keepdim=True)

    def extra_repr(self) -> str:
        return "alpha=inf (hard limit)" if self.hard else "alpha=learned (width^2/2)"


class GeneralizedEncoding(RelativeEncoding):
    """Generalized quadratic heads: score = -(delta - centre)^T Sigma^-1 (delta - centre) / 2, Sigma^-1 = S S^T.

    Args:
        heads, spatial_dims: as for `QuadraticEncoding`.
        centre_std: centres ~ N(0, centre_std^2) per coordinate.
        scale_std: S = identity + N(0, scale_std^2) noise (the paper uses 0.01).
    """

    def __init__(self, heads: int, spatial_dims: int = 2, *, centre_std: float = 2.0,
                 scale_std: float = 0.01) -> None:
        super().__init__(heads, spatial_dims)
        self.centre = nn.Parameter(torch.randn(heads, spatial_dims) * _check_std("centre_std", centre_std))
        eye = torch.eye(spatial_dims).expand(heads, spatial_dims, spatial_dims)
        self.scale = nn.Parameter(eye + scale_std * torch.randn(heads, spatial_dims, spatial_dims))

    @property
    def precision(self) -> torch.Tensor:
        """Sigma^-1 per head, (heads, n, n), symmetric positive semi-definite by construction."""
        return self.scale @ self.scale.transpose(-1, -2)

    def dense_logits(self, axis_offsets: Sequence[torch.Tensor]) -> torch.Tensor:
        dtype, n = axis_offsets[0].dtype, self.spatial_dims
        grid_shape = [o.shape[0] for o in axis_offsets] + [o.shape[1] for o in axis_offsets]
        # offsets of every (query, key) pair on the flattened grids: (Nq, Nk, n)
        delta = torch.stack([_on_product_grid(offsets, axis, n).expand(grid_shape)
                             for axis, offsets in enumerate(axis_offsets)], -1)
        delta = delta.reshape(*_flat_sizes(axis_offsets), n)
        diff = delta[None] - self.centre.to(dtype)[:, None, None, :]  # (h, Nq, Nk, n)
        quad = torch.einsum("hqki,hij,hqkj->hqk", diff, self.precision.to(dtype), diff)
        return -quad / 2

    def extra_repr(self) -> str:
        return "Sigma^-1 = S S^T learned"


class LearnedEncoding(RelativeEncoding):
    """Learned relative heads: one embedding table per axis, projected to a score per head; scores add.

    Args:
        heads, spatial_dims: as for `QuadraticEncoding`.
        grid_size: the largest token grid the layer will see, per axis; each table holds 2 L - 1 offsets.
        embed_dim: width of the embedding tables (the paper uses the model width, 400).
    """

    separable = True

    def __init__(self, heads: int, spatial_dims: int = 2, *, grid_size: Sequence[int], embed_dim: int) -> None:
        super().__init__(heads, spatial_dims)
        grid_size = tuple(grid_size) if isinstance(grid_size, (tuple, list)) else (grid_size,) * spatial_dims
        if len(grid_size) != spatial_dims:
            raise ValueError(f"grid_size must have {spatial_dims} entries, got {grid_size!r}")
        for length in grid_size:
            _check_positive_int("grid_size", length)
        self.grid_size = grid_size
        self.tables = nn.ModuleList(nn.Embedding(2 * length - 1, _check_positive_int("embed_dim", embed_dim))
                                    for length in grid_size)
        self.projections = nn.ModuleList(nn.Linear(embed_dim, heads, bias=False) for _ in grid_size)

    def axis_logits(self, axis: int, offsets: torch.Tensor) -> torch.Tensor:
        reach = self.grid_size[axis] - 1
        index = offsets.long() + reach
        # a guard for direct calls, read off the data, so not while torch.compile traces: the layer's
        # check_input has refused token grids larger than grid_size before any offset is built
        if not torch.compiler.is_compiling() and index.numel() and (index.min() < 0 or index.max() > 2 * reach):
            raise ValueError(f"offsets on axis {axis} exceed grid_size={self.grid_size}: build the layer "
                             f"with a grid_size at least the input's token grid")
        table = self.projections[axis](self.tables[axis].weight)  # (2 L - 1, heads)
        return table[index].permute(2, 0, 1).to(offsets.dtype)

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}"


def build_encoding(name: str | None, heads: int, spatial_dims: int, **kwargs) -> RelativeEncoding | None:
    """The encoding called `name` (one of ENCODINGS, or None for content-only attention)."""
    if name is None:
        return None
    if name == "quadratic":
        return QuadraticEncoding(heads, spatial_dims, **kwargs)
    if name == "generalized":
        return GeneralizedEncoding(heads, spatial_dims, **kwargs)
    if name == "learned":
        return LearnedEncoding(heads, spatial_dims, **kwargs)
    raise ValueError(f"encoding must be one of {ENCODINGS} or None, got {name!r}")
