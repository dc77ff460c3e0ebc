"""The catalogue: every statement of spec/, in reading order, keyed by id.

The paper's own statements come first (Lemma 2's parts, Lemma 1, Theorem 1, the remarks, the
generalized encoding), then ours. The table checks itself on import, as array-api-tests'
stubs.py does: ids unique and kebab-case, every statement with at least one proof step, step
names unique within a statement.
"""

from __future__ import annotations

import re

from spec import bounds, conv3d, geometry, lemma1, quadratic, separable
from spec.statement import Statement, Step

__all__ = ["STATEMENTS", "CatalogueError", "Statement", "Step", "UnknownStatement", "get", "ids"]

STATEMENTS: tuple[Statement, ...] = (
    quadratic.QUADRATIC_IDENTITY,
    quadratic.SOFTMAX_SHIFT_INVARIANCE,
    quadratic.SOFTMAX_LIMIT,
    lemma1.LEMMA1,
    lemma1.THEOREM1,
    quadratic.REMARK_1D,
    geometry.CONV_GEOMETRY,
    quadratic.GENERALIZED_ENCODING,
    conv3d.CONV3D,
    separable.SEPARABLE_QUADRATIC,
    separable.HARD_LIMIT,
    bounds.TAIL_BOUND,
    bounds.OUTPUT_ERROR_BOUND,
    bounds.ROUNDING_BOUND,
)

_KEBAB = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
_FAMILIES = (quadratic, lemma1, geometry, conv3d, separable, bounds)


class CatalogueError(Exception):
    """The catalogue is malformed (raised on import, so a bad edit cannot go unnoticed)."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise CatalogueError(message)


def _validate(statements: tuple[Statement, ...]) -> dict[str, Statement]:
    """The id -> statement table, or a CatalogueError naming what is wrong with it."""
    table: dict[str, Statement] = {}
    for statement in statements:
        _require(isinstance(statement, Statement), f"not a Statement: {statement!r}")
        _require(bool(_KEBAB.fullmatch(statement.id)), f"id {statement.id!r} is not kebab-case")
        _require(statement.id not in table, f"duplicate id {statement.id!r}")
        _require(bool(statement.proof), f"{statement.id!r} has no proof steps")
        names = [step.name for step in statement.proof]
        _require(len(set(names)) == len(names), f"{statement.id!r} repeats a step name")
        _require(
            bool(statement.reference and statement.statement), f"{statement.id!r} lacks text"
        )
        table[statement.id] = statement
    return table


def _check_families(table: dict[str, Statement]) -> None:
    """Every statement a family module defines is in the catalogue, and nothing else is."""
    listed = {s.id for family in _FAMILIES for s in family.STATEMENTS}
    _require(
        listed == set(table),
        f"catalogue and family modules disagree on: {sorted(listed ^ set(table))}",
    )


_BY_ID = _validate(STATEMENTS)
_check_families(_BY_ID)


def ids() -> tuple[str, ...]:
    """The statement ids, in catalogue order."""
    return tuple(_BY_ID)


class UnknownStatement(KeyError, ValueError):
    """An id that is not in the catalogue: a KeyError (a lookup miss) and a ValueError (a bad
    argument), so either `except` clause catches it."""

    def __str__(self) -> str:  # KeyError's str() would repr() the message
        return str(self.args[0]) if self.args else ""


def get(id: str) -> Statement:
    """The statement with this id.

    Raises:
        TypeError: id is not a str.
        UnknownStatement: (a KeyError and a ValueError) an unknown id; the message lists the
            known ones.
    """
    if not isinstance(id, str):
        raise TypeError(
            f"id must be a str, one of the statement ids ({', '.join(_BY_ID)}), "
            f"got {type(id).__name__} {id!r}"
        )
    if id not in _BY_ID:
        raise UnknownStatement(
            f"unknown statement id {id!r}: id must be one of {', '.join(_BY_ID)}"
        )
    return _BY_ID[id]
