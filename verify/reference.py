"""Plain, obviously-correct implementations that the fast paths are checked against.

`attention` is multi-head self-attention written out over explicit (query, key) coordinate pairs:
pad the tokens by index arithmetic, list the query and key coordinates, take delta = key - query,
score every pair straight from the encoding's parameters with the paper's formulas, softmax, average
the raw padded tokens, merge. It reads the layer's parameters and geometry fields only; it never
calls the layer's padding, offsets, encodings' score functions (`axis_logits`, `dense_logits`) or
merges. Everything is computed in float64.

`mix_separable`, `mix_dense` and `merge_heads` apply given probabilities plainly (per-head averages of
the raw tokens, one einsum per step, then the merge as a 1x1 map): the fused merges of
`impl.attention` are checked against them on the same probabilities.

`conv` is a convolution written as a sum over kernel taps of shifted input slices, on the queries and
shifts of `spec.geometry`; torch's own convolution stays the ground truth for conversions, and
test_geometry checks this one against it.
"""

from __future__ import annotations

import itertools
import math
import string
from dataclasses import dataclass
from typing import Sequence

import torch

import spec
from spec.bounds import padded_source

# -- padding and coordinates ---------------------------------------------------------------------------


padding_source = padded_source  # spec's statement of torch's padding modes, one definition


def pad(x: torch.Tensor, pads: Sequence[tuple[int, int]], mode: str) -> torch.Tensor:
    """x (B, C, *S) padded by (before, after) per spatial axis, one index map per axis."""
    out = x
    for axis, (before, after) in enumerate(pads):
        length = x.shape[2 + axis]
        sources = [padding_source(i, length, before, mode) for i in range(length + before + after)]
        index = torch.tensor([0 if s is None else s for s in sources], device=x.device)
        keep = torch.tensor([s is not None for s in sources], dtype=x.dtype, device=x.device)
        shape = [1] * out.dim()
        shape[2 + axis] = -1
        out = out.index_select(2 + axis, index) * keep.reshape(shape)
    return out


def query_coordinates(padded: Sequence[int], axes) -> list[list[int]]:
    """Per axis, the padded coordinates of the queries: q = margin_before + i * stride with
    q + margin_after inside the padded axis."""
    return [list(range(a.margin_before, n - a.margin_after, a.stride)) for a, n in zip(axes, padded)]


def coordinates(per_axis: Sequence[Sequence[int]]) -> torch.Tensor:
    """All grid points of the per-axis coordinate lists, row-major (last axis fastest): (N, n)."""
    return torch.tensor(list(itertools.product(*per_axis)), dtype=torch.float64).reshape(-1, len(per_axis))


@dataclass
class Pairs:
    """Every (query, key) pair of a layer on one input size."""

    padded_shape: tuple[int, ...]   # key grid
    query_shape: tuple[int, ...]    # query grid (the output's spatial shape)
    queries: torch.Tensor           # (Nq, n) padded coordinates
    keys: torch.Tensor              # (Nk, n) padded coordinates
    delta: torch.Tensor             # (Nq, Nk, n) key - query
    query_index: torch.Tensor       # (Nq,) flat key index of each query's own token


def pairs(geometry, spatial_shape: Sequence[int]) -> Pairs:
    padded = tuple(n + a.pad_before + a.pad_after for a, n in zip(geometry.axes, spatial_shape))
    per_axis = query_coordinates(padded, geometry.axes)
    queries = coordinates(per_axis)
    keys = coordinates([range(n) for n in padded])
    delta = keys[None, :, :] - queries[:, None, :]
    strides = [math.prod(padded[a + 1:]) for a in range(len(padded))]
    query_index = (queries * torch.tensor(strides, dtype=torch.float64)).sum(-1).long()
    return Pairs(padded, tuple(len(c) for c in per_axis), queries, keys, delta, query_index)


# -- scores straight from the parameters -------------------------------------------------------------


def _param(tensor: torch.Tensor) -> torch.Tensor:
    """A parameter in float64; differentiable (a float64 parameter is used as is) unless the caller runs
    under no_grad, as `attention` does by default."""
    return tensor.to(torch.float64)


