"""Lemma 2 and its relatives: the quadratic encoding makes a head a Gaussian around its shift.

Convention: delta = key - query. A head with centre Delta (its shift) and inverse width alpha
scores the key at offset delta by v . r_delta with r_delta = (||delta||^2, delta_1, ..., delta_n)
and v = -alpha (1, -2 Delta_1, ..., -2 Delta_n) (the paper's eq. 9 for n = 2, D_p = n + 1).
"""

from __future__ import annotations

from typing import Sequence

import sympy as sp

from spec import geometry
from spec.proof import (
    ALPHA,
    centred_window,
    equal,
    holds,
    is_negative,
    is_nonnegative,
    is_zero,
    limit_is,
    real_symbols,
    softmax,
    squared_norm,
    tends_to_one_hot,
)
from spec.statement import Statement, Step

# --- the encoding -----------------------------------------------------------------------------


def encoding(delta: Sequence[sp.Expr]) -> sp.Matrix:
    """r_delta = (||delta||^2, delta_1, ..., delta_n), a column of length D_p = n + 1."""
    return sp.Matrix([squared_norm(delta), *delta])


def query_vector(alpha: sp.Expr, centre: Sequence[sp.Expr]) -> sp.Matrix:
    """v = -alpha (1, -2 Delta_1, ..., -2 Delta_n), the head's positional query."""
    return -alpha * sp.Matrix([1, *(-2 * c for c in centre)])


def score(alpha: sp.Expr, centre: Sequence[sp.Expr], delta: Sequence[sp.Expr]) -> sp.Expr:
    """The head's score v . r_delta for the key at offset delta."""
    return (query_vector(alpha, centre).T * encoding(delta))[0, 0]


def gaussian_score(alpha: sp.Expr, centre: Sequence[sp.Expr], delta: Sequence[sp.Expr]) -> sp.Expr:
    """-alpha ||delta - Delta||^2: the score with the per-query constant removed."""
    return -alpha * squared_norm(d - c for d, c in zip(delta, centre))


def window_scores(alpha: sp.Expr, centre: Sequence[int], window) -> dict:
    """The Gaussian scores of a head centred on `centre` over a window of integer offsets."""
    return {delta: gaussian_score(alpha, centre, delta) for delta in window}


def identity_holds(dims: int) -> bool:
    """v . r_delta = -alpha(||delta - Delta||^2 - ||Delta||^2) with symbolic alpha, delta,
    Delta in `dims` dimensions, and the encoding has D_p = dims + 1 entries."""
    delta, centre = real_symbols("delta", dims), real_symbols("Delta", dims)
    claimed = -ALPHA * (
        squared_norm(d - c for d, c in zip(delta, centre)) - squared_norm(centre)
    )
    return len(encoding(delta)) == dims + 1 and equal(score(ALPHA, centre, delta), claimed)


def every_centre_one_hot(window, var: sp.Symbol = ALPHA, every_entry: bool = False) -> bool:
    """For every centre Delta in the window, softmax(-var ||delta - Delta||^2) -> one-hot at
    Delta as var -> oo."""
    return all(
        tends_to_one_hot(window_scores(var, centre, window), centre, var, every_entry)
        for centre in window
    )


# --- quadratic-identity -----------------------------------------------------------------------

QUADRATIC_IDENTITY = Statement(
    id="quadratic-identity",
    reference="Lemma 2, eq. 9",
    statement=(
        "With r_delta = (||delta||^2, delta) and v = -alpha (1, -2 Delta), "
        "v . r_delta = -alpha(||delta - Delta||^2 - ||Delta||^2), D_p = n + 1 "
        "(symbolic, n = 1, 2, 3)"
    ),
    hypotheses=("delta = key - query", "alpha > 0", "delta, Delta real"),
    proof=tuple(
        Step(f"v . r_delta = -alpha(||delta - Delta||^2 - ||Delta||^2), n = {n} (symbolic)",
             lambda n=n: identity_holds(n))
        for n in (2, 1, 3)
    ),
)


# --- softmax-shift-invariance -----------------------------------------------------------------


def _shift_invariance_four_scores() -> bool:
    """softmax(s + c) = softmax(s) entrywise for four symbolic scores."""
    s, c = real_symbols("s", 4), sp.Symbol("c", real=True)
    shifted = softmax({k: s[k] + c for k in range(4)})
    plain = softmax({k: s[k] for k in range(4)})
    return all(equal(shifted[k], plain[k]) for k in range(4))


