"""Content scores plus a positional bias, fused: the (B, heads, Nq, Nk) score tensor is never kept by our code.

`content_attention` runs `scaled_dot_product_attention` with the bias as a float mask (CPU, and CUDA with
dropout); `flex_content` runs FlexAttention on CUDA with the relative score as a `score_mod` built by
`relative_score_mod`, whose score logic (`relative_score`) the CPU tests evaluate directly.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def padded_bias(bias: torch.Tensor) -> torch.Tensor:
    """The same (.., Nk) values in storage whose rows are a multiple of 8 long, as the memory-efficient
    SDPA kernel wants for a float mask."""
    nk = bias.shape[-1]
    if nk % 8 == 0:
        return bias
    storage = bias.new_zeros(*bias.shape[:-1], -(-nk // 8) * 8)
    storage[..., :nk] = bias
    return storage[..., :nk]


def content_attention(queries: torch.Tensor, keys: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None,
                      dropout: float) -> torch.Tensor:
    """Content scores q.k / sqrt(d) plus a positional bias (H, Nq, Nk), softmax, average of raw tokens.

    queries (B, H, Nq, d), keys (B, H, Nk, d), x (B, C, *K) -> per-head averages (B, H, Nq, C). Fused by
    `scaled_dot_product_attention`: no (B, H, Nq, Nk) score tensor is kept for backward by our code, and its
    dropout draws an independent mask per image. The bias is stored with rows padded to a multiple of 8.
    """
    batch, heads = queries.shape[:2]
    values = x.flatten(2).transpose(1, 2)[:, None].expand(batch, heads, -1, -1)  # (B, H, Nk, C)
    mask = None if bias is None else padded_bias(bias.to(queries.dtype))[None]
    return F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, dropout_p=dropout)


def relative_score(head, q_idx, kv_idx, tables: Sequence[torch.Tensor], query_shape: Sequence[int],
                   key_shape: Sequence[int]):
    """The positional score of head `head` for flat query index `q_idx` and flat key index `kv_idx`.

    tables: separable encodings give one (H, Q_a, K_a) logits table per axis (summed); a non-separable one
    gives a single dense (H, Nq, Nk) table (`key_shape`/`query_shape` then the flat sizes). Works on
    integer tensors of any broadcastable shapes: the CPU tests evaluate it on whole index grids, and
    `relative_score_mod` hands it to FlexAttention as the score_mod.
    """
    if len(tables) == 1 and len(query_shape) == 1:
        return tables[0][head, q_idx, kv_idx]
    score = 0
    q_rest, k_rest = q_idx, kv_idx
    for axis in range(len(tables) - 1, -1, -1):
        q_a, k_a = q_rest % query_shape[axis], k_rest % key_shape[axis]
        q_rest, k_rest = q_rest // query_shape[axis], k_rest // key_shape[axis]
        score = score + tables[axis][head, q_a, k_a]
    return score


def relative_score_mod(tables: Sequence[torch.Tensor], query_shape: Sequence[int], key_shape: Sequence[int]):
    """A FlexAttention score_mod adding `relative_score` to the content score."""
    tables = list(tables)
    query_shape, key_shape = tuple(query_shape), tuple(key_shape)

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + relative_score(h, q_idx, kv_idx, tables, query_shape, key_shape).to(score.dtype)

    return score_mod


_FLEX = {}


def _compiled_flex():
    """torch.compile(flex_attention), built once; None where FlexAttention is unavailable."""
    if "fn" not in _FLEX:
        try:
            from torch.nn.attention.flex_attention import flex_attention
            _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
        except Exception:  # pragma: no cover - torch without FlexAttention
            _FLEX["fn"] = None
    return _FLEX["fn"]


def use_flex(queries: torch.Tensor, dropout: float) -> bool:
    """FlexAttention on CUDA (it has no dropout and no CPU backward); SDPA elsewhere."""
    return queries.is_cuda and dropout == 0 and _compiled_flex() is not None


def flex_content(queries: torch.Tensor, keys: torch.Tensor, x: torch.Tensor, tables: Sequence[torch.Tensor] | None,
                 query_shape: Sequence[int], key_shape: Sequence[int], *, compiled: bool = True) -> torch.Tensor:
    """Content + relative positional attention by FlexAttention: the score is never materialised.

    Same contract as `content_attention` (per-head averages (B, H, Nq, C)); tables as for `relative_score`
    (None: content only). compiled=False runs the eager (unfused, CPU-capable, forward-only) version.
    """
    from torch.nn.attention.flex_attention import flex_attention
    batch, heads = queries.shape[:2]
    values = x.flatten(2).transpose(1, 2)[:, None].expand(batch, heads, -1, -1).to(queries.dtype)
    score_mod = None if tables is None else relative_score_mod(tables, query_shape, key_shape)
    fn = _compiled_flex() if compiled else flex_attention
    return fn(queries, keys, values, score_mod=score_mod)
