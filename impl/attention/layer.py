"""RelativeSelfAttention: the one multi-head self-attention layer of the project.

Every head averages the raw input tokens under its attention map (no per-head value projection, as in the
paper's model), and one linear map merges the heads: out = W_out [avg_1; ...; avg_H] + b. The attention
scores come from a relative positional encoding (quadratic, generalized or learned) and, optionally, from
the tokens' content. Positional attention does not depend on the image, so it is computed once per forward
without a batch dimension (and cached in eval mode under no_grad), then applied by the cheapest path:
shifts for hard-limit heads, one small softmax per axis for separable heads, a dense matrix otherwise.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .encodings import ENCODINGS, LearnedEncoding, QuadraticEncoding, RelativeEncoding, build_encoding
from .geometry import Geometry
from .mixing import mix_content, mix_dense, mix_separable, mix_shifts


def _positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class RelativeSelfAttention(nn.Module):
    """Multi-head self-attention over a 1-, 2- or 3-d token grid with relative positional encodings.

    Args:
        dim: channels of the input tokens (D_in); every head averages all of them.
        heads: number of heads N_h.
        out_dim: output channels (D_out); defaults to `dim`.
        encoding: 'quadratic', 'generalized', 'learned', or None (content only; needs `content=True`).
        spatial_dims: 1, 2 or 3: the input is (B, dim, *grid).
        content: add content scores q.k / sqrt(content_dim) from per-head query and key projections.
        content_dim: per-head query/key width; defaults to `dim` (the paper's choice).
        attn_dropout: dropout on attention probabilities, an independent mask per image.
        bias: whether the merging linear map has a bias.
        alpha: quadratic only; a fixed initial alpha for every head, `math.inf` for the hard limit.
        centre_std: quadratic/generalized only; std of the random initial centres.
        grid_size: learned only; the largest token grid, per axis.
        embed_dim: learned only; width of the relative embedding tables (default `dim`).
        geometry: padding, stride and query margins (a converted convolution's); default: plain
            self-attention in which every token is a query and a key.
    """

    def __init__(self, dim: int, *, heads: int = 9, out_dim: int | None = None,
                 encoding: str | None = "quadratic", spatial_dims: int = 2, content: bool = False,
                 content_dim: int | None = None, attn_dropout: float = 0.0, bias: bool = True,
                 alpha: float | None = None, centre_std: float = 2.0,
                 grid_size: Sequence[int] | int | None = None, embed_dim: int | None = None,
                 geometry: Geometry | None = None) -> None:
        super().__init__()
        self.dim = _positive_int("dim", dim)
        self.heads = _positive_int("heads", heads)
        self.out_dim = _positive_int("out_dim", dim if out_dim is None else out_dim)
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")
        self.spatial_dims = spatial_dims
        if encoding not in ENCODINGS and encoding is not None:
            raise ValueError(f"encoding must be one of {ENCODINGS} or None, got {encoding!r}")
        if encoding is None and not content:
            raise ValueError("encoding=None needs content=True: the heads would have no scores at all")
        if isinstance(attn_dropout, bool) or not isinstance(attn_dropout, (int, float)) \
                or not 0 <= attn_dropout < 1:
            raise ValueError(f"attn_dropout must be a float in [0, 1), got {attn_dropout!r}")
        self.attn_dropout = float(attn_dropout)
        self.geometry = Geometry.identity(spatial_dims) if geometry is None else geometry
        if not isinstance(self.geometry, Geometry) or self.geometry.spatial_dims != spatial_dims:
            raise ValueError(f"geometry must be a Geometry with {spatial_dims} axes, got {geometry!r}")

        encoding_kwargs = {}
        if encoding == "quadratic":
            encoding_kwargs = dict(alpha=alpha, centre_std=centre_std)
        elif encoding == "generalized":
            encoding_kwargs = dict(centre_std=centre_std)
        elif encoding == "learned":
            if grid_size is None:
                raise ValueError("encoding='learned' needs grid_size: the largest token grid, per axis")
            encoding_kwargs = dict(grid_size=grid_size, embed_dim=dim if embed_dim is None else embed_dim)
        if alpha is not None and encoding != "quadratic":
            raise ValueError(f"alpha applies to encoding='quadratic' only, got encoding={encoding!r}")
        self.encoding: RelativeEncoding | None = build_encoding(encoding, heads, spatial_dims,
                                                                **encoding_kwargs)
        if content and self.hard:
            raise ValueError("content=True cannot be combined with alpha=math.inf: the hard limit ignores content")

        self.content_dim = _positive_int("content_dim", dim if content_dim is None else content_dim)
        self.content = bool(content)
        if self.content:
            self.query = nn.Linear(dim, heads * self.content_dim)
            self.key = nn.Linear(dim, heads * self.content_dim)
        self.merge = nn.Linear(heads * dim, self.out_dim, bias=bias)
        self._cache: tuple[tuple, object] | None = None

    # -- configuration -------------------------------------------------------------------------------
    @property
    def encoding_name(self) -> str | None:
        return None if self.encoding is None else type(self.encoding).__name__.removesuffix("Encoding").lower()

    @property
    def hard(self) -> bool:
        return isinstance(self.encoding, QuadraticEncoding) and self.encoding.hard

    def extra_repr(self) -> str:
        parts = [f"dim={self.dim}", f"heads={self.heads}", f"out_dim={self.out_dim}",
                 f"encoding={self.encoding_name}"]
        if self.spatial_dims != 2:
            parts.append(f"spatial_dims={self.spatial_dims}")
        if self.content:
            parts.append(f"content=True, content_dim={self.content_dim}")
        if self.attn_dropout:
            parts.append(f"attn_dropout={self.attn_dropout}")
        if not self.geometry.is_identity:
            parts.append(self.geometry.describe())
        return ", ".join(parts)

    # -- input checks --------------------------------------------------------------------------------
    def check_input(self, x) -> None:
        """Raise TypeError/ValueError naming `x` for anything this layer cannot attend over."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        rank = 2 + self.spatial_dims
        if x.dim() != rank:
            raise ValueError(f"x must have shape (batch, {self.dim}, *{self.spatial_dims}-d grid), i.e. rank "
                             f"{rank}, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if x.shape[1] != self.dim:
            raise ValueError(f"x must have {self.dim} channels (dim 1), got shape {tuple(x.shape)}")
        spatial = x.shape[2:]
        for axis, length in zip(self.geometry.axes, spatial):
            if self.geometry.padding_mode == "reflect" and max(axis.pad_before, axis.pad_after) >= length:
                raise ValueError(f"x of spatial shape {tuple(spatial)} is too small for reflect padding "
                                 f"{(axis.pad_before, axis.pad_after)}: each side needs padding < size")
            if self.geometry.padding_mode == "circular" and max(axis.pad_before, axis.pad_after) > length:
                raise ValueError(f"x of spatial shape {tuple(spatial)} is too small for circular padding "
                                 f"{(axis.pad_before, axis.pad_after)}: each side needs padding <= size")
        if any(n < 1 for n in self.geometry.output_shape(spatial)):
            raise ValueError(f"x of spatial shape {tuple(spatial)} is too small: this layer's geometry "
                             f"({self.geometry.describe()}) leaves no query")
        if isinstance(self.encoding, LearnedEncoding):
            padded = [a.padded_length(n) for a, n in zip(self.geometry.axes, spatial)]
            if any(p > g for p, g in zip(padded, self.encoding.grid_size)):
                raise ValueError(f"x of spatial shape {tuple(spatial)} exceeds the learned encoding's "
                                 f"grid_size={self.encoding.grid_size}")

    # -- positional attention ------------------------------------------------------------------------
    def axis_offsets(self, spatial_shape: Sequence[int], dtype: torch.dtype, device) -> list[torch.Tensor]:
        """Per axis, the (q_a, k_a) table of key - query offsets in padded coordinates."""
        tables = []
        for axis, length in zip(self.geometry.axes, spatial_shape):
            queries = torch.tensor(axis.query_positions(length), dtype=dtype, device=device)
            keys = torch.arange(axis.padded_length(length), dtype=dtype, device=device)
            tables.append(keys[None, :] - queries[:, None])
        return tables

    def positional(self, spatial_shape: Sequence[int], dtype: torch.dtype, device):
        """What the mixing needs, computed once for the whole batch.

        Returns ("shifts", [index per axis]), ("separable", [probs per axis]), ("dense", probs) or
        ("bias", logits) for content layers; None for a content-only layer.
        """
        if self.encoding is None:
            return None
        use_cache = not self.training and not torch.is_grad_enabled()
        key = (tuple(spatial_shape), dtype, str(device), tuple(p._version for p in self.encoding.parameters()))
        if use_cache and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        value = self._compute_positional(spatial_shape, dtype, device)
        self._cache = (key, value) if use_cache else None
        return value

    def _compute_positional(self, spatial_shape, dtype, device):
        offsets = self.axis_offsets(spatial_shape, dtype, device)
        if self.content:
            return ("bias", self.encoding.dense_logits(offsets))
        if self.encoding.separable:
            probs = [self.encoding.axis_probabilities(a, o) for a, o in enumerate(offsets)]
            if self.hard and all(bool((p.amax(-1) == 1).all()) for p in probs):
                return ("shifts", [p.argmax(-1) for p in probs])
            return ("separable", probs)
        return ("dense", self.encoding.dense_logits(offsets).softmax(-1))

    def attention_probabilities(self, spatial_shape: Sequence[int], dtype=torch.float32,
                                device=None) -> torch.Tensor:
        """Dense positional attention (H, Nq, Nk) for an input of `spatial_shape` (not content layers)."""
        if self.content or self.encoding is None:
            raise ValueError("attention_probabilities is positional only: this layer has content scores")
        device = self.merge.weight.device if device is None else device
        kind, value = self._compute_positional(spatial_shape, dtype, device)
        if kind == "dense":
            return value
        if kind == "shifts":
            value = [nn.functional.one_hot(idx, a.padded_length(n)).to(dtype)
                     for idx, a, n in zip(value, self.geometry.axes, spatial_shape)]
        # Kronecker product of the per-axis matrices, head by head.
        dense = value[0]
        for probs in value[1:]:
            dense = torch.einsum("hqk,hrl->hqrkl", dense, probs)
            dense = dense.reshape(dense.shape[0], dense.shape[1] * dense.shape[2], -1)
        return dense

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        spatial_shape = tuple(x.shape[2:])
        query_shape = self.geometry.output_shape(spatial_shape)
        x = self.geometry.pad(x)
        compute_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        positional = self.positional(spatial_shape, compute_dtype, x.device)
        dropout = self.attn_dropout if self.training else 0.0

        if self.content:
            y = mix_content(*self._queries_keys(x, spatial_shape), x,
                            None if positional is None else positional[1], query_shape, dropout)
        else:
            kind, value = positional
            if dropout:
                # An independent dropout mask per image needs per-image probabilities.
                probs = value if kind == "dense" else \
                    self.attention_probabilities(spatial_shape, compute_dtype, x.device)
                probs = nn.functional.dropout(probs.expand(x.shape[0], *probs.shape), dropout)
                y = mix_dense(x, probs, query_shape)
            elif kind == "shifts":
                y = mix_shifts(x, value)
            elif kind == "separable":
                y = mix_separable(x, value)
            else:
                y = mix_dense(x, value, query_shape)
        # (B, H, C, *Q) -> (B, H*C, *Q): head-major channels, then the merge as a 1x1 map.
        y = y.flatten(1, 2)
        out = torch.einsum("oc,bc...->bo...", self.merge.weight.to(y.dtype), y)
        if self.merge.bias is not None:
            out = out + self.merge.bias.to(out.dtype).reshape(-1, *[1] * self.spatial_dims)
        return out

    def _queries_keys(self, x: torch.Tensor, spatial_shape) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head queries (B, H, Nq, d) at the query positions and keys (B, H, Nk, d) at every token."""
        tokens = x.flatten(2).transpose(1, 2)  # (B, Nk, C)
        index = [torch.tensor(axis.query_positions(n), device=x.device)
                 for axis, n in zip(self.geometry.axes, spatial_shape)]
        query_tokens = x[(slice(None), slice(None), *torch.meshgrid(*index, indexing="ij"))]
        query_tokens = query_tokens.flatten(2).transpose(1, 2)  # (B, Nq, C)
        batch = x.shape[0]
        queries = self.query(query_tokens).reshape(batch, -1, self.heads, self.content_dim).transpose(1, 2)
        keys = self.key(tokens).reshape(batch, -1, self.heads, self.content_dim).transpose(1, 2)
        return queries, keys

