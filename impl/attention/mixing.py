"""How a layer applies its attention probabilities to the tokens: every head averages the raw tokens.

Each function takes the padded input x of shape (B, C, *K) (K: key grid) and returns the per-head
averages (B, H, C, *Q) (Q: query grid). They differ only in how the probabilities are given:

- `mix_shifts`: hard-limit heads, one key per query and axis, given as indices: a gather, no arithmetic.
- `mix_separable`: one (H, q_a, k_a) matrix per axis (isotropic quadratic, learned row + column):
  the head's attention is their Kronecker product, applied axis by axis.
- `mix_dense`: one (H, Nq, Nk) matrix, or (B, H, Nq, Nk) when it differs per image (dropout).
- `mix_content`: per-image scores from queries and keys plus a positional bias, fused by SDPA.

verify/reference.py holds the plain dense formula every one of them is checked against.
"""

from __future__ import annotations

import string
from typing import Sequence

import torch
import torch.nn.functional as F


def mix_shifts(x: torch.Tensor, axis_indices: Sequence[torch.Tensor]) -> torch.Tensor:
    """x (B, C, *K), axis_indices[a] (H, q_a) long -> (B, H, C, *Q): out[.., h, :, q] = x[.., :, index_h(q)]."""
    n = len(axis_indices)
    heads = axis_indices[0].shape[0]
    index = []
    for axis, idx in enumerate(axis_indices):
        shape = [heads] + [1] * n
        shape[1 + axis] = idx.shape[1]
        index.append(idx.reshape(shape))
    gathered = x[(slice(None), slice(None), *index)]  # (B, C, H, *Q)
    return gathered.transpose(1, 2)


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


def mix_content(queries: torch.Tensor, keys: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None,
                query_shape: Sequence[int], dropout: float) -> torch.Tensor:
    """Content scores q.k / sqrt(d) plus a positional bias (H, Nq, Nk), softmax, average of raw tokens.

    queries (B, H, Nq, d), keys (B, H, Nk, d), x (B, C, *K) -> (B, H, C, *Q). Fused by
    `scaled_dot_product_attention`: no (B, H, Nq, Nk) score tensor is kept for backward by our code, and its
    dropout draws an independent mask per image.
    """
    batch, heads = queries.shape[:2]
    values = x.flatten(2).transpose(1, 2)[:, None].expand(batch, heads, -1, -1)  # (B, H, Nk, C)
    mask = None if bias is None else bias.to(queries.dtype)[None]
    y = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, dropout_p=dropout)
    y = y.transpose(2, 3)  # (B, H, C, Nq)
    return y.reshape(*y.shape[:3], *query_shape)
