"""The float32 GEMMs of the attention layers' fast paths, through oneDNN or BLAS on CPU.

Which library multiplies float32 matrices fastest depends on the CPU (docs/RESULTS.md). On AMD CPUs
with AVX-512 (Zen 4) MKL's float32 GEMM, behind `torch.mm`, `bmm` and `nn.Linear`, runs at about half
the rate of oneDNN's convolution kernels (100-110 against 200-470 GFLOP/s): MKL takes its AVX2 kernels on
a CPU that is not Intel's, oneDNN its AVX-512 ones. Where AVX2 is the widest either has (an AMD CPU
without AVX-512, Zen 3) they multiply at the same rate (about 185 GFLOP/s on 2 cores), and the converted
layer runs at 1.08 / 1.22x the convolution through BLAS against 1.73 / 1.82x through oneDNN (16x16 /
32x32). On Intel CPUs MKL runs most of these shapes as fast or faster (on a 2-core Xeon with AVX-512 and
AMX: 231-318 against 208-316 GFLOP/s, the weight gradients 305-312 against 245-272). So the
backend is chosen per machine (`GEMM_BACKENDS`, `backend`): with "onednn" the products of float32 CPU
tensors are written as 1x1 convolutions, with "blas" (and for anything else: CUDA, float64, half
precision) they are the plain torch ops. Both compute the same sums; tests/test_gemm.py checks each
function under both.

- `project`: tokens (.., C) by a weight (O, C): u @ w.T, channels-last (an NHWC 1x1 convolution).
- `project_add`: out += u @ w.T, into the output itself where the library can (BLAS).
- `project_backward`: the gradients of that product wrt the weight, the sum over rows of g^T y, and wrt
  the tokens, g @ w (oneDNN's weight and data gradients).
- `transposed_matmul`: a^T b for a (rows, M) and b (rows, S), the sum over rows (oneDNN's weight gradient),
  e.g. an image's transposed attention matrix and its values, contracted over the keys.
- `matmul`: one a (M, D) by a batch of b (n, D, S), channels-first (a shared attention matrix by every
  image's values, in one call).
- `images_per_chunk`: how many images the fused paths' loops take at a time.

oneDNN runs channels-last (NHWC) operands as they are, but converts channels-first ones to its blocked
layout and back (`ONEDNN_VERBOSE=1` shows it: converting an attention product's (2,304, 400) gradient
back alone took 0.7 ms, against 0.9-1.7 ms for each of its backward's two products), so the
large operands are best channels-last rows, as `project`, `project_backward`, `transposed_matmul` and its
backward take them.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Sequence

import torch
import torch.nn.functional as F


# The transposed products' rows as this many images (`_rows`): an attention product over 2,304 rows runs
# 5-12% faster as 16 images of 144 rows than as 36 of 64.
_PRODUCT_IMAGES = 16


GEMM_BACKENDS = ("onednn", "blas")
"""Where the CPU's float32 products go: oneDNN's convolution kernels (1x1 convolutions on channels-last
tokens), or torch's matrix products (MKL on x86)."""


CPUINFO = "/proc/cpuinfo"


def _cpuinfo(field: str) -> str:
    """The first `field` of `CPUINFO` (Linux), "" where there is none."""
    try:
        with open(CPUINFO, encoding="ascii", errors="replace") as info:
            for line in info:
                name, _, value = line.partition(":")
                if name.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return ""


def cpu_vendor() -> str:
    """The CPU's vendor id as Linux reports it ("GenuineIntel", "AuthenticAMD", ..), "" where unknown."""
    return _cpuinfo("vendor_id")


def cpu_has_avx512() -> bool:
    """Whether the CPU has AVX-512 (its foundation, `avx512f`), as Linux reports it; False where unknown."""
    return "avx512f" in _cpuinfo("flags").split()


