"""Assertion helpers (as array-api-tests' pytest_helpers.py): statement id first, a message that says
what exceeded which bound on which example, and a ready-to-paste reproduction.

Every call also RECORDS one (statement, error, bound) triple: one call per generated example and
statement, so `python -m verify` can count the examples of each statement and show its worst error.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Sequence, Union

import torch

import spec

Number = Union[float, int, torch.Tensor]

EXTRA_CHECKS = {
    "fast-paths": (
        "impl vs verify/reference.py",
        "The layer's forward and attention_probabilities (shift, separable, dense and SDPA content "
        "paths; every encoding, 1-3 dims, random parameters and geometries) equal the plain dense "
        "reference within the rounding bound",
    ),
}
"""Numerical properties that are not a spec statement but that the statements' checks rely on."""


@dataclass(frozen=True)
class Record:
    """One checked example: its worst error (largest error/bound ratio) and that entry's bound."""

    statement: str
    error: float
    bound: float
    passed: bool
    test: str
    context: str
    what: str

    @property
    def ratio(self) -> float:
        if self.bound > 0:
            return self.error / self.bound
        return 0.0 if self.error == 0 else math.inf


RECORDS: list[Record] = []
"""Every check made in this process, in order (the report's plugin reads and clears it)."""


_RECORDING = [True]


@contextlib.contextmanager
def not_recorded():
    """Checks inside this block record nothing (test_can_fail's deliberate failures)."""
    _RECORDING.append(False)
    try:
        yield
    finally:
        _RECORDING.pop()


def known_ids() -> tuple[str, ...]:
    return tuple(spec.ids()) + tuple(EXTRA_CHECKS)


def _worst(error: Number, bound: Number) -> tuple[float, float, float, tuple | None]:
    """(error, bound, ratio, index) at the entry with the largest error/bound ratio (NaN counts as
    infinitely bad)."""
    error = torch.as_tensor(error, dtype=torch.float64).detach().cpu()
    bound = torch.as_tensor(bound, dtype=torch.float64).detach().cpu()
    error, bound = torch.broadcast_tensors(error, bound)
    if error.numel() == 0:
        return 0.0, 0.0, 0.0, None
    error = error.abs()
    ratio = torch.where(bound > 0, error / bound, torch.where(error > 0, math.inf, 0.0))
    ratio = torch.nan_to_num(ratio, nan=math.inf)
    flat = int(ratio.flatten().argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), ratio.shape)) if ratio.dim() else None
    return float(error.flatten()[flat]), float(bound.flatten()[flat]), float(ratio.flatten()[flat]), index


def assert_all_within(statement_id: str, checks: Sequence[tuple[str, Number, Number]], context: str,
                      reproduce: str | None = None) -> None:
    """Assert error <= bound for each (what, error, bound) of one example; record the worst one.

    Args:
        statement_id: the spec statement (or an EXTRA_CHECKS id) the example checks.
        checks: (what, error, bound) with error and bound floats or broadcastable tensors, the
            comparison made entrywise; `what` names the error, e.g. "max|attn - conv|".
        context: the example in one line, e.g. "Conv2d(4, 6, k=(2,3), stride=2) on (1, 4, 7, 9)".
        reproduce: lines to paste to rerun the example.

    Raises:
        AssertionError: `max|attn - conv| = 3e-09 > bound 1e-12 [lemma1: Conv2d(...)]`, one line per
            failing check, then the reproduction.
        KeyError: an unknown statement id.
    """
    __tracebackhide__ = True
    if statement_id not in known_ids():
        raise KeyError(f"statement_id must be one of {known_ids()}, got {statement_id!r}")
    worst, failures = None, []
    for what, error, bound in checks:
        e, b, r, index = _worst(error, bound)
        if worst is None or r > worst[3] or (r == worst[3] and e > worst[1]):
            worst = (what, e, b, r)
        if not r <= 1:
            at = f" at index {index}" if index else ""
            failures.append(f"{what} = {e:.3g} > bound {b:.3g}{at} [{statement_id}: {context}]")
    what, e, b, _ = worst if worst is not None else ("nothing", 0.0, 0.0, 0.0)
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    if _RECORDING[-1]:
        RECORDS.append(Record(statement_id, e, b, not failures, test, context, what))
    if failures:
        message = "\n".join(failures)
        if reproduce:
            message += "\n\nReproduce:\n" + reproduce
        raise AssertionError(message)


def assert_within(statement_id: str, error: Number, bound: Number, context: str,
                  reproduce: str | None = None, what: str = "max|attn - conv|") -> None:
    """One check: `error <= bound` (entrywise for tensors); see `assert_all_within`."""
    __tracebackhide__ = True
    assert_all_within(statement_id, [(what, error, bound)], context, reproduce)


def assert_equal(statement_id: str, actual, expected, context: str, reproduce: str | None = None,
                 what: str = "mismatches") -> None:
    """Exact agreement of two plain values (ints, tuples, lists): recorded as error = 0 or 1 against
    bound 0."""
    __tracebackhide__ = True
    if actual != expected:
        what = f"{what}: {actual!r} != {expected!r}"
    assert_within(statement_id, float(actual != expected), 0.0, context, reproduce, what)
