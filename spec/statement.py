"""The records of the catalogue: a `Statement` and the named `Step`s of its proof.

A statement says what is claimed (`statement`, under `hypotheses`); its `proof` says how sympy
settles it, step by step. The two are kept apart (as teorth/estimates does) so a report can
quote the claim and show each step's verdict. `spec.catalogue` assembles the records into one
table; this module only defines them, so the family modules can build statements without
importing the catalogue (which imports them).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Step:
    """One named step of a proof.

    `check` returns the Python bool True only when sympy has proved the step (an expression
    reduced to zero, a limit evaluated and compared, an inequality decided, or an explicit
    instance computed exactly). The name says which of these it is, and names the instance
    when the step is checked on one.
    """

    name: str
    check: Callable[[], bool]


@dataclass(frozen=True)
class Statement:
    """A claim of the paper (or one we add: reference "new") with its proof.

    Attributes:
        id: kebab-case key; verify/, the reports and docs use it verbatim.
        reference: where the paper states it ("Lemma 2, eq. 9", "Theorem 1", ...) or "new".
        statement: the claim in one line, naming any part checked only on explicit instances.
        proof: the named steps; the statement holds when every step does.
        hypotheses: the standing assumptions, one short phrase each.
    """

    id: str
    reference: str
    statement: str
    proof: tuple[Step, ...]
    hypotheses: tuple[str, ...] = ()

    def run(self) -> list[tuple[str, bool]]:
        """Each step's name and verdict, in proof order (computed once, then cached)."""
        return list(_run(self))

    def check(self) -> bool:
        """True when every step of the proof holds."""
        return all(ok for _, ok in _run(self))


@functools.cache
def _run(statement: Statement) -> tuple[tuple[str, bool], ...]:
    """Evaluate the steps once per statement; a step must answer with a real bool, so a
    truthy sympy object (an unevaluated relation, say) cannot pass for a proof."""
    verdicts = []
    for step in statement.proof:
        verdict = step.check()
        if not isinstance(verdict, bool):
            raise TypeError(
                f"step {step.name!r} of {statement.id!r} returned {type(verdict).__name__}, "
                "expected bool"
            )
        verdicts.append((step.name, verdict))
    return tuple(verdicts)
