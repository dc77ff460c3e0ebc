"""Positional heads that share their per-axis matrices, merged applying each distinct matrix once.

A converted k x k convolution has k^2 heads but only k distinct row matrices and k distinct column
matrices (one per kernel offset along each axis): `product_groups` finds that structure, and
`ProductMerge` computes the merge of `positional_merge.PositionalMerge` with one key-side product for
all column matrices and one projection and query-side mix per row matrix.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .axis_passes import axis_apply, channels_last, chunk_images, fill_bias
from .gemm import project, project_operand, transposed_matmul


# `ProductMerge` holds fewer, wider tensors (a row group's heads side by side, each re-read by the next
# pass) and sizes its chunks by the widest: with two threads the whole batch of 16 at 16x16 and four
# images at 32x32, one thread eight and two. Larger chunks mean fewer, larger GEMMs (each call converts
# its weight to oneDNN's layout); since freed memory is kept for re-use (`impl.allocator`) they no longer
# pay page faults: 1.43 and 1.55 x the convolution with two threads, against 1.57 and 1.82 with 3 MB a
# thread (docs/RESULTS.md).
PRODUCT_CHUNK_BYTES = 12 << 20


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
        x_cl = channels_last(x)                        # no copy when x is a view of channels-last tokens
        out_cl = x.new_empty(batch, q0, q1, out_dim)
        # U = [C_1 x | .. | C_Gk x], kept for the backward (Gk times x's size) rather than rebuilt there, when
        # autograd records the call (`recording`: the caller's grad mode; inside forward it is always off,
        # and needs_input_grad says True for parameters under no_grad too), else chunk by chunk
        keep = recording and any(ctx.needs_input_grad)
        u = x.new_empty(batch, k0, q1 * n_cols, channels) if keep else None
        image = max(k0, q0) * q1 * n_cols * max(channels, out_dim)
        chunk = chunk_images(batch, image, x.element_size(), x.device, PRODUCT_CHUNK_BYTES)
        for start in range(0, batch, chunk):
            stop = min(batch, start + chunk)
            u_chunk = axis_apply(stacked, x_cl[start:stop], 1, into=None if u is None else u[start:stop])
            u_chunk = u_chunk.view(stop - start, k0, q1, n_cols * channels)
            out_chunk = fill_bias(out_cl[start:stop], bias)
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
                g_cl = channels_last(grad[start:stop])                              # (b, Q0, Q1, O)
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
        g_cl = channels_last(grad[start:stop])                                  # (b, Q0, Q1, O)
        mixed = axis_apply(rows_all, g_cl, 0)                                    # (b, Gq * K0, Q1, O)
        gm = mixed.view(b, n_rows, k0, q1, out_dim).permute(0, 2, 3, 1, 4).reshape(b, k0, q1, -1)
        if grad_w is not None:
            grad_w += transposed_matmul(gm, u_all[start:stop].view(b, k0, q1, group_width)).reshape(grad_w.shape)
        if grad_x is not None:
            grad_u = project(gm, w_all.t())                                      # (b, K0, Q1, Gk * C)
            axis_apply(stacked_t, grad_u.reshape(b, k0, -1, channels), 1, into=grad_x[start:stop])
