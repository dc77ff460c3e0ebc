"""Dense positional attention shared by the batch, with or without attention dropout, and the merge, fused.

For heads with shared probabilities P (H, Q, K) over a flattened grid (the generalized encoding, and every
positional head under attention dropout, whose independent mask per image breaks the separable
structure):

    out_i = sum_h D_ih x_i W_h^T + b,    D_ih = P_h, or where(keep[i, h], P_h / q, 0) under dropout

with x_i (K, C) image i's tokens, W_h (O, C) head h's block of the merge and q the mask's exact keep
probability (`impl.dropout.keep_probability`). `DenseMerge` computes it as

    V = x W_all^T                     one GEMM over the whole batch, (B, K, H * O)
    out_i = E_i^T V_i                 one product per image, (K * H, Q) by (K * H, O), over the rows

V_i, image i's projected values read as (K * H, O), has row (k, h) = x_ik W_h^T; E_i (K * H, Q) holds all
heads' transposed matrices in the same (k, h) row order (E_i[(k, h), q] = D_ih[q, k]), so the sum over
heads is the product's depth (2,304 for 9 heads over 256 keys) and every product is large enough to run
at the GEMM rate. E_i rather than D_i because both large operands are then rows (channels-last) for
oneDNN in the forward and in the backward's two products, V_i g_i^T and E_i g_i: none is converted to
oneDNN's blocked layout and back (`gemm` module docstring). The attention mask is drawn in the same
(B, K, H, Q) order, so E_i is one product of contiguous tensors. The backward rebuilds E_i from P and the
mask, takes the gradients of V_i and E_i per image, and x's and the merge's gradients from one call per
chunk of images; V is saved instead of recomputed.

Without dropout every image has the same matrix E = P^T: the forward is one call over the batch
(`gemm.matmul`, D = E^T by every V_i: 5% faster than image by image, though oneDNN converts the values
to its blocked layout and back); the backward runs image by image as under dropout (as fast as one call
over each chunk). On CPU the products run image by image, through oneDNN or BLAS (`gemm`'s backend for
the machine), elsewhere (CUDA, and while torch.compile traces) as batched matmuls over a chunk, whose
dropped-out matrices (chunk, K * H, Q) are then held (the whole batch off the CPU). These are the same
sums; verify/ checks each against the plain formula.

Measured against the per-head path this replaces (`positional_merge.PositionalMerge`: a projection and a
256 x 256 by 256 x 400 product per head and image, recomputed for the weight gradient), docs/RESULTS.md.
"""

from __future__ import annotations

import torch

from ..dropout import as_factor, keep_mask
from .gemm import (image_loops, images_per_chunk, matmul, project, project_backward, transposed_matmul,
                   transposed_matmul_backward)

# Images per chunk of the backward: its GEMMs over a chunk's tokens (the merge's weight gradient and x's
# gradient) run at 300-350 GFLOP/s over one image of 256 tokens (9 heads x 400 outputs), 416 over eight
# and 438 over 25; the chunk's value gradient (tokens x heads x outputs) is kept within this size (25 such
# images: sa_quadratic's batch-100 step takes 0.98 of the time it takes with 32 MB, and 0.98 of the time
# with the whole batch at once, docs/RESULTS.md).
CHUNK_BYTES = 96 << 20


