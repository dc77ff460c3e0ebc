"""Positional attention (the probabilities do not depend on the tokens) applied and merged in one pass.

Every head averages the raw tokens under its attention map and one linear map merges the heads:
out = W [avg_1; ...; avg_H] + b. `positional_merge` computes it without ever holding the
(B, heads * channels, tokens) tensor of per-head averages, and picks how:

- separable heads (isotropic quadratic, learned row + column: one matrix per grid axis, the head's
  attention their Kronecker product), head by head: `PositionalMerge`. The key-side axes are mixed first
  (`axis_passes`: small batched matmuls on channels-last tokens), the head's block of the merge projects
  the channels (the large GEMM; oneDNN or BLAS on CPU float32, `gemm`), and the query-side axis is mixed
  last, accumulating into the output (or, where the GEMM adds into the output itself, before the
  projection). It runs in chunks of images with a hand-written backward that
  recomputes the per-head tensors instead of keeping them (keeping them was slower: docs/RESULTS.md);
- heads that share their per-axis matrices (a converted convolution): `product_merge.ProductMerge`, which
  applies each distinct matrix once;
- dense probabilities shared by the batch, and every head under attention dropout (an independent mask
  per image): `dense_merge.DenseMerge`;
- autocast, half precision and torch.compile: `positional_merge_autograd`, the same computation left to
  autograd.

The fused paths keep x channels-last and return their output and x's gradient as channels-last views.
verify/reference.py holds the plain formulas (`mix_separable`, `mix_dense`, `merge_heads`) and the dense
attention every path is checked against.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..dropout import keep_probability
from .axis_passes import axis_apply, axis_contract, channels_last, chunk_images, fill_bias
from .dense_merge import DenseMerge, attention_keep_mask
from .gemm import onednn_gemm, project, project_add, project_backward
from .product_merge import ProductMerge, product_groups


# Per-head tensors of a chunk of images are kept near this size per thread, so they stay in cache and are
# re-used from the allocator's free lists instead of being faulted in afresh at every call. No cap on the
# number of chunks: at 32x32 (1.6 MB a head and image) one-image chunks took the learned layer from 1.75 to
# 1.62 x the convolution with one thread (docs/RESULTS.md).
CHUNK_BYTES = 2 << 20


def _key_side(x_cl: torch.Tensor, key_probs: Sequence[torch.Tensor], h: int, stages: list | None = None,
              into: torch.Tensor | None = None):
    """Mix grid axes n-1 .. 1 of channels-last x_cl with head h's matrices; axis 0 stays keys. `into`: a
    buffer of the result's shape (the previous head's) that the last mix is written into."""
    t = x_cl
    for axis in range(len(key_probs), 0, -1):
        if stages is not None:
            stages.append(t)
        t = axis_apply(key_probs[axis - 1][h], t, axis, into=into if axis == 1 else None)
    return t


class _QuerySide:
    """The query-axis (axis 0) matrices of `PositionalMerge`: shared (H, Q0, K0), or one per image
    (B, H, Q0, K0)."""

    def __init__(self, probs: torch.Tensor):
        self.probs = probs
        self.per_image = probs.dim() == 4

    def matrix(self, start: int, stop: int, h: int) -> torch.Tensor:
        """(b, Q0, K0) for images start:stop, or (Q0, K0) when shared."""
        return self.probs[start:stop, h] if self.per_image else self.probs[h]

    def add_image_grads(self, grad_q: torch.Tensor, start: int, stop: int, h: int, grads: torch.Tensor) -> None:
        """Record the gradients (b, Q0, K0) of images start:stop's matrices for head h."""
        grad_q[start:stop, h] = grads