def _shift_invariance_any_length() -> bool:
    """exp(s_k + c)/sum_{i<n} exp(s_i + c) = exp(s_k)/sum_{i<n} exp(s_i), n symbolic: exp(c)
    factors out of the sum and cancels."""
    s, c = sp.IndexedBase("s", real=True), sp.Symbol("c", real=True)
    i, k = sp.symbols("i k", integer=True, nonnegative=True)
    n = sp.Symbol("n", integer=True, positive=True)
    shifted = sp.exp(s[k] + c) / sp.Sum(sp.exp(s[i] + c), (i, 0, n - 1))
    plain = sp.exp(s[k]) / sp.Sum(sp.exp(s[i]), (i, 0, n - 1))
    return is_zero(sp.simplify(shifted - plain))


def _quadratic_constant_is_per_query() -> bool:
    """v . r_delta - (-alpha ||delta - Delta||^2) = alpha ||Delta||^2 does not depend on delta, so
    (by shift invariance) the head's softmax is that of the Gaussian score."""
    delta, centre = real_symbols("delta", 2), real_symbols("Delta", 2)
    gap = score(ALPHA, centre, delta) - gaussian_score(ALPHA, centre, delta)
    return all(is_zero(sp.diff(gap, d)) for d in delta) and equal(gap, ALPHA * squared_norm(centre))


SOFTMAX_SHIFT_INVARIANCE = Statement(
    id="softmax-shift-invariance",
    reference="Lemma 2, proof",
    statement=(
        "softmax_k(s_k + c) = softmax_k(s_k) for a per-query constant c, so the quadratic head's "
        "softmax is that of -alpha ||delta - Delta||^2 (symbolic; 4 scores and n scores)"
    ),
    hypotheses=("c independent of the key k",),
    proof=(
        Step("softmax(s + c) = softmax(s), 4 symbolic scores", _shift_invariance_four_scores),
        Step("exp(s_k + c)/sum_i exp(s_i + c) = exp(s_k)/sum_i exp(s_i), n symbolic (Sum)",
             _shift_invariance_any_length),
        Step("v . r_delta + alpha ||delta - Delta||^2 = alpha ||Delta||^2, independent of delta "
             "(symbolic)", _quadratic_constant_is_per_query),
    ),
)


# --- softmax-limit ----------------------------------------------------------------------------


def _ratio_to_centre() -> bool:
    """p_delta / p_Delta = exp(v.r_delta - v.r_Delta) = exp(-alpha ||delta - Delta||^2)."""
    delta, centre = real_symbols("delta", 2), real_symbols("Delta", 2)
    ratio = sp.exp(score(ALPHA, centre, delta)) / sp.exp(score(ALPHA, centre, centre))
    return equal(ratio, sp.exp(gaussian_score(ALPHA, centre, delta)))


def _integer_gap_at_least_one() -> bool:
    """For integer delta != Delta some coordinate k = delta_i - Delta_i is a nonzero integer,
    so ||delta - Delta||^2 - 1 = (k^2 - 1) + (the other coordinates' squares) is a sum of
    nonnegative terms (each decided separately: sympy's sign inference on the whole sum depends
    on symbol names)."""
    k = sp.Symbol("k", integer=True, nonzero=True)
    others = sp.symbols("j_1 j_2", integer=True)
    return is_nonnegative(k**2 - 1) and all(is_nonnegative(j**2) for j in others)


def _decreasing_in_gap() -> bool:
    """d/dm exp(-alpha m) = -alpha exp(-alpha m) < 0: exp(-alpha m) <= exp(-alpha) for m >= 1."""
    m = sp.Symbol("m", real=True)
    return is_negative(sp.diff(sp.exp(-ALPHA * m), m))


def _squeeze_to_one() -> bool:
    """With N other keys, each ratio <= exp(-alpha), so 1 >= p_Delta >= 1/(1 + N exp(-alpha)),
    and that lower bound tends to 1 (N symbolic)."""
    n_keys = sp.Symbol("N", integer=True, positive=True)
    return limit_is(1 / (1 + n_keys * sp.exp(-ALPHA)), ALPHA, 1)


def _each_ratio_vanishes() -> bool:
    """exp(-alpha m) -> 0 as alpha -> oo for a symbolic integer m >= 1."""
    m = sp.Symbol("m", integer=True, positive=True)
    return holds(m >= 1) and limit_is(sp.exp(-ALPHA * m), ALPHA, 0)


