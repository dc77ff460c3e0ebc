"""`retain_freed_memory`: keep freed host memory in the process for re-use (glibc), so that big tensors are
not faulted in afresh at every training step.

glibc's malloc serves blocks of 32 MB and more by `mmap` and gives them back to the system on `free`, and
gives back the top of its heap once more than its trim threshold is free there. PyTorch allocates every
CPU tensor through it, without a cache of its own, so a training step whose activations cross 32 MB pays
a page fault for every 4 KB of them, every step: the paper's attention model at batch 100 (hidden states
of 41 MB, masks of 59 MB) took 2.2 million minor faults a step, 8.8 GB zeroed by the kernel, and its step
went from 13.4 s to 10.4 s without them; ResNet18, whose activations stay under 32 MB, took 29,000
(docs/RESULTS.md). This sets `M_MMAP_MAX` to 0 (every block from the heap, re-used once freed) and
`M_TRIM_THRESHOLD` to 2 GiB (freed memory stays). The cost: the process keeps its peak memory until it
exits. jemalloc or tcmalloc through `LD_PRELOAD` do the same job, as PyTorch's CPU tuning guides say.

The trainer and the benchmarks call it (both sides of every comparison run under it);
ATTENTION_CNN_MALLOC=system in the environment leaves glibc's defaults alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV = "ATTENTION_CNN_MALLOC"
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_MAX = -4
_TRIM_BYTES = 2**31 - 1  # the largest value mallopt's int takes: 2 GiB


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for re-use. Returns whether it took effect: False off Linux/glibc, or
    with ATTENTION_CNN_MALLOC=system."""
    setting = os.environ.get(ENV, "retain")
    if setting not in ("retain", "system"):
        raise ValueError(f"{ENV} must be 'retain' or 'system', got {setting!r}")
    if setting == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_BYTES))
