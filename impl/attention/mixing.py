"""How a layer applies its attention probabilities to the tokens and merges the heads.

Every head averages the raw tokens under its attention map and one linear map merges the heads:
out = W [avg_1; ...; avg_H] + b. Two families of functions compute it.

The plain per-head averages (input x (B, C, *K), K the key grid; output (B, H, C, *Q), Q the query grid),
followed by `merge_heads`. They are the readable formulas and the fallbacks (per-image dropout,
half-precision inputs):

- `mix_shifts`: hard-limit heads, one key per query and axis, given as indices: a gather.
- `mix_separable`: one (H, q_a, k_a) matrix per axis (isotropic quadratic, learned row + column); the
  head's attention is their Kronecker product, applied axis by axis.
- `mix_dense`: one (H, Nq, Nk) matrix, or (B, H, Nq, Nk) when it differs per image (dropout).

The fast paths, which return the merged output (B, O, *Q) directly and never hold a
(B, heads * channels, tokens) tensor of per-head averages:

- `shifts_as_conv`: hard-limit heads whose keys are pure shifts of the query are a convolution; run it.
- `shifts_merge`: any other hard-limit heads: one gather into channels-last tokens, one projection.
- `positional_merge`: positional (batch-free) attention, separable or dense. Separable heads, head by
  head: the key-side axes are mixed first (small batched matmuls on channels-last tokens), the head's
  block of the merge projects the channels (the large GEMM; oneDNN or BLAS on CPU float32, `gemm`), and
  the query-side axis is mixed last, accumulating into the output. `PositionalMerge` does this in chunks
  of images with a hand-written backward that recomputes the per-head tensors instead of keeping them
  (keeping them was slower: docs/RESULTS.md); `positional_merge_autograd` is the same computation left to
  autograd (autocast, half precision). Heads that share their per-axis matrices (a converted convolution)
  take `ProductMerge`, which applies each distinct matrix once and also keeps the key-side mix for its
  backward. Both keep x channels-last and return their output and x's gradient as channels-last views.
  Dense probabilities shared by the batch, and every head under attention dropout
  (`dropout=p`: an independent mask per image), take `dense_merge.DenseMerge`: all heads' projections
  first, then one product per image whose depth is every head's keys (it keeps the projected values,
  (B, tokens, heads * out), for its backward).
- `content_attention` / `flex_content`: content scores plus a positional bias: `scaled_dot_product_attention`
  with the bias as a float mask (CPU, and CUDA with dropout), or FlexAttention on CUDA with the relative
  score as a `score_mod` built by `relative_score_mod`, whose score logic (`relative_score`) the CPU
  tests evaluate directly.

verify/reference.py holds the plain dense formula every one of them is checked against.
"""

from __future__ import annotations

import math
import string
from typing import Sequence

import torch
import torch.nn.functional as F

from ..dropout import keep_probability
from .dense_merge import DenseMerge, attention_keep_mask
from .gemm import images_per_chunk, onednn_gemm, project, project_backward, project_operand, transposed_matmul

# Per-head tensors of a chunk of images are kept near this size per thread, so they stay in cache and are
# re-used from the allocator's free lists instead of being faulted in afresh at every call. No cap on the
# number of chunks: at 32x32 (1.6 MB a head and image) one-image chunks took the learned layer from 1.75 to
# 1.62 x the convolution with one thread (docs/RESULTS.md).
CHUNK_BYTES = 2 << 20
# `ProductMerge` holds fewer, wider tensors (a row group's heads side by side, each re-read by the next
# pass) and sizes its chunks by the widest: with two threads the whole batch of 16 at 16x16 and four
# images at 32x32, one thread eight and two. Larger chunks mean fewer, larger GEMMs (each call converts
# its weight to oneDNN's layout); since freed memory is kept for re-use (`impl.allocator`) they no longer
# pay page faults: 1.43 and 1.55 x the convolution with two threads, against 1.57 and 1.82 with 3 MB a
# thread (docs/RESULTS.md).
PRODUCT_CHUNK_BYTES = 12 << 20


# -- the plain per-head averages -----------------------------------------------------------------------
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