def attention_keep_mask(batch: int, probs_shape, p: float, device: torch.device | str = "cpu",
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """The attention-dropout mask of `positional_merge.positional_merge`: keep[b, h, q, k] (B, H, Q, K) bool, each
    element kept with probability `keep_probability(p)`, independently; stored (B, K, H, Q), the layout
    `DenseMerge` reads (a permuted view)."""
    heads, queries, keys = probs_shape
    return keep_mask((batch, keys, heads, queries), p, device, generator).permute(0, 2, 3, 1)


def heads_major(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """The merge weight (O, H * C) as (H * O, C): row (h, o) is head h's block's row o."""
    out_dim = weight.shape[0]
    return weight.view(out_dim, heads, -1).transpose(0, 1).reshape(heads * out_dim, -1)


def _matrices(shared: torch.Tensor, keep: torch.Tensor | None, start: int, stop: int) -> torch.Tensor:
    """Images start:stop's matrices E (b, K * H, Q): shared (K, H, Q) times their masks (b, K, H, Q), or
    shared itself broadcast over the images without dropout."""
    if keep is None:
        return shared.flatten(0, 1).expand(stop - start, -1, -1)
    return torch.mul(shared, as_factor(keep[start:stop])).flatten(1, 2)


class DenseMerge(torch.autograd.Function):
    """out (B, O, Q) = merge of the dense shared attention (module docstring).

    x (B, C, K), any strides; weight (O, H * C); bias (O,) or None; keep None, or (B, K, H, Q) bool
    (`attention_keep_mask(..).permute(0, 3, 1, 2)`: contiguous) with `scale` = 1 / q; probs (H, Q, K).
    Returns a (B, O, Q) view of a (B, Q, O) tensor (channels-last, as the transformer's tokens).
    The mask is applied as a product (`impl.dropout.as_factor`): `where` would give the same for finite
    probabilities and gradients, at 5x the time here.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, keep, scale, probs):
        batch, channels, keys = x.shape
        heads, queries, _ = probs.shape
        out_dim = weight.shape[0]
        x_cl = x.transpose(1, 2).contiguous()                                   # (B, K, C)
        values = project(x_cl, heads_major(weight, heads))                       # (B, K, H * O)
        stacked = values.reshape(batch, keys * heads, out_dim)                   # V_i: rows (k, h)
        shared = (probs * scale).permute(2, 0, 1).contiguous()                   # E without dropout: (K, H, Q)
        if keep is None:  # one matrix for every image: one call over the batch
            out = matmul(shared.view(keys * heads, queries).t(), stacked)
        elif image_loops(values):
            out, dropped = x.new_empty(batch, queries, out_dim), torch.empty_like(shared)
            for i in range(batch):
                matrix = torch.mul(shared, as_factor(keep[i]), out=dropped)
                out[i] = transposed_matmul(matrix.view(keys * heads, queries), stacked[i])
        else:
            out = x.new_empty(batch, queries, out_dim)
            chunk = images_per_chunk(batch, queries * keys * heads * x.element_size(), x.device, CHUNK_BYTES)
            for start in range(0, batch, chunk):
                stop = min(batch, start + chunk)
                torch.bmm(_matrices(shared, keep, start, stop).transpose(1, 2), stacked[start:stop],
                          out=out[start:stop])
        if bias is not None:
            out += bias
        ctx.save_for_backward(x_cl, weight, keep, probs, values)
        ctx.scale = scale
        ctx.has_bias = bias is not None
        return out.transpose(1, 2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x_cl, weight, keep, probs, values = ctx.saved_tensors
        need_x, need_w, need_b, _, _, need_p = ctx.needs_input_grad
        batch, keys, channels = x_cl.shape
        heads, queries, _ = probs.shape
        out_dim = weight.shape[0]
        w_all = heads_major(weight, heads)
        need_values = need_x or need_w
        per_image = image_loops(values)
        stacked = values.reshape(batch, keys * heads, out_dim)
        grad_cl = grad.transpose(1, 2).contiguous()                              # (B, Q, O)
        shared = (probs * ctx.scale).permute(2, 0, 1).contiguous()               # (K, H, Q)
        grad_shared = torch.zeros_like(shared) if need_p else None
        grad_x = x_cl.new_empty(batch, keys, channels) if need_x else None
        grad_w = x_cl.new_zeros(heads * out_dim, channels) if need_w else None
        dropped = torch.empty_like(shared) if keep is not None and per_image else None
        # image i's mask as float factors, converted once for both its uses below (a product with the uint8
        # mask converts it to float first, on every call)
        factor = torch.empty_like(shared) if keep is not None and per_image else None
        per_image_elements = keys * heads * (out_dim if per_image else out_dim + queries)
        chunk = images_per_chunk(batch, per_image_elements * x_cl.element_size(), x_cl.device, CHUNK_BYTES)
        for start in range(0, batch, chunk):
            stop = min(batch, start + chunk)
            if per_image:
                grad_values = x_cl.new_empty(stop - start, keys, heads * out_dim) if need_values else None
                for i in range(start, stop):
                    if keep is not None:
                        factor.copy_(as_factor(keep[i]))
                    matrix = shared if keep is None else torch.mul(shared, factor, out=dropped)
                    # the values' gradient written into the chunk's (a copy of 3.7 MB an image cost 0.7 ms)
                    grad_matrix, _ = transposed_matmul_backward(
                        grad_cl[i], matrix.view(keys * heads, queries), stacked[i], need_a=need_p,
                        need_b=need_values, into_b=grad_values[i - start] if need_values else None)
                    if need_p and keep is None:
                        grad_shared += grad_matrix.view(shared.shape)
                    elif need_p:
                        grad_shared.addcmul_(grad_matrix.view(shared.shape), factor)
            else:
                matrices = _matrices(shared, keep, start, stop)                 # (b, K * H, Q)
                grad_values = torch.bmm(matrices, grad_cl[start:stop]).view(
                    stop - start, keys, heads * out_dim) if need_values else None
                if need_p:
                    grad_matrices = torch.bmm(stacked[start:stop], grad_cl[start:stop].transpose(1, 2))
                    grad_matrices = grad_matrices.view(-1, *shared.shape)
                    if keep is not None:
                        grad_matrices = torch.mul(grad_matrices, as_factor(keep[start:stop]))
                    grad_shared += grad_matrices.sum(0)
            if need_values:
                grad_x_chunk, grad_w_chunk = project_backward(grad_values, x_cl[start:stop], w_all,
                                                              need_input=need_x, need_weight=need_w)
                if need_x:
                    grad_x[start:stop] = grad_x_chunk
                if need_w:
                    grad_w += grad_w_chunk
        grad_weight = grad_w.view(heads, out_dim, channels).transpose(0, 1).reshape(out_dim, heads * channels) \
            if need_w else None
        grad_probs = (grad_shared * ctx.scale).permute(1, 2, 0).contiguous() if need_p else None
        grad_bias = grad.sum((0, 2)) if need_b and ctx.has_bias else None
        return (None if grad_x is None else grad_x.transpose(1, 2), grad_weight, grad_bias, None, None, grad_probs)