SOFTMAX_LIMIT = Statement(
    id="softmax-limit",
    reference="Lemma 2",
    statement=(
        "As alpha -> oo, softmax_delta(-alpha ||delta - Delta||^2) over any finite set of integer "
        "offsets containing Delta tends to the one-hot at Delta (general squeeze argument, "
        "symbolic; limits computed for every Delta of the 3x3 and 5x5 windows and a 7-point "
        "1D window)"
    ),
    hypotheses=("keys and Delta integer", "finitely many keys, Delta among them", "alpha -> +oo"),
    proof=(
        Step("p_delta / p_Delta = exp(-alpha ||delta - Delta||^2) (symbolic)", _ratio_to_centre),
        Step("||delta - Delta||^2 >= 1 for integer delta != Delta (symbolic, n = 1, 2, 3)",
             _integer_gap_at_least_one),
        Step("exp(-alpha m) is decreasing in m (symbolic)", _decreasing_in_gap),
        Step("exp(-alpha m) -> 0 for integer m >= 1 (limit, m symbolic)", _each_ratio_vanishes),
        Step("1/(1 + N exp(-alpha)) <= p_Delta <= 1 and the bound -> 1 (limit, N symbolic)",
             _squeeze_to_one),
        Step("3x3 window: p_Delta -> 1 for each of the 9 Delta (limit)",
             lambda: every_centre_one_hot(centred_window(3, 2))),
        Step("5x5 window: p_Delta -> 1 for each of the 25 Delta (limit)",
             lambda: every_centre_one_hot(centred_window(5, 2))),
        Step("7-point 1D window: every entry -> one-hot, each of the 7 Delta (limits)",
             lambda: every_centre_one_hot(centred_window(7, 1), every_entry=True)),
    ),
)


# --- generalized-encoding ---------------------------------------------------------------------


def generalized_encoding(delta: Sequence[sp.Expr]) -> sp.Matrix:
    """r_delta = (delta_1, delta_2, delta_1^2, delta_2^2, delta_1 delta_2), D_p = 5."""
    d1, d2 = delta
    return sp.Matrix([d1, d2, d1**2, d2**2, d1 * d2])


def generalized_query(precision: sp.Matrix, centre: Sequence[sp.Expr]) -> sp.Matrix:
    """v = (Sigma^-1 Delta, -a/2, -c/2, -b) for Sigma^-1 = [[a, b], [b, c]]."""
    (a, b), (_, c) = precision.tolist()
    linear = precision * sp.Matrix(centre)
    return sp.Matrix([linear[0], linear[1], -a / 2, -c / 2, -b])


def generalized_score(precision: sp.Matrix, centre, delta) -> sp.Expr:
    """The generalized head's score v . r_delta."""
    return (generalized_query(precision, centre).T * generalized_encoding(delta))[0, 0]


def _form(precision: sp.Matrix, vector: Sequence[sp.Expr]) -> sp.Expr:
    """x^T Sigma^-1 x."""
    x = sp.Matrix(vector)
    return (x.T * precision * x)[0, 0]


def _generalized_identity() -> bool:
    """v . r_delta = -(delta - Delta)^T Sigma^-1 (delta - Delta)/2 + Delta^T Sigma^-1 Delta / 2."""
    a, b, c = sp.symbols("a b c", real=True)
    precision = sp.Matrix([[a, b], [b, c]])
    delta, centre = real_symbols("delta", 2), real_symbols("Delta", 2)
    offset = [d - m for d, m in zip(delta, centre)]
    claimed = -_form(precision, offset) / 2 + _form(precision, centre) / 2
    return len(generalized_encoding(delta)) == 5 and equal(
        generalized_score(precision, centre, delta), claimed
    )


def _positive_off_centre() -> bool:
    """For SPD Sigma^-1 (a > 0, e = ac - b^2 > 0): a x^2 + 2bxy + c y^2 = a(x + b y/a)^2 + e y^2/a,
    a sum of nonnegative terms that vanishes only at x = y = 0 (symbolic)."""
    a, e = sp.symbols("a e", positive=True)
    b, x, y = sp.symbols("b x y", real=True)
    c = (e + b**2) / a
    square, rest = a * (x + b * y / a) ** 2, e * y**2 / a
    return (
        equal(a * x**2 + 2 * b * x * y + c * y**2, square + rest)
        and is_nonnegative(square)
        and is_nonnegative(rest)
    )


def _isotropic_case() -> bool:
    """Sigma^-1 = 2 alpha I gives the quadratic head's score up to a per-query constant."""
    precision = 2 * ALPHA * sp.eye(2)
    delta, centre = real_symbols("delta", 2), real_symbols("Delta", 2)
    gap = generalized_score(precision, centre, delta) - score(ALPHA, centre, delta)
    return all(is_zero(sp.diff(gap, d)) for d in delta)