def positional_scores(layer, p: Pairs) -> torch.Tensor:
    """(H, Nq, Nk) positional scores of a finite-score encoding."""
    encoding = layer.encoding
    kind = layer.encoding_name
    if kind == "quadratic":  # -alpha ||delta - Delta||^2, alpha = width^2 / 2
        alpha = _param(encoding.width) ** 2 / 2
        diff = p.delta[None] - _param(encoding.centre)[:, None, None, :]
        return -alpha[:, None, None] * (diff ** 2).sum(-1)
    if kind == "generalized":  # -(delta - Delta)^T S S^T (delta - Delta) / 2
        scale = _param(encoding.scale)
        diff = p.delta[None] - _param(encoding.centre)[:, None, None, :]
        projected = torch.einsum("hqki,hij->hqkj", diff, scale)  # (delta - Delta)^T S
        return -(projected ** 2).sum(-1) / 2
    if kind == "learned":  # sum over axes of <table_a[delta_a + L_a - 1], projection_a[h]>
        total = 0
        for axis, (table, projection) in enumerate(zip(encoding.tables, encoding.projections)):
            index = p.delta[..., axis].long() + encoding.grid_size[axis] - 1
            rows = _param(table.weight)[index]                       # (Nq, Nk, E)
            total = total + torch.einsum("qke,he->hqk", rows, _param(projection.weight))
        return total
    raise ValueError(f"layer.encoding must be quadratic, generalized or learned, got {kind!r}")


def hard_probabilities(layer, p: Pairs) -> torch.Tensor:
    """alpha = inf: uniform over the keys nearest each head's centre (the argmin of ||delta - Delta||^2)."""
    diff = p.delta[None] - _param(layer.encoding.centre)[:, None, None, :]
    distance = (diff ** 2).sum(-1)
    nearest = (distance == distance.amin(-1, keepdim=True)).to(torch.float64)
    return nearest / nearest.sum(-1, keepdim=True)


def content_scores(layer, tokens: torch.Tensor, p: Pairs) -> torch.Tensor:
    """(B, H, Nq, Nk) content scores q . k / sqrt(d) with q, k the per-head projections of the
    query's and the key's padded tokens; tokens (B, Nk, C)."""
    heads, d = layer.heads, layer.content_dim
    query_tokens = tokens[:, p.query_index]                                    # (B, Nq, C)
    q = query_tokens @ _param(layer.query.weight).T + _param(layer.query.bias)  # (B, Nq, H d)
    k = tokens @ _param(layer.key.weight).T + _param(layer.key.bias)           # (B, Nk, H d)
    q = q.reshape(*q.shape[:2], heads, d)
    k = k.reshape(*k.shape[:2], heads, d)
    return torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(d)


def softmax(scores: torch.Tensor) -> torch.Tensor:
    """exp(s - max) / sum exp(s - max) over the last axis."""
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    return weights / weights.sum(-1, keepdim=True)


# -- the layer ------------------------------------------------------------------------------------------


@dataclass
class Attention:
    """What the reference computes for one input: the padded tokens, the pairs, the scores (None in
    the hard limit), the probabilities (H, Nq, Nk) or (B, H, Nq, Nk) and the output."""

    tokens: torch.Tensor
    pairs: Pairs
    scores: torch.Tensor | None
    probabilities: torch.Tensor
    output: torch.Tensor


def attention(layer, x: torch.Tensor, differentiable: bool = False) -> Attention:
    """The layer's output on x, written out pair by pair in float64 (see the module docstring).

    With `differentiable`, autograd sees the computation: gradients reach x and (for a float64 layer)
    the layer's parameters; otherwise everything is computed under no_grad."""
    if not differentiable:
        with torch.no_grad():
            return attention(layer, x.detach(), differentiable=True)
    x = x.to(torch.float64)
    geometry = layer.geometry
    spatial = tuple(x.shape[2:])
    p = pairs(geometry, spatial)
    padded = pad(x, [(a.pad_before, a.pad_after) for a in geometry.axes], geometry.padding_mode)
    tokens = padded.flatten(2).transpose(1, 2)  # (B, Nk, C)

    if layer.hard:
        scores, probs = None, hard_probabilities(layer, p)
    else:
        scores = 0 if layer.encoding is None else positional_scores(layer, p)
        if layer.content:
            scores = scores + content_scores(layer, tokens, p)
        probs = softmax(scores)

    # head h's average of the raw tokens: y[b, h, q, c] = sum_k p[h, q, k] x[b, k, c]
    if probs.dim() == 3:
        y = torch.einsum("hqk,bkc->bhqc", probs, tokens)
    else:
        y = torch.einsum("bhqk,bkc->bhqc", probs, tokens)
    # merge: out[b, o, q] = sum_{h, c} W[o, h * C + c] y[b, h, q, c] + bias[o]
    weight = _param(layer.merge.weight).reshape(layer.out_dim, layer.heads, layer.dim)
    out = torch.einsum("ohc,bhqc->boq", weight, y)
    if layer.merge.bias is not None:
        out = out + _param(layer.merge.bias)[None, :, None]
    out = out.reshape(*out.shape[:2], *p.query_shape)
    return Attention(tokens, p, scores if torch.is_tensor(scores) else None, probs, out)


