"""fast-paths, on every device: a whole layer run where it will be trained equals the exact layer.

The other fast-path tests compare each path with the plain formula on the CPU. The CUDA paths share their
logic with CPU ones (the autograd merge, FlexAttention's score logic, the batched products of
`DenseMerge`), but run other kernels: cuBLAS and cuDNN, and FlexAttention compiled by Triton. This module
runs one float32 layer of each kind forward and backward on each device through `layer(x)`, so that each
takes the path its device takes, and compares the output and the gradients with the same layer computed
in float64 on the CPU: within the float32 computation's rounding bound plus the float64 one's (the
positional layers' gradients by `tolerances.gradient_tolerances`; content layers' outputs only, whose
gradients verify/ does not bound). A fixed handful of small cases rather than hypothesis: on CUDA each new
shape of a content layer compiles FlexAttention afresh.

The CPU cases run everywhere, so the comparison itself is exercised by CI; the CUDA ones run wherever a
GPU is (`bench/gpu_session.sh tests`) and are reported as skipped elsewhere.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from verify import reference, tolerances
from verify.assertions import assert_all_within
from verify.cases import ConvCase, ConvertedCase, LayerCase
from verify.strategies import DEVICES
from verify.test_fast_paths_perf import _run as run_backward
from verify.test_fast_paths_perf import dense_path

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


def _run(layer, x: torch.Tensor, upstream: torch.Tensor, fn=None) -> dict:
    """`test_fast_paths_perf._run` (output and gradients by name of sum(fn(layer, x) * upstream); fn
    defaults to the layer's own forward) on x's device, the results returned on the CPU."""
    result = run_backward(fn or (lambda layer, x: layer(x)), layer, x, upstream)
    return {"out": result["out"].cpu(),
            "grads": {k: None if g is None else g.cpu() for k, g in result["grads"].items()}}


@pytest.mark.statement(STATEMENT)
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("device", DEVICES)
def test_layer_on_device_equals_the_exact_layer(device: str, name: str):
    compare_on_device(name, device)


def compare_on_device(name: str, device: str, run=_run) -> None:
    """The check: case `name` run by `run` (output and gradients) on `device` against the exact layer."""
    __tracebackhide__ = True
    case = CASES[name]
    layer, x = case.build()                                                    # float32, on the CPU
    ref = reference.attention(layer, x)
    generator = torch.Generator().manual_seed(case.seed + 7)
    upstream = torch.randn(ref.output.shape, generator=generator, dtype=torch.float64).to(x.dtype)
    on_device = run(copy.deepcopy(layer).to(device), x.to(device), upstream.to(device))

    exact_layer, exact_x = copy.deepcopy(layer).double(), x.double()
    rounding = tolerances.attention_rounding(layer, ref, x.dtype) \
        + tolerances.attention_rounding(exact_layer, ref, torch.float64)
    checks = [(f"max|{device} - exact| (output)", (on_device["out"].double() - ref.output).abs(), rounding)]
    if not layer.content:
        exact = _run(exact_layer, exact_x, upstream.double(), dense_path)
        bounds = tolerances.gradient_tolerances(layer, x, upstream, ref)
        exact_bounds = tolerances.gradient_tolerances(exact_layer, exact_x, upstream.double(), ref)
        for key, bound in bounds.items():
            ours, theirs = on_device["grads"][key], exact["grads"][key]
            checks.append((f"max|{device} - exact| (d/d {key})", (ours.double() - theirs).abs(),
                           bound + exact_bounds[key]))
    assert_all_within(STATEMENT, checks, f"{name} on {device}: {case.describe()}",
                      case.reproduce(f"# see verify/test_devices.py: {name} on {device}"))
