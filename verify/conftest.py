"""pytest setup for verify/: the hypothesis profile, the `statement` marker, a quiet torch per test."""

from __future__ import annotations

import os

import pytest
import torch

from verify import profiles

profiles.load()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "statement(*ids): the spec statements a test checks numerically (python -m verify "
                   "counts a failing test against them)")
    # torch's own note that 'same' padding of an even kernel copies the input: expected here.
    config.addinivalue_line("filterwarnings", "ignore:Using padding='same':UserWarning")


@pytest.fixture(autouse=True)
def _quiet_torch():
    """For each verify/ test (restored after it, so tests/ is unaffected): one thread (small tensors run
    faster on one, and the shared machine keeps its other core; VERIFY_THREADS overrides), and no TF32,
    which the rounding bounds exclude (spec's rounding-bound hypotheses)."""
    saved = (torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.set_num_threads(int(os.environ.get("VERIFY_THREADS", "1")))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.set_num_threads(saved[0])
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[1:]
