"""Proof helpers shared by the family modules.

Each helper turns one kind of claim into a Python bool that is True only when sympy has settled
it: an identity reduced to zero, a limit evaluated and compared with its value, a sign decided
from the symbols' assumptions. Nothing here compares printed strings, and a helper answers False
(never raises) when sympy cannot decide, so an unproved step shows up as a failed step.
"""

from __future__ import annotations

import itertools
from typing import Hashable, Iterable, Mapping, Sequence, TypeVar

import sympy as sp

K = TypeVar("K", bound=Hashable)

ALPHA = sp.Symbol("alpha", positive=True)
"""The inverse width of a quadratic head; the paper's limits take it to infinity."""


def is_zero(expr: sp.Expr) -> bool:
    """True when sympy reduces `expr` to 0.

    Tries the cheap normal forms first (exponentials split by `power_exp`, then one common
    denominator) and falls back on `simplify`, which is slow on the sums of exponentials a
    softmax produces.
    """
    expr = sp.sympify(expr)
    expanded = sp.expand(expr, power_exp=True)
    if expanded == 0:
        return True
    numerator, _ = sp.fraction(sp.together(expanded))
    if sp.expand(numerator, power_exp=True) == 0:
        return True
    return sp.simplify(expr) == 0


def equal(lhs: sp.Expr, rhs: sp.Expr) -> bool:
    """True when sympy proves lhs == rhs (their difference reduces to 0)."""
    return is_zero(sp.sympify(lhs) - sp.sympify(rhs))


def matrices_equal(lhs: sp.MatrixBase, rhs: sp.MatrixBase) -> bool:
    """True when the shapes agree and every entry of lhs - rhs reduces to 0."""
    if lhs.shape != rhs.shape:
        return False
    return all(is_zero(entry) for entry in (lhs - rhs))


def holds(relation: sp.Basic) -> bool:
    """True when sympy evaluates a relation (or a boolean) to `true` outright."""
    return sp.sympify(relation) is sp.true


def is_positive(expr: sp.Expr) -> bool:
    """True when the symbols' assumptions make `expr` (after simplify) positive."""
    return sp.simplify(expr).is_positive is True


def is_negative(expr: sp.Expr) -> bool:
    """True when the symbols' assumptions make `expr` (after simplify) negative."""
    return sp.simplify(expr).is_negative is True


def is_nonnegative(expr: sp.Expr) -> bool:
    """True when the symbols' assumptions make `expr` (after simplify) nonnegative."""
    return sp.simplify(expr).is_nonnegative is True


def limit_is(expr: sp.Expr, var: sp.Symbol, value, point=sp.oo) -> bool:
    """True when sympy's `limit` of expr as var -> point evaluates to exactly `value`."""
    try:
        found = sp.limit(expr, var, point)
    except NotImplementedError:
        return False
    return found == sp.sympify(value)


def softmax(scores: Mapping[K, sp.Expr]) -> dict[K, sp.Expr]:
    """The softmax of a head's scores over its keys: exp(s_k) / sum_j exp(s_j)."""
    weights = {key: sp.exp(score) for key, score in scores.items()}
    normaliser = sp.Add(*weights.values())
    return {key: weight / normaliser for key, weight in weights.items()}


def tends_to_one_hot(
    scores: Mapping[K, sp.Expr], target: K, var: sp.Symbol = ALPHA, every_entry: bool = False
) -> bool:
    """True when the softmax of `scores` tends to the one-hot at `target` as var -> oo.

    The softmax entries are positive and sum to 1, so p_target -> 1 already forces every other
    entry to 0 (0 < p_k <= 1 - p_target); that one limit is what is computed unless
    `every_entry` asks for each entry's limit as well (slower: one limit per key).
    """
    probabilities = softmax(scores)
    if not limit_is(probabilities[target], var, 1):
        return False
    if not every_entry:
        return True
    return all(
        limit_is(p, var, 0) for key, p in probabilities.items() if key != target
    )


def box(lower: Sequence[int], upper: Sequence[int]) -> list[tuple[int, ...]]:
    """The integer offsets of the box lower <= delta <= upper (inclusive), row-major."""
    axes = [range(lo, hi + 1) for lo, hi in zip(lower, upper)]
    return list(itertools.product(*axes))


def centred_window(size: int, dims: int) -> list[tuple[int, ...]]:
    """The offsets {-(size//2), ..., size//2}^dims of an odd size x ... x size window."""
    half = size // 2
    return box((-half,) * dims, (half,) * dims)


def squared_norm(vector: Iterable[sp.Expr]) -> sp.Expr:
    """||v||^2 as a sympy expression."""
    return sp.Add(*(component**2 for component in vector))


def real_symbols(name: str, count: int) -> tuple[sp.Symbol, ...]:
    """`count` real symbols name_1, ..., name_count (coordinates of an offset or centre)."""
    return tuple(sp.Symbol(f"{name}_{i + 1}", real=True) for i in range(count))


def numeric(expr: sp.Expr, digits: int = 30) -> sp.Float:
    """An exact expression evaluated by mpmath to `digits` significant digits.

    Used only for the explicit-instance steps, whose margins are many orders of magnitude above
    the evaluation's precision.
    """
    return sp.N(expr, digits)


def numeric_softmax(scores: Mapping[K, sp.Expr], digits: int = 30) -> dict[K, sp.Float]:
    """The softmax of exact scores evaluated to `digits` digits, each exponential once."""
    weights = {key: numeric(sp.exp(score), digits) for key, score in scores.items()}
    normaliser = sp.Add(*weights.values())
    return {key: weight / normaliser for key, weight in weights.items()}