def _sharpens_to_one_hot() -> bool:
    """Sigma^-1 = t M, M = [[2, 1], [1, 2]] (SPD), t -> oo: one-hot at each Delta of a 3x3
    window."""
    t = sp.Symbol("t", positive=True)
    precision = t * sp.Matrix([[2, 1], [1, 2]])
    window = centred_window(3, 2)
    return all(
        tends_to_one_hot(
            {d: -_form(precision, [di - ci for di, ci in zip(d, centre)]) / 2 for d in window},
            centre,
            t,
        )
        for centre in window
    )


def _form_ratio_vanishes() -> bool:
    """exp(-t q/2) -> 0 as t -> oo for a symbolic q > 0 (the form at any key other than Delta)."""
    t, q = sp.symbols("t q", positive=True)
    return limit_is(sp.exp(-t * q / 2), t, 0)


GENERALIZED_ENCODING = Statement(
    id="generalized-encoding",
    reference="Sec. 4, generalized quadratic encoding",
    statement=(
        "With r_delta = (delta_1, delta_2, delta_1^2, delta_2^2, delta_1 delta_2) (D_p = 5) and "
        "v = (Sigma^-1 Delta, -a/2, -c/2, -b), v . r_delta = -(delta - Delta)^T Sigma^-1 "
        "(delta - Delta)/2 + const (symbolic), and the softmax -> one-hot at Delta as Sigma -> 0 "
        "(Sigma^-1 = t [[2, 1], [1, 2]], t -> oo, every Delta of a 3x3 window)"
    ),
    hypotheses=("Sigma^-1 = [[a, b], [b, c]] symmetric positive definite", "delta = key - query"),
    proof=(
        Step("v . r_delta = -(delta - Delta)^T Sigma^-1 (delta - Delta)/2 "
             "+ Delta^T Sigma^-1 Delta/2 (symbolic)", _generalized_identity),
        Step("SPD form is a sum of nonnegative squares, zero only at delta = Delta (symbolic)",
             _positive_off_centre),
        Step("Sigma^-1 = 2 alpha I recovers the quadratic head up to a per-query constant "
             "(symbolic)", _isotropic_case),
        Step("exp(-t q/2) -> 0 for q > 0 (limit, q symbolic)", _form_ratio_vanishes),
        Step("Sigma^-1 = t [[2, 1], [1, 2]]: p_Delta -> 1 for each of the 9 Delta of a 3x3 window "
             "(limit)", _sharpens_to_one_hot),
    ),
)


# --- remark-1d --------------------------------------------------------------------------------


def _one_dimensional_identity() -> bool:
    """D_p = 2: r_delta = (delta^2, delta), v = -alpha (1, -2 Delta), score
    -alpha((delta - Delta)^2 - Delta^2)."""
    return identity_holds(1)


def _one_dimensional_limit(kernel: int) -> bool:
    """The K heads of a 1D kernel sit on geometry.shifts(K); each head's softmax over the K
    window keys tends to the one-hot at its shift (every entry's limit)."""
    window = [(delta,) for delta in geometry.shifts(kernel)]
    return len(window) == kernel and every_centre_one_hot(window, every_entry=True)


REMARK_1D = Statement(
    id="remark-1d",
    reference="Remark (1D)",
    statement=(
        "In 1D, K heads with D_p = 2 suffice: r_delta = (delta^2, delta), v = -alpha (1, -2 Delta) "
        "gives -alpha((delta - Delta)^2 - Delta^2) (symbolic) and one-hot limits on the K = 3 and "
        "K = 5 windows (every entry); Lemma 1's 1D instance is checked under lemma1"
    ),
    hypotheses=("delta = key - query", "alpha -> +oo"),
    proof=(
        Step("v . r_delta = -alpha((delta - Delta)^2 - Delta^2), D_p = 2 (symbolic)",
             _one_dimensional_identity),
        Step("K = 3: every head's softmax -> one-hot at its shift (limits)",
             lambda: _one_dimensional_limit(3)),
        Step("K = 5: every head's softmax -> one-hot at its shift (limits)",
             lambda: _one_dimensional_limit(5)),
    ),
)

STATEMENTS = (
    QUADRATIC_IDENTITY,
    SOFTMAX_SHIFT_INVARIANCE,
    SOFTMAX_LIMIT,
    REMARK_1D,
    GENERALIZED_ENCODING,
)
