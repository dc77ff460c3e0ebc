"""Separable heads: why a quadratic head on a grid is a Kronecker product, and its hard limit.

The isotropic score -alpha ||delta - Delta||^2 is a sum of a row term and a column term, so its
exponential is a product and its normaliser over a rows x cols grid of keys is (row sum)(column
sum): the HW x HW attention matrix is kron(R, C) of an H x H and a W x W softmax. The learned
row + column encoding splits the same way. As alpha -> oo the head attends one-hot to the key
nearest its centre, found axis by axis (a clamp) when the centre is an integer shift.
"""

from __future__ import annotations

import itertools
from typing import Callable

import sympy as sp

from spec.proof import (
    ALPHA,
    box,
    equal,
    matrices_equal,
    real_symbols,
    softmax,
    squared_norm,
    tends_to_one_hot,
)
from spec.statement import Statement, Step

# --- separable-quadratic ----------------------------------------------------------------------


def axis_attention(size: int, score: Callable[[int], sp.Expr]) -> sp.Matrix:
    """The size x size softmax matrix of a 1D head: row q holds softmax_k(score(k - q))."""
    rows = [softmax({k: score(k - q) for k in range(size)}) for q in range(size)]
    return sp.Matrix(size, size, lambda q, k: rows[q][k])


def grid_attention(rows: int, cols: int, score: Callable[[int, int], sp.Expr]) -> sp.Matrix:
    """The (rows*cols)^2 attention matrix over a row-major token grid: softmax_k score(k - q)."""
    positions = list(itertools.product(range(rows), range(cols)))
    probabilities = [
        softmax({k: score(k[0] - q[0], k[1] - q[1]) for k in positions}) for q in positions
    ]
    size = rows * cols
    return sp.Matrix(size, size, lambda q, k: probabilities[q][positions[k]])


def _score_splits() -> bool:
    """exp(-alpha ||delta - Delta||^2)
    = exp(-alpha (delta_1 - Delta_1)^2) exp(-alpha (delta_2 - Delta_2)^2)."""
    (d1, d2), (c1, c2) = real_symbols("delta", 2), real_symbols("Delta", 2)
    whole = sp.exp(-ALPHA * squared_norm((d1 - c1, d2 - c2)))
    return equal(whole, sp.exp(-ALPHA * (d1 - c1) ** 2) * sp.exp(-ALPHA * (d2 - c2) ** 2))


def _normaliser_factorises() -> bool:
    """sum_{i<3, j<2} f_i g_j = (sum_i f_i)(sum_j g_j) for symbolic f, g."""
    f, g = real_symbols("f", 3), real_symbols("g", 2)
    double = sp.Add(*(fi * gj for fi in f for gj in g))
    return equal(double, sp.Add(*f) * sp.Add(*g))


def _kronecker(rows: int, cols: int, row_score, col_score) -> bool:
    """grid_attention(score = row_score + col_score) == kron(R, C), entrywise."""
    grid = grid_attention(rows, cols, lambda d1, d2: row_score(d1) + col_score(d2))
    product = sp.kronecker_product(axis_attention(rows, row_score), axis_attention(cols, col_score))
    return matrices_equal(grid, product)


def _isotropic_kronecker() -> bool:
    """2x3 grid, symbolic alpha and Delta: the quadratic head's attention is kron(R, C)."""
    c1, c2 = real_symbols("Delta", 2)
    return _kronecker(2, 3, lambda d: -ALPHA * (d - c1) ** 2, lambda d: -ALPHA * (d - c2) ** 2)


def _learned_kronecker() -> bool:
    """2x3 grid, symbolic row table a_{delta_1} and column table b_{delta_2}: kron(R, C)."""
    a, b = sp.IndexedBase("a", real=True), sp.IndexedBase("b", real=True)
    return _kronecker(2, 3, lambda d: a[d], lambda d: b[d])


SEPARABLE_QUADRATIC = Statement(
    id="separable-quadratic",
    reference="new",
    statement=(
        "An isotropic quadratic head (or a learned row + column score) over a rows x cols grid "
        "of keys has attention kron(R, C), R and C the rows' and columns' 1D softmax matrices "
        "(score split and normaliser symbolic; Kronecker identity on a 2x3 grid, symbolic "
        "alpha, Delta and tables)"
    ),
    hypotheses=("keys = all tokens of the grid (no padding)", "row-major token order"),
    proof=(
        Step("exp of the score = row factor x column factor (symbolic)", _score_splits),
        Step("normaliser over the grid = (row sum)(column sum) (symbolic, 3x2)",
             _normaliser_factorises),
        Step("quadratic head on a 2x3 grid = kron(R, C) (symbolic alpha, Delta)",
             _isotropic_kronecker),
        Step("learned row + column scores on a 2x3 grid = kron(R, C) (symbolic tables)",
             _learned_kronecker),
    ),
)


