"""fast-paths, on every device: a whole layer run where it will be trained equals the exact layer.

The other fast-path tests compare each path with the plain formula on the CPU. The CUDA paths share their
logic with CPU ones (the autograd merge, FlexAttention's score logic, the batched products of
`DenseMerge`), but run other kernels: cuBLAS and cuDNN, and FlexAttention compiled by Triton. This module
runs one float32 layer of each kind forward and backward on each device through `layer(x)`, so that each
takes the path its device takes, and checks it with the fast-path checks of verify/checks.py against the
plain reference in float64 on the CPU (`checks.fast_path`: output and probabilities;
`checks.fast_path_gradients`: the positional layers' gradients, which verify/ bounds). A fixed handful of
small cases rather than hypothesis: on CUDA each new shape of a content layer compiles FlexAttention afresh.

The CPU cases run everywhere, so the checks' device handling is exercised by CI; the CUDA ones run
wherever a GPU is (`bench/gpu_session.sh tests`) and are reported as skipped elsewhere.
"""

from __future__ import annotations

import math

import pytest
import torch

from verify import checks, reference
from verify.cases import ConvCase, ConvertedCase, LayerCase
from verify.strategies import DEVICES

STATEMENT = "fast-paths"

_IDENTITY = ((0, 0, 1, 0, 0), (0, 0, 1, 0, 0))        # plain self-attention on a 2-D grid
_CONV_3X3 = ConvCase(2, 6, 5, (("kernel_size", 3), ("padding", 1)), (6, 6), batch=2, dtype="float32", seed=5)

CASES = {
    # separable positional heads: `PositionalMerge` (CPU chunks, one chunk on CUDA)
    "quadratic": LayerCase(2, 6, (("heads", 9), ("out_dim", 5)), _IDENTITY, size=(6, 6), batch=2,
                           dtype="float32", seed=1),
    # one dense (H, N, N) matrix: `DenseMerge` (oneDNN image by image on CPU, batched matmuls on CUDA)
    "generalized": LayerCase(2, 6, (("heads", 4), ("encoding", "generalized")), _IDENTITY, size=(5, 6),
                             batch=2, dtype="float32", seed=2),
    "learned": LayerCase(2, 6, (("heads", 4), ("encoding", "learned"), ("grid_size", (6, 6))), _IDENTITY,
                         size=(6, 6), batch=2, dtype="float32", seed=3),
    # content + position: SDPA with the positional float mask on CPU, compiled FlexAttention on CUDA
    "learned-content": LayerCase(2, 6, (("heads", 4), ("encoding", "learned"), ("grid_size", (6, 6)),
                                        ("content", True)), _IDENTITY, size=(6, 6), batch=2, dtype="float32",
                                 seed=4),
    "content": LayerCase(2, 6, (("heads", 4), ("encoding", None), ("content", True)), _IDENTITY, size=(6, 6),
                         batch=2, dtype="float32", seed=6),
    # a converted 3x3 convolution: its shifts as the convolution (alpha = inf), `ProductMerge` (alpha = 4)
    "hard-limit": ConvertedCase(_CONV_3X3, alpha=math.inf),
    "converted": ConvertedCase(_CONV_3X3, alpha=4.0),
}


@pytest.mark.statement(STATEMENT)
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("device", DEVICES)
def test_layer_on_device_equals_the_exact_layer(device: str, name: str):
    case = CASES[name]
    layer, x = case.build()                                                    # float32, on the CPU
    context = f"{name} on {device}: {case.describe()}"
    reproduce = case.reproduce(f"# see verify/test_devices.py: {name} on {device}")
    checks.fast_path(STATEMENT, layer, x, context, reproduce, device=device)
    if not layer.content:
        generator = torch.Generator().manual_seed(case.seed + 7)
        upstream = torch.randn(reference.attention(layer, x).output.shape, generator=generator,
                               dtype=torch.float64).to(x.dtype)
        checks.fast_path_gradients(STATEMENT, layer.train(), x, upstream, context, reproduce, device=device)
