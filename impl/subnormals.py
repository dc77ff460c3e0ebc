"""`subnormals_flushed`: CPU float arithmetic with subnormal results flushed to zero and subnormal operands
read as zero, for the span of a training run or a benchmark of training steps.

On Intel CPUs every operation with a subnormal operand or result (a float32 below 1.2e-38 in magnitude)
takes a microcode assist, about a hundred times the cost of the operation (AMD's cores pay little). The
layers keep their attention probabilities out of that range (`encodings.drop_negligible`), but gradients
are another matter: once a classifier is confident, its softmax gives the wrong classes probabilities below
float32's normal range, the cross-entropy's gradient holds them, and they flow through the whole backward,
into every GEMM that reads them. The paper's model trained on one repeated batch of 16 (`bench.flop_rate`'s
set-up) took 1.8 s a step, and 3.1 and 3.6 s at the steps where its gradients held a few thousand
subnormals; flushed, every step took 1.7-1.9 s (docs/RESULTS.md). A value that is flushed moves by less
than 1.2e-38, far below the rounding of anything it enters. TensorFlow flushes them by default on CPU;
PyTorch leaves them unless `torch.set_flush_denormal(True)` is called, as this does.

The flags live in each thread's MXCSR register and a thread starts with its creator's: so this takes
effect on torch's OpenMP threads only when it runs before torch's first parallel operation creates them
(the trainer and the benchmark commands enter it first thing); later, it reaches the calling thread alone.
On leaving, the calling thread's flags are restored; worker threads created inside keep theirs.

ATTENTION_CNN_SUBNORMALS=keep in the environment leaves subnormal arithmetic as the CPU does it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

ENV = "ATTENTION_CNN_SUBNORMALS"
_depth = 0  # nesting of `subnormals_flushed` blocks that turned flushing on


def flushing_requested() -> bool:
    """Whether $ATTENTION_CNN_SUBNORMALS asks for flushing ("flush", the default) or not ("keep")."""
    setting = os.environ.get(ENV, "flush")
    if setting not in ("flush", "keep"):
        raise ValueError(f"{ENV} must be 'flush' or 'keep', got {setting!r}")
    return setting == "flush"


def flushing() -> bool:
    """Whether a `subnormals_flushed` block has flushing on now."""
    return _depth > 0


@contextlib.contextmanager
def subnormals_flushed() -> Iterator[bool]:
    """Flush subnormals to zero on CPU inside the block (module docstring); yields whether that took effect
    (False with ATTENTION_CNN_SUBNORMALS=keep, or where the CPU has no such mode)."""
    global _depth
    if not flushing_requested():
        yield False
        return
    if _depth:  # an enclosing block set it and will restore it
        yield True
        return
    if not torch.set_flush_denormal(True):
        yield False
        return
    _depth += 1
    try:
        yield True
    finally:
        _depth -= 1
        torch.set_flush_denormal(False)