class PositionalMerge(torch.autograd.Function):
    """out = sum_h P0_h x_0 (W_h (P_{n-1,h} x_{n-1} ... P_{1,h} x_1 x)) + b, chunked, recomputing in backward.

    x (B, C, K0, .., K_{n-1}); query_probs (H, Q0, K0), or (B, H, Q0, K0) with one matrix per image;
    key_probs[a - 1] (H, Q_a, K_a) for a = 1..n-1; weight (O, H * C); bias (O,) or None. Returns a
    (B, O, Q0, .., Q_{n-1}) view of a channels-last (B, Q0, .., O) tensor (the transformer's tokens, no copy),
    and x's gradient channels-last likewise. Saves its inputs, x channels-last (a view when it is one).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, query_probs, *key_probs):
        batch, channels = x.shape[:2]
        heads, q0, k0 = query_probs.shape[-3:]
        out_dim = weight.shape[0]
        q_rest = [p.shape[1] for p in key_probs]
        query_side = _QuerySide(query_probs)
        w_heads = weight.view(out_dim, heads, channels).transpose(0, 1).contiguous()  # (H, O, C)
        x_cl_all = channels_last(x)                    # no copy when x is a view of channels-last tokens
        out_cl_all = x.new_empty(batch, q0, *q_rest, out_dim)
        image_elements = max(k0, q0) * max(math.prod(q_rest), math.prod(x.shape[3:])) * max(channels, out_dim)
        chunk = chunk_images(batch, image_elements, x.element_size(), x.device, CHUNK_BYTES)
        # Where the GEMM can add its product into the output (BLAS), the query axis is mixed before the
        # projection, on the key side's output, which is still in cache, rather than after it, on the GEMM's
        # output, which the GEMM has just pushed out of cache: the forward at 32x32 5-10% faster
        # (docs/RESULTS.md). oneDNN returns a product of its own, so there the query-axis pass adds into
        # the output; so it does where C > O, since the pass then runs on the narrower tensor.
        query_first = not onednn_gemm(x) and channels <= out_dim
        for start in range(0, batch, chunk):
            stop = min(batch, start + chunk)
            x_cl = x_cl_all[start:stop]                                          # (b, K0, .., C)
            out_cl = fill_bias(out_cl_all[start:stop], bias)                    # (b, Q0, .., O)
            u = v = None  # one buffer each for every head of the chunk: memory just written is faster to write
            for h in range(heads):
                u = _key_side(x_cl, key_probs, h, into=u)                        # (b, K0, Q1.., C)
                p0 = query_side.matrix(start, stop, h)
                if query_first:
                    v = axis_apply(p0, u, 0, into=v)                             # (b, Q0, Q1.., C)
                    project_add(v, w_heads[h], out_cl)
                else:
                    v = project(u, w_heads[h], out=v)                            # (b, K0, Q1.., O)
                    axis_apply(p0, v, 0, out=out_cl)
        ctx.save_for_backward(x_cl_all, weight, query_probs, *key_probs)
        ctx.has_bias = bias is not None
        ctx.chunk = chunk
        return out_cl_all.movedim(-1, 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x_cl_all, weight, query_probs, *key_probs = ctx.saved_tensors
        need_x, need_w, need_b, need_q, *need_k = ctx.needs_input_grad
        batch, channels = x_cl_all.shape[0], x_cl_all.shape[-1]
        query_side = _QuerySide(query_probs)
        per_image = query_side.per_image
        heads = query_probs.shape[-3]
        out_dim = weight.shape[0]
        n_key = len(key_probs)
        w_heads = weight.view(out_dim, heads, channels).transpose(0, 1)           # (H, O, C)
        w_t = None if need_w else w_heads.transpose(1, 2).contiguous()           # (H, C, O)
        q_t = None if per_image else query_probs.transpose(-1, -2).contiguous()  # (H, K0, Q0)
        k_t = [p.transpose(1, 2).contiguous() for p in key_probs]
        grad_x = torch.empty_like(x_cl_all) if need_x else None                  # channels-last
        grad_w = x_cl_all.new_zeros(heads, out_dim, channels) if need_w else None
        grad_q = None  # one matrix per image: every one written below; shared ones: summed over images
        if need_q:
            grad_q = torch.empty_like(query_probs) if query_probs.dim() == 4 else torch.zeros_like(query_probs)
        grad_k = [torch.zeros_like(p) if need else None for p, need in zip(key_probs, need_k)]
        need_u_grad = need_x or any(need_k)
        for start in range(0, batch, ctx.chunk):
            stop = min(batch, start + ctx.chunk)
            g_cl = channels_last(grad[start:stop])                              # (b, Q0, .., O)
            x_cl = x_cl_all[start:stop]
            gx_cl = grad_x[start:stop].zero_() if need_x else None
            u = mixed = t = g_rows = None  # one buffer each for every head of the chunk, as in the forward
            for h in range(heads):
                p0 = query_side.matrix(start, stop, h)
                p0_t = p0.transpose(-1, -2) if per_image else q_t[h]
                stages: list = []
                u = _key_side(x_cl, key_probs, h, stages, into=u)                # (b, K0, Q1.., C)
                need_t = need_q or need_u_grad
                if need_w:  # t = g W_h, the projection's input gradient, from the same call
                    mixed = axis_apply(p0, u, 0, into=mixed)
                    t, _ = project_backward(g_cl, mixed, w_heads[h], need_input=need_t, into_input=t,
                                            add_weight_to=grad_w[h])
                elif need_t:
                    t = project(g_cl, w_t[h], out=t)                             # (b, Q0, Q1.., C)
                if not need_t:
                    continue
                if need_q:
                    if per_image:
                        query_side.add_image_grads(grad_q, start, stop, h, axis_contract(t, u, 0, per_image=True))
                    else:
                        grad_q[h] += axis_contract(t, u, 0)
                if not need_u_grad:
                    continue
                if n_key == 0:
                    if need_x:
                        axis_apply(p0_t, t, 0, out=gx_cl)
                    continue
                g = g_rows = axis_apply(p0_t, t, 0, into=g_rows)                 # (b, K0, Q1.., C)
                for axis in range(1, n_key + 1):  # undo the key side, last applied first
                    source = stages[n_key - axis]
                    if need_k[axis - 1]:
                        grad_k[axis - 1][h] += axis_contract(g, source, axis)
                    if axis < n_key:
                        g = axis_apply(k_t[axis - 1][h], g, axis)
                    elif need_x:
                        axis_apply(k_t[axis - 1][h], g, axis, out=gx_cl)
        grad_weight = grad_w.transpose(0, 1).reshape(out_dim, heads * channels) if need_w else None
        grad_bias = grad.sum([d for d in range(grad.dim()) if d != 1]) if need_b and ctx.has_bias else None
        return (None if grad_x is None else grad_x.movedim(-1, 1), grad_weight, grad_bias, grad_q, *grad_k)


def positional_merge_autograd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                              query_probs: torch.Tensor, key_probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The computation of `PositionalMerge`, whole batch, left to autograd (CUDA, autocast, any dtype)."""
    batch, channels = x.shape[:2]
    heads = query_probs.shape[-3]
    out_dim = weight.shape[0]
    w_heads = weight.view(out_dim, heads, channels).transpose(0, 1)
    x_cl = x.movedim(1, -1)
    out = None
    for h in range(heads):
        u = x_cl
        for axis in range(len(key_probs), 0, -1):
            u = torch.movedim(torch.tensordot(key_probs[axis - 1][h].to(u.dtype), u, dims=([1], [axis + 1])), 0, axis + 1)
        v = u @ w_heads[h].t().to(u.dtype)                                      # (B, K0, Q1.., O)
        if query_probs.dim() == 4:  # one matrix per image: (B, Q0, K0) @ (B, K0, rest)
            p0 = query_probs[:, h].to(v.dtype)
            y = torch.bmm(p0, v.reshape(v.shape[0], v.shape[1], -1)).view(v.shape[0], p0.shape[1], *v.shape[2:])
        else:
            y = torch.movedim(torch.tensordot(query_probs[h].to(v.dtype), v, dims=([1], [1])), 0, 1)
        out = y if out is None else out + y
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out.movedim(-1, 1)


