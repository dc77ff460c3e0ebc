"""`TokenLinear`: the transformer's per-token linear maps, on oneDNN's GEMM where that is the fast one.

On AMD CPUs (AVX-512) MKL's float32 GEMM behind `nn.Linear` runs at about 110 GFLOP/s and oneDNN's at
about 265 (a 4,096 x 400 by 400 x 512 product, one thread; docs/RESULTS.md), so there token tensors
(B, ..., C) of float32 go through `gemm.project` (a 1x1 convolution, differentiable). Everywhere else
(Intel CPUs and AMD ones without AVX-512, where MKL is as fast or faster; CUDA, autocast, other dtypes,
2-D inputs, oneDNN off) it is `nn.Linear` itself; the decision is `gemm.onednn_gemm`'s, the one the
attention layers' GEMMs take.
"""

from __future__ import annotations

import torch
from torch import nn

from ..attention.gemm import onednn_gemm, project


class TokenLinear(nn.Linear):
    """`nn.Linear` (same parameters, state_dict and arguments) applied to the last dim of token tensors,
    through oneDNN on CPU float32; equal to `nn.Linear` up to float32 rounding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() >= 3 and onednn_gemm(x) and x.dtype == self.weight.dtype \
                and not torch.is_autocast_enabled(x.device.type):
            return project(x.contiguous(), self.weight, self.bias)
        return super().forward(x)