# -- the per-head averages of given probabilities, then the merge ------------------------------------------
# The fused merges (`impl.attention.positional_merge`, `product_merge`, `dense_merge`) are checked against
# these on the same probabilities: one einsum per step, in the input's dtype.


def mix_separable(x: torch.Tensor, axis_probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """x (B, C, *K), axis_probs[a] (H, q_a, k_a) -> (B, H, C, *Q), applying one axis at a time."""
    n = len(axis_probs)
    keys = string.ascii_lowercase[:n]          # k-grid letters
    queries = string.ascii_uppercase[:n]       # q-grid letters
    current = list(keys)
    y = None
    for axis, probs in enumerate(axis_probs):
        new = current.copy()
        new[axis] = queries[axis]
        src = "".join(current)
        dst = "".join(new)
        if y is None:  # the first axis creates the head dimension
            y = torch.einsum(f"h{queries[axis]}{keys[axis]},xy{src}->xhy{dst}", probs.to(x.dtype), x)
        else:
            y = torch.einsum(f"h{queries[axis]}{keys[axis]},xhy{src}->xhy{dst}", probs.to(x.dtype), y)
        current = new
    return y


def mix_dense(x: torch.Tensor, probs: torch.Tensor, query_shape: Sequence[int]) -> torch.Tensor:
    """x (B, C, *K), probs (H, Nq, Nk) or (B, H, Nq, Nk) -> (B, H, C, *Q)."""
    tokens = x.flatten(2)  # (B, C, Nk)
    if probs.dim() == 3:
        y = torch.einsum("hqk,bck->bhcq", probs.to(x.dtype), tokens)
    else:
        y = torch.einsum("bhqk,bck->bhcq", probs.to(x.dtype), tokens)
    return y.reshape(*y.shape[:3], *query_shape)


def merge_heads(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y (B, H, C, *Q) -> (B, O, *Q): the merge as a 1x1 map over head-major channels."""
    y = y.flatten(1, 2)
    out = torch.einsum("oc,bc...->bo...", weight.to(y.dtype), y)
    if bias is not None:
        out = out + bias.to(out.dtype).reshape(-1, *[1] * (y.dim() - 2))
    return out


# -- a convolution written out tap by tap -----------------------------------------------------------------


def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, stride: Sequence[int],
         padding: Sequence[tuple[int, int]], dilation: Sequence[int], groups: int,
         padding_mode: str) -> torch.Tensor:
    """out[b, o, i] = sum_taps sum_c W[o, c, tap] x_pad[b, g(o) c, q_i + Delta_tap] + bias[o], with the
    queries q_i and shifts Delta from `spec.geometry` (float64)."""
    x = x.detach().to(torch.float64)
    weight = weight.detach().to(torch.float64)
    kernel = tuple(weight.shape[2:])
    padded = pad(x, padding, padding_mode)
    queries = [spec.query_positions(n, k, s, b, a, d)
               for n, k, s, (b, a), d in zip(x.shape[2:], kernel, stride, padding, dilation)]
    shifts = [spec.shifts(k, d) for k, d in zip(kernel, dilation)]
    out_channels, in_per_group = weight.shape[:2]
    out_per_group = out_channels // groups
    out = x.new_zeros(x.shape[0], out_channels, *[len(q) for q in queries])
    for tap in itertools.product(*[range(k) for k in kernel]):
        index = [torch.tensor([q + shifts[a][t] for q in queries[a]]) for a, t in enumerate(tap)]
        window = padded[(slice(None), slice(None), *torch.meshgrid(*index, indexing="ij"))]  # (B, C, *Q)
        for g in range(groups):
            w = weight[g * out_per_group:(g + 1) * out_per_group, :, *tap]                   # (O_g, C_g)
            xs = window[:, g * in_per_group:(g + 1) * in_per_group]
            out[:, g * out_per_group:(g + 1) * out_per_group] += torch.einsum("oc,bc...->bo...", w, xs)
    if bias is not None:
        out = out + bias.detach().to(torch.float64).reshape(-1, *[1] * len(kernel))
    return out
