"""FLOP counting that sees every product the layers run: `FlopCounterMode` plus the formulas it lacks.

`torch.utils.flop_counter.FlopCounterMode` counts aten.convolution and aten.baddbmm, but not the oneDNN
entry point the layers call directly for their GEMMs (aten.mkldnn_convolution: the merge projection,
`TokenLinear`, the per-image attention products), nor baddbmm's in-place form (the accumulating passes),
nor the CPU flash kernel `scaled_dot_product_attention` runs for content scores without dropout
(aten._scaled_dot_product_flash_attention_for_cpu and its backward: it counted the content model's
attention products as zero in eval). `flop_counter()` registers them (once, process-wide) and returns a
counter; a multiply-add counts 2.
"""

from __future__ import annotations

import torch
from torch.utils import flop_counter as _fc


def register_flop_formulas() -> None:
    """Teach FlopCounterMode aten.mkldnn_convolution, aten.baddbmm_ and CPU flash attention (idempotent)."""
    if torch.ops.aten.mkldnn_convolution not in _fc.flop_registry:
        @_fc.register_flop_formula(torch.ops.aten.mkldnn_convolution)
        def _mkldnn_convolution(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
            return _fc.conv_flop_count(list(x_shape), list(w_shape), list(out_shape), transposed=False)

    if torch.ops.aten.baddbmm_ not in _fc.flop_registry:
        @_fc.register_flop_formula(torch.ops.aten.baddbmm_)
        def _baddbmm_in_place(self_shape, a_shape, b_shape, out_shape=None, **kwargs) -> int:
            return _fc.bmm_flop(a_shape, b_shape)

    # the CUDA flash kernels' formulas: the same products (Q K^T and P V, and their gradients)
    cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_flash is not None and cpu_flash not in _fc.flop_registry:
        @_fc.register_flop_formula(cpu_flash)
        def _cpu_flash(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return _fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    cpu_flash_backward = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if cpu_flash_backward is not None and cpu_flash_backward not in _fc.flop_registry:
        @_fc.register_flop_formula(cpu_flash_backward)
        def _cpu_flash_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                                **kwargs) -> int:
            return _fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def flop_counter() -> _fc.FlopCounterMode:
    """A FlopCounterMode (no display) that counts every product this project's layers run."""
    register_flop_formulas()
    return _fc.FlopCounterMode(display=False)