def merge_heads(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y (B, H, C, *Q) -> (B, O, *Q): the merge as a 1x1 map over head-major channels."""
    y = y.flatten(1, 2)
    out = torch.einsum("oc,bc...->bo...", weight.to(y.dtype), y)
    if bias is not None:
        out = out + bias.to(out.dtype).reshape(-1, *[1] * (y.dim() - 2))
    return out


def axis_apply(p: torch.Tensor, t: torch.Tensor, axis: int, *, out: torch.Tensor | None = None,
               into: torch.Tensor | None = None) -> torch.Tensor:
    """Contract grid axis `axis` of channels-last t (b, D0, .., D_{n-1}, C) with p (Q, D_axis), or for
    axis 0 with one matrix per image, p (b, Q, D_0).

    Returns (b, D0, .., Q, .., C); with `out` (that shape, contiguous) adds into it and returns it; with
    `into` (the same) writes into it and returns it.
    A batched matmul with p broadcast (stride 0) over the leading rows: no copy of t.
    """
    dim = axis + 1
    before = math.prod(t.shape[:dim])
    after = math.prod(t.shape[dim + 1:])
    t3 = t.reshape(before, t.shape[dim], after)
    if p.dim() == 3 and onednn_gemm(t):
        if into is not None:
            out = into.zero_()
        return _per_image_apply(p, t3, out, (*t.shape[:dim], p.shape[-2], *t.shape[dim + 1:]))
    pe = p if p.dim() == 3 else p.expand(before, *p.shape)  # (b, Q, D) on axis 0: one matrix per image
    if out is not None:
        out.view(before, p.shape[-2], after).baddbmm_(pe, t3)
        return out
    # into a tensor through `out=`: without it, torch.bmm with a broadcast (stride-0) batch took 6x longer
    result = t.new_empty(*t.shape[:dim], p.shape[-2], *t.shape[dim + 1:]) if into is None else into
    torch.bmm(pe, t3, out=result.view(before, p.shape[-2], after))
    return result


def _per_image_apply(p: torch.Tensor, t3: torch.Tensor, out: torch.Tensor | None, shape) -> torch.Tensor:
    """`axis_apply` on axis 0 with one (Q, D) matrix per image, through oneDNN: image by image, p[i] @ t3[i]
    as a 1x1 convolution of t3[i] read as a channels-first (D, after) image with weight p[i]: no copy of
    t3 (MKL's batched matmul ran these 256 x 256 by 256 x 400 products at 114 GFLOP/s here, oneDNN on the
    transposed t3 at 111 with the transposing copies, on channels-first t3 at 183; one thread)."""
    result = t3.new_empty(shape) if out is None else out
    result3 = result.view(p.shape[0], p.shape[-2], -1)
    for i in range(p.shape[0]):
        image = t3[i].reshape(1, t3.shape[1], t3.shape[2], 1)                   # (1, D, after, 1)
        weight = p[i].contiguous()[:, :, None, None]                            # (Q, D, 1, 1)
        product = torch.mkldnn_convolution(image, weight, None, [0, 0], [1, 1], [1, 1], 1)
        if out is None:
            result3[i] = product.view(p.shape[-2], -1)
        else:
            result3[i] += product.view(p.shape[-2], -1)
    return result


def axis_contract(g: torch.Tensor, t: torch.Tensor, axis: int, per_image: bool = False) -> torch.Tensor:
    """sum over everything but grid axis `axis` of g[.., q, ..] t[.., k, ..]: (Q, K), the gradient of p
    for `axis_apply(p, t, axis)` with upstream g; per_image (axis 0): (b, Q, K), one per image."""
    dim = axis + 1
    before = math.prod(t.shape[:dim])
    after = math.prod(t.shape[dim + 1:])
    g3 = g.reshape(before, g.shape[dim], after)
    t3 = t.reshape(before, t.shape[dim], after)
    if per_image and onednn_gemm(g3):  # g3[i] @ t3[i]^T is a 1x1 convolution as it stands: no copies
        return torch.stack([project(g3[i:i + 1].contiguous(), t3[i].contiguous())[0] for i in range(before)])
    if per_image:
        return torch.bmm(g3, t3.transpose(1, 2))
    if before == 1:
        return g3[0] @ t3[0].t()
    if after >= before:
        return torch.bmm(g3, t3.transpose(1, 2)).sum(0)
    # few long rows: one GEMM over (before, after) per side
    return g3.transpose(0, 1).reshape(g.shape[dim], -1) @ t3.transpose(0, 1).reshape(t.shape[dim], -1).t()


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """(b, C, *S) -> (b, *S, C) contiguous."""
    return x.movedim(1, -1).contiguous()


def _chunk(batch: int, per_image: int, element_size: int, device: torch.device, budget: int) -> int:
    """Images per chunk on CPU: per-image tensors of `per_image` elements within `budget` bytes a thread
    (each core has its own L2; at least one image), in balanced chunks; the whole batch elsewhere."""
    return images_per_chunk(batch, per_image * element_size, device, budget * torch.get_num_threads())


def _fill_bias(out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Channels-last out (.., O) set to the bias (zeros without one), to accumulate into; returns it."""
    return out.zero_() if bias is None else out.copy_(bias.expand_as(out))


# -- positional attention: key-side axes, per-head projection, query-side axis -------------------------
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
        x_cl_all = _channels_last(x)                    # no copy when x is a view of channels-last tokens
        out_cl_all = x.new_empty(batch, q0, *q_rest, out_dim)
        image_elements = max(k0, q0) * max(math.prod(q_rest), math.prod(x.shape[3:])) * max(channels, out_dim)
        chunk = _chunk(batch, image_elements, x.element_size(), x.device, CHUNK_BYTES)
        for start in range(0, batch, chunk):
            stop = min(batch, start + chunk)
            x_cl = x_cl_all[start:stop]                                          # (b, K0, .., C)
            out_cl = _fill_bias(out_cl_all[start:stop], bias)                    # (b, Q0, .., O)
            u = v = None  # one buffer each for every head of the chunk: memory just written is faster to write
            for h in range(heads):
                u = _key_side(x_cl, key_probs, h, into=u)                        # (b, K0, Q1.., C)
                v = project(u, w_heads[h], out=v)                                # (b, K0, Q1.., O)
                axis_apply(query_side.matrix(start, stop, h), v, 0, out=out_cl)
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
            g_cl = _channels_last(grad[start:stop])                              # (b, Q0, .., O)
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


def product_groups(query_probs: torch.Tensor, key_probs: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """For 2-D separable heads whose query-axis matrices take Gq distinct values and key-axis matrices
    Gk distinct values, every pair once (Gq * Gk = heads: a converted convolution's heads, one per tap,
    share 3 row and 3 column matrices), the (Gq, Gk) table of the head with each pair; None otherwise."""
    if len(key_probs) != 1 or query_probs.dim() != 3 or query_probs.shape[0] < 2:
        return None
    heads = query_probs.shape[0]
    rows = torch.unique(query_probs.detach().flatten(1), dim=0, return_inverse=True)[1]
    cols = torch.unique(key_probs[0].detach().flatten(1), dim=0, return_inverse=True)[1]
    n_rows, n_cols = int(rows.max()) + 1, int(cols.max()) + 1
    if n_rows * n_cols != heads:
        return None
    table = torch.full((n_rows, n_cols), -1, dtype=torch.long)
    table[rows.cpu(), cols.cpu()] = torch.arange(heads)
    if not bool((table >= 0).all()):
        return None
    # The groups in the heads' order (any order computes the same): a converted convolution's table is
    # then 0 .. heads - 1 row by row, and each row group's merge blocks are a slice of the weight.
    table = table[:, table[0].argsort()]
    return table[table[:, 0].argsort()]


def _in_order(table: torch.Tensor) -> bool:
    """Whether `table` lists the heads 0 .. heads - 1 row by row (each row group's heads consecutive)."""
    return torch.equal(table.flatten(), torch.arange(table.numel(), device=table.device))


def _distinct_matrices(query_probs: torch.Tensor, key_probs: torch.Tensor, table: torch.Tensor):
    """`ProductMerge`'s distinct matrices: the query-axis ones R_r (Gq, Q0, K0), and the key-axis ones C_k
    stacked row by row, (Q1 * Gk, K1) with row (q1, k) = C_k[q1] (so that one product gives U's groups
    side by side in the channels)."""
    n_cols, (q1, k1) = table.shape[1], key_probs.shape[1:]
    return query_probs[table[:, 0]], key_probs[table[0]].transpose(0, 1).reshape(q1 * n_cols, k1)


def _row_blocks(weight: torch.Tensor, table: torch.Tensor, channels: int) -> list[torch.Tensor]:
    """Each row group's merge blocks side by side, (O, Gk * C): [W_r1 | .. | W_rGk] for row group r."""
    out_dim, (n_rows, n_cols) = weight.shape[0], table.shape
    if _in_order(table):  # slices of the weight: no copies
        return list(weight.view(out_dim, n_rows, n_cols * channels).unbind(1))
    blocks = weight.view(out_dim, -1, channels)
    return [blocks[:, table[r]].reshape(out_dim, n_cols * channels) for r in range(n_rows)]


class ProductMerge(torch.autograd.Function):
    """`PositionalMerge` for heads that share their per-axis matrices (`product_groups`): each distinct
    matrix is applied once instead of once per head.

    With R_r (r < Gq) the distinct query-axis (axis 0) matrices, C_k (k < Gk) the distinct key-axis ones
    and W_rk the merge block of the head with the pair (r, k):
        out = sum_r R_r (sum_k C_k x W_rk^T) + b
    The Gk key-side products are one batched matmul (their rows stacked, so that the results sit side by
    side in the channels: U = [C_1 x | .. | C_Gk x]); each r is then one projection of U with
    [W_r1 | .. | W_rGk] (a GEMM with Gk times the channels) and one query-side mix. The backward gives every
    head its own gradients (of its merge block and of both its matrices) from x and U channels-last,
    both kept by the forward (U, Gk times x's size, rather than rebuilt). The key-axis matrices' gradients
    contract t_r = g W_r with R_r x (x's size) rather than with R_r^T t_r (U's), and x's gradient
    sum_r R_r^T C^T t_r (C^T = [C_1^T .. C_Gk^T], the column pass of U's gradient) takes each t_r's column
    pass first, down to x's size, so that only x-sized tensors are accumulated: no U-sized gradient.
    Arguments as `PositionalMerge` with one key-axis matrix, plus `table` from `product_groups` and
    `recording` (whether autograd records the call: `torch.is_grad_enabled()` outside); returns a
    (B, O, Q0, Q1) view of a channels-last (B, Q0, Q1, O) tensor (the transformer's tokens, no copy), and
    x's gradient channels-last likewise.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, query_probs, key_probs, table, recording):
        batch, channels, k0, k1 = x.shape
        n_rows, n_cols = table.shape
        q0, q1 = query_probs.shape[1], key_probs.shape[1]
        out_dim = weight.shape[0]
        rows, stacked = _distinct_matrices(query_probs, key_probs, table)
        w_rows = [project_operand(w) for w in _row_blocks(weight, table, channels)]
        x_cl = _channels_last(x)                        # no copy when x is a view of channels-last tokens
        out_cl = x.new_empty(batch, q0, q1, out_dim)
        # U = [C_1 x | .. | C_Gk x], kept for the backward (Gk times x's size) rather than rebuilt there, when
        # autograd records the call (`recording`: the caller's grad mode; inside forward it is always off,
        # and needs_input_grad says True for parameters under no_grad too), else chunk by chunk
        keep = recording and any(ctx.needs_input_grad)
        u = x.new_empty(batch, k0, q1 * n_cols, channels) if keep else None
        image = max(k0, q0) * q1 * n_cols * max(channels, out_dim)
        chunk = _chunk(batch, image, x.element_size(), x.device, PRODUCT_CHUNK_BYTES)
        for start in range(0, batch, chunk):
            stop = min(batch, start + chunk)
            u_chunk = axis_apply(stacked, x_cl[start:stop], 1, into=None if u is None else u[start:stop])
            u_chunk = u_chunk.view(stop - start, k0, q1, n_cols * channels)
            out_chunk = _fill_bias(out_cl[start:stop], bias)
            projected = None                                                     # one buffer for every r
            for r in range(n_rows):
                projected = project(u_chunk, w_rows[r], out=projected)               # (b, K0, Q1, O)
                axis_apply(rows[r], projected, 0, out=out_chunk)
        if keep:
            ctx.save_for_backward(x_cl, u, weight, query_probs, key_probs, table)
        ctx.has_bias = bias is not None
        ctx.chunk = chunk
        return out_cl.movedim(-1, 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x_cl, u_all, weight, query_probs, key_probs, table = ctx.saved_tensors
        need_x, need_w, need_b, need_q, need_k, _, _ = ctx.needs_input_grad
        batch, k0, k1, channels = x_cl.shape
        n_rows, n_cols = table.shape
        q0, q1 = query_probs.shape[1], key_probs.shape[1]
        out_dim = weight.shape[0]
        rows, stacked = _distinct_matrices(query_probs, key_probs, table)
        rows_t = rows.transpose(1, 2).contiguous()                               # (Gq, K0, Q0)
        stacked_t = stacked.t().contiguous()                                     # (K1, Q1 * Gk)
        grad_x = torch.empty_like(x_cl) if need_x else None                      # channels-last
        in_order = _in_order(table)
        # the merge's gradient per row group, grad_w (Gq, O, Gk * C): with the table in order a view of the
        # weight's own layout (O, Gq, Gk * C), so that the products accumulate where they belong
        grad_w = None
        if need_w:
            grad_w = x_cl.new_zeros(out_dim, n_rows, n_cols * channels).transpose(0, 1) if in_order else \
                x_cl.new_zeros(n_rows, out_dim, n_cols * channels)
        if not (need_q or need_k):  # fixed encodings: every row group at once (`_fixed_probs_backward`)
            _fixed_probs_backward(grad, u_all, rows_t, stacked_t, _row_blocks(weight, table, channels),
                                  ctx.chunk, grad_x, grad_w)
        else:
            w_rows_t = [project_operand(w.t()) for w in _row_blocks(weight, table, channels)]  # t = g W_r
            # per row group, summed over images (and for the rows over Q1) only at the end: (Q1 * Gk, Q0, K0)
            # and (Q1 * Gk, K1), the row (q1, k) belonging to head table[r, k]
            acc_q = [x_cl.new_zeros(q1 * n_cols, q0, k0) for _ in range(n_rows)] if need_q else None
            acc_k = [x_cl.new_zeros(q1 * n_cols, k1) for _ in range(n_rows)] if need_k else None
            for start in range(0, batch, ctx.chunk):
                stop = min(batch, start + ctx.chunk)
                b = stop - start
                g_cl = _channels_last(grad[start:stop])                              # (b, Q0, Q1, O)
                x_chunk = x_cl[start:stop]                                           # (b, K0, K1, C)
                u = u_all[start:stop].view(b, k0, q1, n_cols * channels)
                gm = t = xr = y = None  # the per-group tensors: one buffer each, re-used by every r
                for r in range(n_rows):
                    if need_w:
                        gm = axis_apply(rows_t[r], g_cl, 0, into=gm)                 # R_r^T g
                        transposed_matmul(gm, u, add_to=grad_w[r])
                    t = project(g_cl, w_rows_t[r], out=t)                            # (b, Q0, Q1, Gk * C)
                    if need_q:  # per head: sum over images, Q1 and channels of t_h[q0] u_h[k0]
                        # image by image, (Q1, Gk) as the batch of strided (Q0, C) x (C, K0) products: no copies
                        t4 = t.reshape(b, q0, q1 * n_cols, channels).transpose(1, 2)  # (a view)
                        u4 = u.view(b, k0, q1 * n_cols, channels).transpose(1, 2)
                        for i in range(b):
                            acc_q[r].baddbmm_(t4[i], u4[i].transpose(1, 2))
                    if need_k:  # per head: sum over images, Q0 and channels of t_h[q1] (R_r x)[k1]
                        xr = axis_apply(rows[r], x_chunk, 0, into=xr)
                        mixed = torch.bmm(t.reshape(b * q0, q1 * n_cols, channels),
                                          xr.view(b * q0, k1, channels).transpose(1, 2))
                        acc_k[r] += mixed.sum(0)
                    if need_x:  # x's gradient, sum_r R_r^T (C^T t_r): the column pass first, to x's size
                        y = axis_apply(stacked_t, t.reshape(b, q0, q1 * n_cols, channels), 1, into=y)
                        if r == 0:
                            axis_apply(rows_t[r], y, 0, into=grad_x[start:stop])
                        else:
                            axis_apply(rows_t[r], y, 0, out=grad_x[start:stop])
        grad_weight = None
        if need_w and in_order:
            grad_weight = grad_w.transpose(0, 1).view_as(weight)
        elif need_w:
            grad_weight = torch.zeros_like(weight).view(out_dim, -1, channels)
            for r in range(n_rows):
                grad_weight[:, table[r]] = grad_w[r].view(out_dim, n_cols, channels)
            grad_weight = grad_weight.view_as(weight)
        grad_q = grad_k = None
        if need_q:
            grad_q = torch.empty_like(query_probs)
            for r in range(n_rows):
                grad_q[table[r]] = acc_q[r].view(q1, n_cols, q0, k0).sum(0)
        if need_k:
            grad_k = torch.empty_like(key_probs)
            for r in range(n_rows):
                grad_k[table[r]] = acc_k[r].view(q1, n_cols, k1).transpose(0, 1)
        grad_bias = grad.sum((0, 2, 3)) if need_b and ctx.has_bias else None
        grad_x = None if grad_x is None else grad_x.movedim(-1, 1)
        return grad_x, grad_weight, grad_bias, grad_q, grad_k, None, None


def _fixed_probs_backward(grad, u_all, rows_t, stacked_t, w_rows, chunk, grad_x, grad_w) -> None:
    """`ProductMerge`'s backward when the probabilities need no gradient (fixed encodings): x's gradient
    into grad_x (channels-last) and the merge blocks' into grad_w (Gq, O, Gk * C), or None for those not
    needed; u_all is the forward's U (B, K0, Q1 * Gk, C).

    Without the per-head gradients of the matrices, the row groups need no per-group tensors: with
    gm = [R_1^T g | .. | R_Gq^T g] (every group's row-side mix of g, side by side in the channels),
    W's gradient is gm^T u in one GEMM and u's gradient gm [W_1; ..; W_Gq] in another (the FLOPs of the
    per-group products they replace, without their 3 x 1,200-wide row-side passes and sums)."""
    batch, k0, _, channels = u_all.shape
    n_rows, (out_dim, group_width) = rows_t.shape[0], w_rows[0].shape
    q1 = u_all.shape[2] * channels // group_width
    w_all = torch.cat(w_rows, 0)                                                 # (Gq * O, Gk * C)
    rows_all = rows_t.reshape(-1, rows_t.shape[-1])                              # (Gq * K0, Q0)
    for start in range(0, batch, chunk):
        stop = min(batch, start + chunk)
        b = stop - start
        g_cl = _channels_last(grad[start:stop])                                  # (b, Q0, Q1, O)
        mixed = axis_apply(rows_all, g_cl, 0)                                    # (b, Gq * K0, Q1, O)
        gm = mixed.view(b, n_rows, k0, q1, out_dim).permute(0, 2, 3, 1, 4).reshape(b, k0, q1, -1)
        if grad_w is not None:
            grad_w += transposed_matmul(gm, u_all[start:stop].view(b, k0, q1, group_width)).reshape(grad_w.shape)
        if grad_x is not None:
            grad_u = project(gm, w_all.t())                                      # (b, K0, Q1, Gk * C)
            axis_apply(stacked_t, grad_u.reshape(b, k0, -1, channels), 1, into=grad_x[start:stop])


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


# -- hard-limit heads -----------------------------------------------------------------------------------
def pure_shifts(axis_indices: Sequence[torch.Tensor], query_positions: Sequence[Sequence[int]]) -> list[list[int]] | None:
    """Per axis, the key - query shift of every head when each head reads key q + shift for every query q
    (no clamping at the border); None otherwise."""
    shifts = []
    for idx, positions in zip(axis_indices, query_positions):
        pos = torch.as_tensor(list(positions), device=idx.device)
        delta = idx - pos[None, :]
        if not bool((delta == delta[:, :1]).all()):
            return None
        shifts.append(delta[:, 0].tolist())
    return shifts


def shifts_as_conv(x: torch.Tensor, shifts: Sequence[Sequence[int]], margins_before: Sequence[int],
                   strides: Sequence[int], query_shape: Sequence[int], weight: torch.Tensor,
                   bias: torch.Tensor | None, max_taps: int,
                   zero_pads: Sequence[tuple[int, int]] | None = None) -> torch.Tensor | None:
    """Hard heads that read key q + s_h for every query q: out = sum_h W_h x[q + s_h] is a convolution
    over the box of shifts (dilated by their common step), with W_h at tap s_h.

    x is the padded input (B, C, *K), or with `zero_pads` the unpadded one, to be zero-padded by
    (before, after) per axis (then the convolution pads, and only as far as its window reaches). Returns
    None when the box has more than `max_taps` taps (then the gather is cheaper)."""
    n = len(shifts)
    heads = len(shifts[0])
    channels = x.shape[1]
    low = [min(s) for s in shifts]
    step = [math.gcd(*[v - lo for v in s]) or 1 for s, lo in zip(shifts, low)]
    kernel = [(max(s) - lo) // d + 1 for s, lo, d in zip(shifts, low, step)]
    if math.prod(kernel) > max_taps:
        return None
    taps = torch.zeros(heads, dtype=torch.long)
    for axis in range(n):
        taps = taps * kernel[axis] + torch.tensor([(v - low[axis]) // step[axis] for v in shifts[axis]])
    blocks = weight.view(weight.shape[0], heads, channels).transpose(1, 2)            # (O, C, H)
    kernel_w = blocks.new_zeros(weight.shape[0], channels, math.prod(kernel))
    kernel_w = kernel_w.index_add(2, taps.to(weight.device), blocks).view(weight.shape[0], channels, *kernel)
    window, pads = [], []
    for axis in range(n):
        begin = margins_before[axis] + low[axis]             # padded coordinates
        length = (query_shape[axis] - 1) * strides[axis] + step[axis] * (kernel[axis] - 1) + 1
        if zero_pads is None:
            window.append(slice(begin, begin + length))
            pads.append((0, 0))
        else:                                                # unpadded coordinates, zeros outside
            size = x.shape[2 + axis]
            start, stop = begin - zero_pads[axis][0], begin - zero_pads[axis][0] + length
            window.append(slice(max(start, 0), min(stop, size)))
            pads.append((max(0, -start), max(0, stop - size)))
    xs = x[(slice(None), slice(None), *window)]
    if all(b == a for b, a in pads):
        padding = tuple(b for b, _ in pads)
    else:
        xs = F.pad(xs, [p for pair in reversed(pads) for p in pair])
        padding = 0
    conv = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    return conv(xs, kernel_w.to(x.dtype), None if bias is None else bias.to(x.dtype),
                stride=tuple(strides), padding=padding, dilation=tuple(step))


def shifts_merge(x: torch.Tensor, axis_indices: Sequence[torch.Tensor], weight: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    """Any hard heads: gather every head's key into channels-last (B, *Q, H, C), then one projection."""
    n = len(axis_indices)
    heads = axis_indices[0].shape[0]
    x_cl = x.movedim(1, -1)                                                  # (B, *K, C)
    index = []
    for axis, idx in enumerate(axis_indices):
        shape = [1] * n + [heads]
        shape[axis] = idx.shape[1]
        index.append(idx.t().reshape(shape))
    gathered = x_cl[(slice(None), *index)]                                   # (B, *Q, H, C)
    tokens = gathered.reshape(*gathered.shape[:-2], -1)
    out = project(tokens, weight.to(x.dtype))
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out.movedim(-1, 1)


# -- content scores -------------------------------------------------------------------------------------
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


def mix_content(queries: torch.Tensor, keys: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None,
                query_shape: Sequence[int], dropout: float) -> torch.Tensor:
    """`content_attention` in the plain functions' layout: (B, H, C, *Q)."""
    y = content_attention(queries, keys, x, bias, dropout).transpose(2, 3)
    return y.reshape(*y.shape[:3], *query_shape)


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