# --- hard-limit -------------------------------------------------------------------------------


def clamp(value: int, lower: int, upper: int) -> int:
    """The integer of [lower, upper] nearest to the integer `value`."""
    return min(max(value, lower), upper)


def _distance_splits_per_axis() -> bool:
    """||k - Delta||^2 = sum_i (k_i - Delta_i)^2, so it is minimised on each axis separately."""
    k, centre = real_symbols("k", 3), real_symbols("Delta", 3)
    offset = [ki - ci for ki, ci in zip(k, centre)]
    return equal(squared_norm(offset), sp.Add(*((ki - ci) ** 2 for ki, ci in zip(k, centre))))


def _clamp_is_unique_nearest() -> bool:
    """Per axis, clamp(Delta) is the unique nearest key of [lo, hi] and every other key is at
    least 1 farther in squared distance (exhaustive: -3 <= lo <= hi <= 3, |Delta| <= 6)."""
    for lower, upper in itertools.combinations_with_replacement(range(-3, 4), 2):
        for centre in range(-6, 7):
            nearest = clamp(centre, lower, upper)
            best = (nearest - centre) ** 2
            if any(k != nearest and (k - centre) ** 2 < best + 1 for k in range(lower, upper + 1)):
                return False
    return True


def _box_nearest_is_clamp() -> bool:
    """In a 2D box the clamped key is the unique nearest and the squared-distance gap to the
    next key is >= 1 (exhaustive: boxes within [-2, 2]^2, |Delta_i| <= 4)."""
    ranges = list(itertools.combinations_with_replacement(range(-2, 3), 2))
    for (l1, u1), (l2, u2) in itertools.product(ranges, ranges):
        for centre in itertools.product(range(-4, 5), repeat=2):
            nearest = (clamp(centre[0], l1, u1), clamp(centre[1], l2, u2))
            distances = {
                k: (k[0] - centre[0]) ** 2 + (k[1] - centre[1]) ** 2
                for k in box((l1, l2), (u1, u2))
            }
            if any(k != nearest and d < distances[nearest] + 1 for k, d in distances.items()):
                return False
    return True


def _limit_at_nearest(keys, centre, nearest, every_entry: bool) -> bool:
    """softmax(-alpha ||k - Delta||^2) over the keys -> one-hot at `nearest` (limit)."""
    scores = {k: -ALPHA * squared_norm(ki - ci for ki, ci in zip(k, centre)) for k in keys}
    return tends_to_one_hot(scores, nearest, ALPHA, every_entry)


def _gap_is_integer() -> bool:
    """Integer keys and centre make every squared distance an integer (symbolic), so the
    squeeze argument of softmax-limit applies with the gap >= 1."""
    k, c = sp.symbols("k c", integer=True)
    square = (k - c) ** 2
    return square.is_integer is True and square.is_nonnegative is True


HARD_LIMIT = Statement(
    id="hard-limit",
    reference="new",
    statement=(
        "As alpha -> oo an isotropic head over a box of integer keys attends one-hot to the key "
        "nearest its integer centre Delta, i.e. Delta clamped into the box axis by axis "
        "(nearest-key claim exhaustive on small boxes; limits on a 5-key 1D window with "
        "Delta = 3 and a 3x3 box with Delta = (2, -1))"
    ),
    hypotheses=("keys and Delta integer", "alpha -> +oo"),
    proof=(
        Step("squared distance is a sum over axes (symbolic, n = 3)", _distance_splits_per_axis),
        Step("squared distances are integers (symbolic)", _gap_is_integer),
        Step("per axis, clamp is the unique nearest key, gap >= 1 "
             "(exhaustive: -3 <= lo <= hi <= 3, |Delta| <= 6)", _clamp_is_unique_nearest),
        Step("2D box: the clamped key is the unique nearest, gap >= 1 "
             "(exhaustive: boxes in [-2, 2]^2, |Delta_i| <= 4)", _box_nearest_is_clamp),
        Step("keys -2..2, Delta = 3: softmax -> one-hot at 2 (limits, every entry)",
             lambda: _limit_at_nearest([(k,) for k in range(-2, 3)], (3,), (2,), True)),
        Step("3x3 box, Delta = (2, -1): softmax -> one-hot at (1, -1) (limit)",
             lambda: _limit_at_nearest(box((-1, -1), (1, 1)), (2, -1), (1, -1), False)),
    ),
)

STATEMENTS = (SEPARABLE_QUADRATIC, HARD_LIMIT)