def default_backend() -> str:
    """$ATTENTION_CNN_GEMM ("onednn", "blas" or "auto", the default); "auto" takes oneDNN on AMD CPUs with
    AVX-512, where MKL's float32 GEMM runs at half oneDNN's rate, and BLAS elsewhere."""
    choice = os.environ.get("ATTENTION_CNN_GEMM", "auto")
    if choice not in ("auto", *GEMM_BACKENDS):
        raise ValueError(f"ATTENTION_CNN_GEMM must be one of auto, {', '.join(GEMM_BACKENDS)}; got {choice!r}")
    if choice != "auto":
        return choice
    return "onednn" if cpu_vendor() == "AuthenticAMD" and cpu_has_avx512() else "blas"


_backend = default_backend()


def current_backend() -> str:
    """The CPU GEMM backend in use: `default_backend()`'s, or `backend`'s inside its block."""
    return _backend


@contextlib.contextmanager
def backend(name: str):
    """The CPU GEMM backend set to `name` (one of `GEMM_BACKENDS`) inside the block (tests, benchmarks)."""
    global _backend
    if name not in GEMM_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(GEMM_BACKENDS)}, got {name!r}")
    saved, _backend = _backend, name
    try:
        yield
    finally:
        _backend = saved


def onednn_gemm(t: torch.Tensor) -> bool:
    """Whether t's float32 products go through oneDNN's convolution kernels (the "onednn" backend, on CPU,
    oneDNN available). Not while torch.compile traces: its fake tensors cannot go through oneDNN's ops
    (the compiler then picks the GEMMs itself)."""
    # is_compiling first: the tracer cannot read torch.backends' flags (a graph break at every call)
    return not torch.compiler.is_compiling() and _backend == "onednn" and t.device.type == "cpu" \
        and t.dtype == torch.float32 and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


def image_loops(t: torch.Tensor) -> bool:
    """Whether the fused paths multiply image by image (CPU, either backend: each product is large enough
    for the GEMM rate, and no chunk of per-image matrices is held) rather than as batched products over
    a chunk (CUDA, and while torch.compile traces)."""
    return not torch.compiler.is_compiling() and t.device.type == "cpu"


