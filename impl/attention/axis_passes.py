"""One grid axis at a time: the small products the fused positional merges are built of.

`axis_apply` mixes one grid axis of channels-last tokens with a matrix (or one matrix per image);
`axis_contract` is that matrix's gradient. Both are batched matmuls over views of the tokens, no copies
(on oneDNN CPUs, one matrix per image goes through oneDNN as a 1x1 convolution: `_per_image_apply`).
`chunk_images`, `channels_last` and `fill_bias` are the chunking and layout steps that
`positional_merge.PositionalMerge` and `product_merge.ProductMerge` share.
"""

from __future__ import annotations

import math

import torch

from .gemm import images_per_chunk, onednn_gemm, project


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


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """(b, C, *S) -> (b, *S, C) contiguous."""
    return x.movedim(1, -1).contiguous()


def chunk_images(batch: int, per_image: int, element_size: int, device: torch.device, budget: int) -> int:
    """Images per chunk on CPU: per-image tensors of `per_image` elements within `budget` bytes a thread
    (each core has its own L2; at least one image), in balanced chunks; the whole batch elsewhere."""
    return images_per_chunk(batch, per_image * element_size, device, budget * torch.get_num_threads())


def fill_bias(out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Channels-last out (.., O) set to the bias (zeros without one), to accumulate into; returns it."""
    return out.zero_() if bias is None else out.copy_(bias.expand_as(out))
