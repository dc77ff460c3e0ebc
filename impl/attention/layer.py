"""RelativeSelfAttention: the one multi-head self-attention layer of the project.

Every head averages the raw input tokens under its attention map (no per-head value projection, as in the
paper's model), and one linear map merges the heads: out = W_out [avg_1; ...; avg_H] + b. The attention
scores come from a relative positional encoding (quadratic, generalized or learned) and, optionally, from
the tokens' content. Positional attention does not depend on the image, so it is computed once per forward
without a batch dimension (and cached in eval mode under no_grad), then applied by the cheapest path: a
convolution or a gather for hard-limit heads (`shifts`), one small softmax per axis for separable heads and
a dense matrix otherwise (`positional_merge`), each fused with the merge so that no
(batch, heads x channels, tokens) tensor is ever held; SDPA or FlexAttention for content scores (`content`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .encodings import (ENCODINGS, LearnedEncoding, QuadraticEncoding, RelativeEncoding, attention_softmax,
                        build_encoding, drop_negligible)
from .geometry import Geometry
from .gemm import project
from .content import content_attention, flex_content, use_flex
from .positional_merge import positional_merge
from .shifts import pure_shifts, shifts_as_conv, shifts_merge


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
        attn_dropout: dropout on attention probabilities, an independent mask per image (`impl.dropout`).
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
        if isinstance(spatial_dims, bool) or not isinstance(spatial_dims, int) or spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3 (an int), got {spatial_dims!r}")
        for flag, value in (("content", content), ("bias", bias)):
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be a bool (True or False), got {value!r}")
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
        for option, value, owner in (("alpha", alpha, "quadratic"), ("grid_size", grid_size, "learned"),
                                     ("embed_dim", embed_dim, "learned")):
            if value is not None and encoding != owner:
                raise ValueError(f"{option} applies to encoding={owner!r} only, got encoding={encoding!r}")
        self.encoding: RelativeEncoding | None = build_encoding(encoding, heads, spatial_dims,
                                                                **encoding_kwargs)
        if content and self.hard:
            raise ValueError("content=True cannot be combined with alpha=math.inf: the hard limit ignores content")

        self.content_dim = _positive_int("content_dim", dim if content_dim is None else content_dim)
        self.content = content
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
        if any(n == 0 for n in spatial):
            raise ValueError(f"x must have a non-empty grid (every spatial size >= 1), got shape {tuple(x.shape)}")
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
        """What the merges need, computed once for the whole batch.

        Returns ("shifts", [index per axis]), ("separable", [probs per axis]), ("dense", probs) or
        ("bias", logits) for content layers; None for a content-only layer.
        """
        return self._positional_entry(spatial_shape, dtype, device)[0]

    def _positional_entry(self, spatial_shape, dtype, device) -> tuple[object, dict]:
        """(`positional`'s value, a dict the merges fill with what they derive from it). Both are cached
        together in eval mode under no_grad (not while torch.compile traces: comparing the parameters with
        the cached ones is data-dependent); setting `_cache = None` drops them."""
        if self.encoding is None:
            return None, {}
        use_cache = not self.training and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
        key = (tuple(spatial_shape), dtype, str(device))
        # The parameters' values, not their version counters: writes through `.data` or
        # `vector_to_parameters` do not bump `_version` but must invalidate the cache.
        params = [p.detach() for p in self.encoding.parameters()]
        if use_cache and self._cache is not None and self._cache[0] == key \
                and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(self._cache[3], params)):
            return self._cache[1], self._cache[2]
        value = self._compute_positional(spatial_shape, dtype, device)
        derived: dict = {}
        self._cache = (key, value, derived, [p.clone() for p in params]) if use_cache else None
        return value, derived

    def _compute_positional(self, spatial_shape, dtype, device):
        offsets = self.axis_offsets(spatial_shape, dtype, device)
        if self.content:
            return ("bias", self.encoding.dense_logits(offsets))
        if self.encoding.separable:
            probs = [self.encoding.axis_probabilities(a, o) for a, o in enumerate(offsets)]
            if self.hard and all(bool((p.amax(-1) == 1).all()) for p in probs):
                return ("shifts", [p.argmax(-1) for p in probs])
            return ("separable", probs)
        return ("dense", attention_softmax(self.encoding.dense_logits(offsets)))

    def attention_probabilities(self, spatial_shape: Sequence[int], dtype=torch.float32,
                                device=None) -> torch.Tensor:
        """Dense positional attention (H, Nq, Nk) for an input of `spatial_shape` (not content layers)."""
        if self.content or self.encoding is None:
            raise ValueError("attention_probabilities is positional only: this layer has content scores")
        if isinstance(spatial_shape, (str, bytes)) or not isinstance(spatial_shape, Sequence) \
                or len(spatial_shape) != self.spatial_dims \
                or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in spatial_shape):
            raise ValueError(f"spatial_shape must be {self.spatial_dims} positive ints (the input's grid), "
                             f"got {spatial_shape!r}")
        self.check_input(torch.empty(0, self.dim, *spatial_shape, device="meta"))
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
        return drop_negligible(dense)  # products of small probabilities

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return _conv_layout(self._attend(x), x)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        spatial_shape = tuple(x.shape[2:])
        query_shape = self.geometry.output_shape(spatial_shape)
        compute_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        dropout = self.attn_dropout if self.training else 0.0
        if self.content:
            return self._content_forward(x, spatial_shape, query_shape, compute_dtype, dropout)
        (kind, value), derived = self._positional_entry(spatial_shape, compute_dtype, x.device)
        weight, bias = self.merge.weight, self.merge.bias
        if dropout:
            # An independent mask per image breaks the separable structure: the dense (H, Nq, Nk)
            # probabilities, masked image by image inside positional_merge.
            probs = value if kind == "dense" else \
                self.attention_probabilities(spatial_shape, compute_dtype, x.device)
            out = positional_merge(self.geometry.pad(x).flatten(2), weight, bias, probs, dropout=dropout)
            return out.reshape(*out.shape[:2], *query_shape)
        if kind == "shifts":
            return self._shifts_forward(x, spatial_shape, query_shape, value, derived)
        x_keys, probs = self._real_keys(x, spatial_shape, kind, value, derived)
        if kind == "separable":
            return positional_merge(x_keys, weight, bias, probs[0], probs[1:])
        out = positional_merge(x_keys.flatten(2), weight, bias, probs)  # dense: one flattened axis
        return out.reshape(*out.shape[:2], *query_shape)

    def _real_keys(self, x: torch.Tensor, spatial_shape, kind: str, value, derived: dict):
        """The key tokens and the probabilities over them. Zero padding adds tokens that contribute
        exactly 0, so with padding_mode='zeros' the input is not padded and the padded keys' columns are
        dropped from the probabilities (after the softmax, which still counts them)."""
        pads = [(a.pad_before, a.pad_after) for a in self.geometry.axes]
        if self.geometry.padding_mode != "zeros" or not any(b or a for b, a in pads):
            return self.geometry.pad(x), value
        if "real_keys" not in derived:
            if kind == "separable":
                trimmed = [p[:, :, b:p.shape[2] - a] for p, (b, a) in zip(value, pads)]
            else:
                padded = [n + b + a for n, (b, a) in zip(spatial_shape, pads)]
                flat = torch.arange(math.prod(padded), device=value.device).view(padded)
                flat = flat[tuple(slice(b, b + n) for n, (b, _) in zip(spatial_shape, pads))].flatten()
                trimmed = value.index_select(2, flat)
            derived["real_keys"] = trimmed
        return x, derived["real_keys"]

    def _shifts_forward(self, x, spatial_shape, query_shape, indices, derived: dict) -> torch.Tensor:
        """Hard-limit heads: a convolution when every head reads a fixed shift of its query, else a gather."""
        weight, bias = self.merge.weight, self.merge.bias
        if "shifts" not in derived:
            positions = [axis.query_positions(n) for axis, n in zip(self.geometry.axes, spatial_shape)]
            derived["shifts"] = pure_shifts(indices, positions)
        shifts = derived["shifts"]
        if shifts is not None and x.dtype in (torch.float32, torch.float64):
            margins = [a.margin_before for a in self.geometry.axes]
            strides = [a.stride for a in self.geometry.axes]
            if self.geometry.padding_mode == "zeros":  # let the convolution pad
                out = shifts_as_conv(x, shifts, margins, strides, query_shape, weight, bias, max_taps=2 * self.heads,
                                     zero_pads=[(a.pad_before, a.pad_after) for a in self.geometry.axes])
            else:
                out = shifts_as_conv(self.geometry.pad(x), shifts, margins, strides, query_shape, weight, bias,
                                     max_taps=2 * self.heads)
            if out is not None:
                return out
        xp = self.geometry.pad(x)
        return shifts_merge(xp, indices, weight, bias)

    def _content_forward(self, x, spatial_shape, query_shape, compute_dtype, dropout) -> torch.Tensor:
        xp = self.geometry.pad(x)
        queries, keys = self._queries_keys(xp, spatial_shape)
        if use_flex(queries, dropout):
            tables = None if self.encoding is None else self._score_tables(spatial_shape, queries.dtype, x.device)
            key_shape = tuple(xp.shape[2:])
            if tables is not None and len(tables) == 1 and self.spatial_dims > 1:
                y = flex_content(queries, keys, xp, tables, (math.prod(query_shape),), (math.prod(key_shape),))
            else:
                y = flex_content(queries, keys, xp, tables, query_shape, key_shape)
        else:
            bias = self.positional(spatial_shape, compute_dtype, x.device)
            y = content_attention(queries, keys, xp, None if bias is None else bias[1], dropout)
        # (B, H, Nq, C) -> (B, Nq, H*C) head-major channels, then the merge
        tokens = y.transpose(1, 2).reshape(y.shape[0], y.shape[2], y.shape[1] * y.shape[3])
        out = project(tokens, self.merge.weight.to(tokens.dtype))
        if self.merge.bias is not None:
            out = out + self.merge.bias.to(out.dtype)
        return out.transpose(1, 2).reshape(out.shape[0], self.out_dim, *query_shape)

    def _score_tables(self, spatial_shape, dtype, device) -> list[torch.Tensor]:
        """Positional logits for FlexAttention: one (H, q_a, k_a) table per axis for separable encodings,
        else the dense (H, Nq, Nk) table; never a per-image tensor."""
        offsets = self.axis_offsets(spatial_shape, dtype, device)
        if self.encoding.separable:
            return [self.encoding.axis_logits(a, o) for a, o in enumerate(offsets)]
        return [self.encoding.dense_logits(offsets)]

    def _queries_keys(self, x: torch.Tensor, spatial_shape) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head queries (B, H, Nq, d) at the query positions and keys (B, H, Nk, d) at every token."""
        tokens = x.flatten(2).transpose(1, 2)  # (B, Nk, C)
        index = [torch.tensor(axis.query_positions(n), device=x.device)
                 for axis, n in zip(self.geometry.axes, spatial_shape)]
        query_tokens = x[(slice(None), slice(None), *torch.meshgrid(*index, indexing="ij"))]
        query_tokens = query_tokens.flatten(2).transpose(1, 2)  # (B, Nq, C)
        batch, n_queries, n_keys = x.shape[0], query_tokens.shape[1], tokens.shape[1]
        # In x's dtype, as the positional layers compute (autocast, when on, overrides both).
        queries = _linear(query_tokens, self.query).reshape(batch, n_queries, self.heads, self.content_dim)
        keys = _linear(tokens, self.key).reshape(batch, n_keys, self.heads, self.content_dim)
        return queries.transpose(1, 2), keys.transpose(1, 2)


_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def _conv_layout(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """out in the memory layout `nn.Conv*` gives for input x: channels-last when x is channels-last (and
    not also plainly contiguous), else contiguous; so that `out.view(..)` works wherever the conv's did.
    The fast paths produce either layout; a copy only when they differ."""
    layout = _CHANNELS_LAST.get(x.dim())
    if layout is not None and x.is_contiguous(memory_format=layout) and not x.is_contiguous():
        return out.contiguous(memory_format=layout)
    return out.contiguous()


def _linear(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    return nn.functional.linear(x, linear.weight.to(x.dtype), linear.bias.to(x.dtype))