def images_per_chunk(batch: int, image_bytes: int, device: torch.device, budget: int) -> int:
    """Images per chunk of a fused path's loop on CPU: a chunk's per-image tensors (`image_bytes` each)
    within `budget` bytes (at least one image), in balanced chunks; the whole batch elsewhere."""
    if device.type != "cpu" or batch <= 1:
        return max(batch, 1)
    size = max(1, budget // max(1, image_bytes))
    count = -(-batch // size)
    return -(-batch // count)


def _as_nhwc(t: torch.Tensor) -> torch.Tensor:
    """(b, D0, ..., C) contiguous -> the same memory as a channels-last (b, C, D0, prod(D1..)) view."""
    lead = t.shape[:-1]
    rest = math.prod(lead[2:]) if len(lead) > 2 else 1
    d0 = lead[1] if len(lead) > 1 else 1
    return t.view(lead[0], d0, rest, t.shape[-1]).permute(0, 3, 1, 2)


def _from_nhwc(out4: torch.Tensor, lead: Sequence[int]) -> torch.Tensor:
    """A (b, O, h, w) result back to (*lead, O) contiguous (a view when oneDNN kept channels-last)."""
    return out4.permute(0, 2, 3, 1).reshape(*lead, out4.shape[1])


def project(u: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, *,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """u (..., Cin) contiguous, w (Cout, Cin), bias (Cout,) or None -> u @ w.T + bias (..., Cout) contiguous;
    differentiable without `out`. Through oneDNN on CPU float32, `F.linear` elsewhere.

    out: a contiguous (..., Cout) buffer (not differentiable) that BLAS writes the product into and that is
    then returned (oneDNN returns a tensor of its own): a loop re-using one buffer writes memory it has
    just written, faster than a fresh tensor's (a 4,096 x 400 by 400 x 1,200 product in the converted
    layer's backward: 13.8 against 14.3 ms, docs/RESULTS.md)."""
    if onednn_gemm(u) and u.dim() >= 2:
        out4 = torch.mkldnn_convolution(_as_nhwc(u), w.contiguous()[:, :, None, None], bias,
                                        [0, 0], [1, 1], [1, 1], 1)
        return _from_nhwc(out4, u.shape[:-1])
    if out is None:
        return F.linear(u, w, bias)
    rows, out2 = u.reshape(-1, u.shape[-1]), out.view(-1, w.shape[0])
    if bias is None:
        torch.mm(rows, w.t(), out=out2)
    else:
        torch.addmm(bias, rows, w.t(), out=out2)
    return out


def project_add(u: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out += u @ w.T for u (..., Cin) contiguous, w (Cout, Cin) and out (..., Cout) contiguous; returns out
    (not differentiable). BLAS adds the product in the GEMM itself (beta = 1: no product tensor, no pass of
    its own); oneDNN returns a product of its own, added after."""
    if onednn_gemm(u) and u.dim() >= 2:
        return out.add_(project(u, w))
    out.view(-1, w.shape[0]).addmm_(u.reshape(-1, u.shape[-1]), w.t())
    return out


def project_operand(w: torch.Tensor) -> torch.Tensor:
    """w as `project` takes it best, for a weight used in several calls: contiguous for oneDNN (which
    would copy it at every call), as it is for BLAS, whose products read a strided view (a slice of a
    larger weight, or a transpose) without copying it: a 400 x 1,200 slice of a 400 x 3,600 weight, read
    transposed, took 41.5 ms for three 4,096-row products against 43.1 for a transposing copy (2.9 ms)
    and the products on it (docs/RESULTS.md)."""
    return w.contiguous() if _backend == "onednn" else w


def _rows(t: torch.Tensor, *, images: int | None = None) -> torch.Tensor:
    """t (..., C) as a channels-last (n, C, w, 1) image batch of its rows, with n >= 16 and w > 1 where the
    row count allows: torch then takes oneDNN's weight gradient even on one thread, and the layout is
    unambiguous. `images`: n itself where it divides the rows (else w = 64 or less, the projections')."""
    count = math.prod(t.shape[:-1])
    if images is not None and count % images == 0 and count // images > 1:
        width = count // images
    else:
        width = next((w for w in (64, 32, 16, 8, 4, 2) if count % w == 0 and count // w >= 16), 1)
    return t.reshape(count // width, width, 1, t.shape[-1]).permute(0, 3, 1, 2)


def _conv_backward(grad4, input4, weight, need_input: bool, need_weight: bool):
    """oneDNN's data and weight gradients of a 1x1 convolution (no bias), weight (O, C) read as it is."""
    return torch.ops.aten.convolution_backward(
        grad4, input4, weight.contiguous()[:, :, None, None], None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
        [need_input, need_weight, False])[:2]


def project_backward(g: torch.Tensor, y: torch.Tensor, w: torch.Tensor, *, need_input: bool = True,
                     need_weight: bool = True, into_input: torch.Tensor | None = None,
                     add_weight_to: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The gradients of `project(y, w)` for upstream g (..., O): wrt y, g @ w (..., C) contiguous, and wrt
    w, sum over rows of g^T y (O, C); None for those not needed. On oneDNN both come from one weight- and
    data-gradient call, w read as it is (no transposed copy).

    into_input: a contiguous buffer of y's shape that BLAS writes y's gradient into (oneDNN returns its
    own); add_weight_to: an (O, C) tensor that w's gradient is added to and returned as (BLAS accumulates
    the product into it)."""
    if not (need_input or need_weight):
        return None, None
    if onednn_gemm(g) and g.dim() >= 2:
        grad_y4, grad_w4 = _conv_backward(_rows(g), _rows(y), w, need_input, need_weight)
        grad_y = _from_nhwc(grad_y4, y.shape[:-1]) if need_input else None
        grad_w = grad_w4.view(g.shape[-1], y.shape[-1]) if need_weight else None
        if grad_w is not None and add_weight_to is not None:
            grad_w = add_weight_to.add_(grad_w)
        return grad_y, grad_w
    g2 = g.reshape(-1, g.shape[-1])
    grad_y = grad_w = None
    if need_input and into_input is None:
        grad_y = (g2 @ w).view(*y.shape[:-1], w.shape[1])
    elif need_input:
        grad_y = torch.mm(g2, w, out=into_input.view(-1, w.shape[1])).view(*y.shape[:-1], w.shape[1])
    if need_weight and add_weight_to is None:
        grad_w = g2.t() @ y.reshape(-1, y.shape[-1])
    elif need_weight:
        grad_w = add_weight_to.addmm_(g2.t(), y.reshape(-1, y.shape[-1]))
    return grad_y, grad_w


def transposed_matmul(a: torch.Tensor, b: torch.Tensor, *, add_to: torch.Tensor | None = None) -> torch.Tensor:
    """a (..., M), b (..., S) with the same leading shape -> a^T b (M, S), the sum over rows of their outer
    products, contiguous; not differentiable (the fused merges' own backward uses it). Through oneDNN on
    CPU float32: the weight gradient of a 1x1 convolution of b's rows giving a's (the weight's value is
    not read).

    add_to: an (M, S) tensor, its rows possibly strided (a slice of a larger gradient), that a^T b is added
    to and that is returned; BLAS accumulates the product into it directly."""
    if onednn_gemm(b) and b.dim() >= 2:
        weight = b.new_empty(a.shape[-1], b.shape[-1])
        a4, b4 = _rows(a, images=_PRODUCT_IMAGES), _rows(b, images=_PRODUCT_IMAGES)
        product = _conv_backward(a4, b4, weight, False, True)[1].view(weight.shape)
        return product if add_to is None else add_to.add_(product)
    a2, b2 = a.reshape(-1, a.shape[-1]).t(), b.reshape(-1, b.shape[-1])
    return a2 @ b2 if add_to is None else add_to.addmm_(a2, b2)


def transposed_matmul_backward(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, need_a: bool = True,
                               need_b: bool = True, into_b: torch.Tensor | None = None
                               ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The gradients of `transposed_matmul(a, b)` for upstream grad (M, S): wrt a, b @ grad^T (..., M), and
    wrt b, a @ grad (..., S), contiguous; None for those not needed. On oneDNN a 1x1 convolution of b's rows
    by grad and the data gradient of one of a's rows by it: a and b stay channels-last rows, only grad (the
    small operand) is converted.

    into_b: a contiguous tensor of b's size (e.g. an image's slot in a chunk's gradient) that b's gradient
    is written into and returned as (BLAS writes it there; oneDNN's result is copied in)."""
    grad_a = grad_b = None
    if onednn_gemm(grad) and b.dim() >= 2:
        a4, b4 = _rows(a, images=_PRODUCT_IMAGES), _rows(b, images=_PRODUCT_IMAGES)
        if need_a:
            grad_a4 = torch.mkldnn_convolution(b4, grad.contiguous()[:, :, None, None], None, [0, 0], [1, 1],
                                               [1, 1], 1)
            grad_a = _from_nhwc(grad_a4, a.shape[:-1])
        if need_b:
            grad_b = _from_nhwc(_conv_backward(a4, b4, grad, True, False)[0], b.shape[:-1])
            if into_b is not None:
                grad_b = into_b.view(b.shape).copy_(grad_b)
        return grad_a, grad_b
    if need_a:
        grad_a = b @ grad.t()
    if need_b and into_b is None:
        grad_b = a @ grad
    elif need_b:
        torch.mm(a.reshape(-1, a.shape[-1]), grad, out=into_b.view(-1, grad.shape[-1]))
        grad_b = into_b.view(b.shape)
    return grad_a, grad_b


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (M, D) @ b (n, D, S) -> (n, M, S), one a for every matrix of b; contiguous, not differentiable.
    Through oneDNN on CPU float32: b read as a batch of channels-first (D, S) images, a as the weight (one
    call over the batch, b converted to oneDNN's blocked layout and back)."""
    if onednn_gemm(b):
        out = torch.mkldnn_convolution(b.contiguous()[..., None], a.contiguous()[:, :, None, None], None,
                                       [0, 0], [1, 1], [1, 1], 1)
        return out.view(b.shape[0], a.shape[0], b.shape[-1])
    return torch.matmul(a, b)
