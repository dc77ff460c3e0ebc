"""Side-by-side tables with pytest-benchmark: `python -m pytest bench --benchmark-only`.

Not part of the default test run (pyproject's testpaths are tests/ and verify/). One group per
(pass, size): the 3x3 convolution, our converted layer at alpha = 4 (separable-quadratic; fixed-encoding:
its encoding frozen; trained-quadratic: its heads' centres moved apart, as training moves them) and at
alpha = inf (hard-limit), and the plain dense reference, each timed forward + backward on the paper's
shape (400 channels, 9 heads, batch 16, CPU). pytest-benchmark lists each group fastest first, so the
"(x.xx)" factors next to the timings read off as ratios to the convolution.

BENCH_THREADS sets the intra-op threads (default: torch's, all cores); BENCH_ROUNDS the rounds (5).

The module does not import pytest (its parameters come from the `pytest_generate_tests` hook): asv's
discovery imports every module under bench/, in environments that hold the project's dependencies only.
"""

from __future__ import annotations

import os

import torch

from bench import common

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
CASES = ("conv", "separable-quadratic", "fixed-encoding", "trained-quadratic", "hard-limit", "dense-reference")


def pytest_generate_tests(metafunc):
    """Every test here runs for each path of CASES at each size."""
    metafunc.parametrize("path", CASES)
    metafunc.parametrize("size", common.SIZES)


def test_forward_backward(benchmark, path, size):
    module = common.layer(path, size, "cpu")
    x = common.layer_input(size, "cpu", requires_grad=True)
    benchmark.group = f"forward+backward {size}x{size} (batch {x.shape[0]}, {x.shape[1]} channels, " \
                      f"{torch.get_num_threads()} threads)"
    benchmark.extra_info["ratio_target"] = 1.3 if path == "separable-quadratic" else None
    benchmark.pedantic(common.forward_backward, args=(module, x), rounds=ROUNDS, iterations=1,
                       warmup_rounds=1)


def test_forward(benchmark, path, size):
    module = common.layer(path, size, "cpu").eval()
    x = common.layer_input(size, "cpu")
    benchmark.group = f"forward (eval, no_grad) {size}x{size} (batch {x.shape[0]}, {torch.get_num_threads()} threads)"

    def forward():
        with torch.no_grad():
            module(x)

    benchmark.pedantic(forward, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    module.train()