def positional_merge(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     query_probs: torch.Tensor, key_probs: Sequence[torch.Tensor] = (), *,
                     fused: bool | None = None, sharing: bool = True, dropout: float = 0.0) -> torch.Tensor:
    """Positional attention and merge. x (B, C, K0, .., K_{n-1}); query_probs (H, Q0, K0) mixes grid axis 0
    (or (B, H, Q0, K0), one matrix per image); key_probs[a - 1] (H, Q_a, K_a) mixes axis a (separable
    heads; empty for a dense (H, Nq, Nk) matrix on a flattened grid). Returns (B, O, Q0, .., Q_{n-1}).

    fused: True for the hand-written paths (chunked on CPU), False for autograd; None picks them for
    float32/float64 outside autocast and outside torch.compile (whose compiler fuses the autograd path's
    plain ops itself, where the hand-written ones' chunk loops and shared-matrix search would break its
    graph). Fused, dense probabilities shared by the batch take `DenseMerge` (all
    heads' projections first, then one product per image over every head's keys); others `PositionalMerge`
    (chunked, head by head), or, with `sharing`, `ProductMerge` when heads' per-axis matrices repeat
    (`product_groups`: it applies each distinct matrix once).
    dropout: attention dropout of dense shared probabilities, an independent mask per image
    (`dense_merge.attention_keep_mask`, kept elements scaled by 1 / `impl.dropout.keep_probability`);
    fused on CPU, the dropped-out matrices are built image by image and the (B, H, Nq, Nk) float
    probabilities are never held (elsewhere chunk by chunk, the whole batch one chunk on CUDA).
    """
    if fused is None:
        fused = x.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled(x.device.type) \
            and not torch.compiler.is_compiling()
    dense_shared = not key_probs and query_probs.dim() == 3
    keep, scale = None, 1.0
    if dropout:
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
        if not dense_shared:
            raise ValueError("dropout needs shared dense probabilities: query_probs (H, Nq, Nk) and no key_probs")
        keep = attention_keep_mask(x.shape[0], query_probs.shape, dropout, x.device)
        kept = keep_probability(dropout)
        scale = 1.0 / kept if kept else 0.0  # every element dropped when 0: the scale multiplies only zeros
        if not fused:
            query_probs = torch.where(keep, query_probs * scale, 0)
    if not fused:
        return positional_merge_autograd(x, weight, bias, query_probs, key_probs)
    dtype = x.dtype
    probs = [query_probs.to(dtype), *(p.to(dtype) for p in key_probs)]
    bias = None if bias is None else bias.to(dtype)
    if dense_shared:
        mask = None if keep is None else keep.permute(0, 3, 1, 2)  # its memory: (B, K, H, Q)
        return DenseMerge.apply(x, weight.to(dtype), bias, mask, scale, probs[0])
    table = product_groups(probs[0], probs[1:]) if sharing else None
    if table is not None:
        return ProductMerge.apply(x, weight.to(dtype), bias, *probs, table.to(x.device), torch.is_grad_enabled())
    return PositionalMerge.apply(x, weight.to(dtype), bias, *probs)
