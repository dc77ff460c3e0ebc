"""Finite-alpha and floating-point bounds (new: the paper proves only the alpha -> oo limit).

tail-bound: a quadratic head with integer centre Delta, over any finite set of integer keys that
contains q + Delta, misses the one-hot by 1 - p_Delta <= B_n(alpha) = 1 - tanh(alpha/2)^n.
output-error-bound: hence a converted convolution is off by at most
2 B_n(alpha) max|x| ||W[o]||_1 at every output. rounding-bound: the classical gamma_n bound on a
floating-point sum or dot product, so verify/ can tell the bounds' error from rounding.
"""

from __future__ import annotations

import itertools
import math
import numbers
import random
import sys
from fractions import Fraction

import sympy as sp
from sympy.simplify.simplify import factor_sum

from spec import geometry, layers, quadratic
from spec.proof import (
    ALPHA,
    box,
    centred_window,
    equal,
    is_negative,
    is_nonnegative,
    is_positive,
    limit_is,
    numeric,
    numeric_softmax,
    softmax,
    squared_norm,
)
from spec.statement import Statement, Step

# --- the bound as sympy expressions -----------------------------------------------------------

Z = sp.Symbol("z", positive=True)
"""z = exp(-alpha), in (0, 1) for alpha > 0: the variable of the cancellation-free form."""


def tail_bound_expr(dims: int) -> sp.Expr:
    """B_n(alpha) = 1 - tanh(alpha/2)^n."""
    return 1 - sp.tanh(ALPHA / 2) ** dims


def stable_tail_bound_expr(dims: int) -> sp.Expr:
    """B_n in z = exp(-alpha): ((1+z)^n - (1-z)^n)/(1+z)^n, whose numerator has only positive
    coefficients, so evaluating it in floating point never cancels (1 - tanh^n would round to
    0 for alpha > ~37 and claim an exact one-hot)."""
    return sp.expand((1 + Z) ** dims - (1 - Z) ** dims) / (1 + Z) ** dims


def theta_expr(radius: int) -> sp.Expr:
    """theta_M(alpha) = sum_{m = -M}^{M} exp(-alpha m^2), the 1D Gaussian sum of a window."""
    return sp.Add(*(sp.exp(-ALPHA * m**2) for m in range(-radius, radius + 1)))


def tail_expr(offsets) -> sp.Expr:
    """1 - p_Delta = T_S/(1 + T_S) for the keys at `offsets` relative to Delta (0 among them)."""
    tail = sp.Add(*(sp.exp(-ALPHA * squared_norm(d)) for d in offsets if any(d)))
    return tail / (1 + tail)


_SUPPORTED_DIMS = (1, 2, 3)
_STABLE = {
    n: sp.lambdify(Z, stable_tail_bound_expr(n), modules="math") for n in _SUPPORTED_DIMS
}


# --- validation -------------------------------------------------------------------------------


def _real(name: str, value) -> float:
    """`value` as a float, or a ValueError naming the argument (bools and NaN rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return value


def _nonnegative_finite(name: str, value) -> float:
    value = _real(name, value)
    if not (0.0 <= value < math.inf):
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return value


def _dims(dims) -> int:
    if isinstance(dims, bool) or not isinstance(dims, numbers.Integral):
        raise ValueError(f"dims must be an int in {_SUPPORTED_DIMS}, got {dims!r}")
    if dims not in _SUPPORTED_DIMS:
        raise ValueError(f"dims must be an int in {_SUPPORTED_DIMS}, got {dims!r}")
    return int(dims)


# --- public bounds ----------------------------------------------------------------------------


def tail_bound(alpha: float, dims: int = 2) -> float:
    """B_n(alpha) = 1 - tanh(alpha/2)^dims >= 1 - p_Delta for any head of the conversion.

    Evaluated in the cancellation-free form stable_tail_bound_expr (lambdified with math) and
    rounded up past the evaluation's own rounding (within 16 units of roundoff: exp, the powers
    of z, at most four sums and one division of positive terms), so that the float returned is an
    upper bound itself, where for large alpha the true tail is within an ulp of B_n. Where
    exp(-alpha) is subnormal or underflows (alpha > ~708) B_n <= 2 n exp(-alpha) is returned from
    exp(-alpha)'s absolute error (at most the smallest subnormal): positive wherever the true tail
    is. alpha = inf gives 0.0.

    Raises:
        ValueError: alpha is not a real number > 0 (NaN included), or dims not in 1..3.
    """
    alpha = _real("alpha", alpha)
    dims = _dims(dims)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if alpha == math.inf:
        return 0.0
    z = math.exp(-alpha)
    if z < sys.float_info.min:  # subnormal: only an absolute error, of one subnormal step
        return math.nextafter(2 * dims * (z + math.ulp(0.0)), math.inf)
    value = float(_STABLE[dims](z))
    return math.nextafter(value * (1 + 32 * sys.float_info.epsilon / 2), math.inf)


def output_error_bound(
    alpha: float, kernel_l1: float, max_abs_input: float, dims: int = 2
) -> float:
    """2 B_n(alpha) * kernel_l1 * max_abs_input >= |MHSA(x) - Conv(x)| at every output.

    kernel_l1 = max over output channels o of sum |W[o]| (its in/groups x kernel entries);
    max_abs_input = max |x| over the input (padded tokens are copies of it or 0).
    """
    kernel_l1 = _nonnegative_finite("kernel_l1", kernel_l1)
    max_abs_input = _nonnegative_finite("max_abs_input", max_abs_input)
    return 2.0 * tail_bound(alpha, dims) * kernel_l1 * max_abs_input


_UNIT_ROUNDOFF = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "bfloat16": 2.0**-8,
    "float16": 2.0**-11,
}

_N, _U = sp.symbols("n u", positive=True)
GAMMA_EXPR = _N * _U / (1 - _N * _U)
"""gamma_n = n u / (1 - n u) (Higham, Accuracy and Stability, eq. 3.8)."""
_GAMMA = sp.lambdify((_N, _U), GAMMA_EXPR, modules="math")


def unit_roundoff(name: str) -> float:
    """The unit roundoff u = 2^-p (p the significand bits) of a floating-point type by name.

    Raises:
        TypeError: name is not a str.
        ValueError: an unknown name; the message lists the allowed ones.
    """
    return _UNIT_ROUNDOFF[_dtype_name("name", name)]


def _dtype_name(argument: str, name) -> str:
    """`name` if it is a known floating-point type name, else an error naming `argument`."""
    if not isinstance(name, str):
        raise TypeError(
            f"{argument} must be a str, one of {sorted(_UNIT_ROUNDOFF)}, "
            f"got {type(name).__name__} {name!r}"
        )
    if name not in _UNIT_ROUNDOFF:
        raise ValueError(f"{argument} must be one of {sorted(_UNIT_ROUNDOFF)}, got {name!r}")
    return name


def gamma(n: int, dtype_eps: float) -> float:
    """gamma_n = n u/(1 - n u) for u = dtype_eps, the unit roundoff (unit_roundoff(name), i.e.
    half of torch.finfo(dtype).eps; passing the full eps only loosens the bound).

    Raises:
        ValueError: n not an int >= 1, dtype_eps not in (0, 1), or n * dtype_eps >= 1.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    u = _real("dtype_eps", dtype_eps)
    if not 0.0 < u < 1.0:
        raise ValueError(f"dtype_eps must be in (0, 1), got {u}")
    if int(n) * u >= 1.0:
        raise ValueError(f"n * dtype_eps must be < 1, got {int(n) * u}")
    return float(_GAMMA(int(n), u))


def rounding_bound(n_terms: int, abs_sum: float, dtype_name: str) -> float:
    """gamma_n * abs_sum: the rounding error allowed for a sum or dot product of n_terms terms
    whose absolute values sum to abs_sum, computed in dtype_name (any summation order).

    Raises:
        ValueError: n_terms not an int >= 1 or n_terms * u >= 1; abs_sum not finite and >= 0;
            dtype_name unknown (the message lists the allowed ones).
        TypeError: dtype_name is not a str.
    """
    abs_sum = _nonnegative_finite("abs_sum", abs_sum)
    u = _UNIT_ROUNDOFF[_dtype_name("dtype_name", dtype_name)]
    if isinstance(n_terms, bool) or not isinstance(n_terms, numbers.Integral) or n_terms < 1:
        raise ValueError(f"n_terms must be an int >= 1, got {n_terms!r}")
    if int(n_terms) * u >= 1.0:
        raise ValueError(
            f"n_terms must be < 1/u = {1 / u:.0f} for {dtype_name} (n_terms * u must be < 1), "
            f"got {n_terms}"
        )
    return gamma(int(n_terms), u) * abs_sum


# --- tail-bound -------------------------------------------------------------------------------

_ALPHAS = (sp.Rational(1, 4), sp.Rational(1, 2), 1, 2, 4, 8)
_CENTRE_FACTOR = sp.Rational(116, 100)


def _tail_is_odds() -> bool:
    """Relative to Delta the centre's weight is exp(0) = 1, so p_Delta = 1/(1 + T_S) and
    1 - p_Delta = T_S/(1 + T_S) (four symbolic positive weights for S minus 0)."""
    weights = sp.symbols("w1:5", positive=True)
    tail = sp.Add(*weights)
    p_centre = softmax({0: sp.Integer(0), **{k + 1: sp.log(w) for k, w in enumerate(weights)}})[0]
    return equal(1 - p_centre, tail / (1 + tail))


def _terms_positive() -> bool:
    """exp(-alpha m) > 0, so T_S only grows with S: T_S <= sum over Z^n minus the 0 term."""
    m = sp.Symbol("m", real=True)
    return is_positive(sp.exp(-ALPHA * m))


def _box_factorises_symbolic() -> bool:
    """sum over [-M, M]^2 of exp(-alpha(i^2 + j^2)) = theta_M^2, M symbolic: the exponential
    splits, then the inner and outer constant factors leave their sums."""
    i, j = sp.symbols("i j", integer=True)
    radius = sp.Symbol("M", integer=True, positive=True)
    split = equal(sp.exp(-ALPHA * (i**2 + j**2)), sp.exp(-ALPHA * i**2) * sp.exp(-ALPHA * j**2))
    inner = factor_sum(sp.Sum(sp.exp(-ALPHA * i**2) * sp.exp(-ALPHA * j**2), (i, -radius, radius)))
    both = factor_sum(sp.Sum(inner, (j, -radius, radius)))
    theta_i = sp.Sum(sp.exp(-ALPHA * i**2), (i, -radius, radius))
    theta_j = sp.Sum(sp.exp(-ALPHA * j**2), (j, -radius, radius))
    return split and equal(both, theta_i * theta_j)


def _box_factorises_explicit() -> bool:
    """The same on explicit boxes: [-3, 3]^2 and [-2, 2]^3."""
    return all(
        equal(
            sp.Add(*(sp.exp(-ALPHA * squared_norm(d)) for d in centred_window(2 * m + 1, n))),
            theta_expr(m) ** n,
        )
        for m, n in ((3, 2), (2, 3))
    )


def _square_dominates() -> bool:
    """m^2 - m >= 0 for integer m >= 1 and exp(-alpha x) decreases, so
    sum_{m>=1} exp(-alpha m^2) <= sum_{m>=1} exp(-alpha m)."""
    m = sp.Symbol("m", integer=True, positive=True)
    x = sp.Symbol("x", real=True)
    return is_nonnegative(m**2 - m) and is_negative(sp.diff(sp.exp(-ALPHA * x), x))


def _geometric_series() -> bool:
    """sum_{m>=1} exp(-alpha m) = 1/(e^alpha - 1) (sympy summation of z^m at z = e^-alpha)."""
    m = sp.Symbol("m", integer=True, positive=True)
    series = sp.summation(Z**m, (m, 1, sp.oo)).subs(Z, sp.exp(-ALPHA))
    return equal(sp.simplify(series), 1 / (sp.exp(ALPHA) - 1))


def _theta_below_coth() -> bool:
    """theta = 1 + 2 sum_{m>=1} exp(-alpha m^2) <= 1 + 2/(e^alpha - 1) = coth(alpha/2)."""
    return equal((1 + 2 / (sp.exp(ALPHA) - 1) - sp.coth(ALPHA / 2)).rewrite(sp.exp), 0)


def _odds_increasing() -> bool:
    """d/dt t/(1 + t) = 1/(1 + t)^2 > 0: a larger tail sum bounds 1 - p_Delta from above."""
    t = sp.Symbol("t", positive=True)
    return is_positive(sp.diff(t / (1 + t), t))


def _closed_form() -> bool:
    """With T = coth(alpha/2)^n - 1: T/(1 + T) = 1 - tanh(alpha/2)^n (n symbolic)."""
    n = sp.Symbol("n", integer=True, positive=True)
    tail = sp.coth(ALPHA / 2) ** n - 1
    return equal((tail / (1 + tail)).rewrite(sp.tanh), 1 - sp.tanh(ALPHA / 2) ** n)


def _two_dims_is_sech_squared() -> bool:
    """B_2(alpha) = sech(alpha/2)^2."""
    return equal(tail_bound_expr(2), sp.sech(ALPHA / 2) ** 2)


def _stable_form_agrees() -> bool:
    """The lambdified form equals 1 - tanh(alpha/2)^n at z = e^-alpha, and its numerator's
    coefficients are all positive (n = 1, 2, 3)."""
    for n in _SUPPORTED_DIMS:
        stable = stable_tail_bound_expr(n).subs(Z, sp.exp(-ALPHA))
        if not equal((tail_bound_expr(n) - stable).rewrite(sp.exp), 0):
            return False
        numerator = sp.Poly(sp.expand((1 + Z) ** n - (1 - Z) ** n), Z)
        if not all(c > 0 for c in numerator.coeffs()):
            return False
    return True


def _ratios(offsets, dims: int) -> list[sp.Float]:
    """B_n(alpha)/(1 - p_Delta) at each alpha of _ALPHAS, 30 significant digits."""
    exact = tail_expr(offsets)
    bound = tail_bound_expr(dims)
    return [numeric((bound / exact).subs(ALPHA, a)) for a in _ALPHAS]


def _tight_at_centre() -> bool:
    """Centre of a 15x15 grid: 1 <= B_2/(1 - p_Delta) <= 1.16 at alpha in {1/4, ..., 8}."""
    return all(1 <= r <= _CENTRE_FACTOR for r in _ratios(centred_window(15, 2), 2))


def _ratio_tends_to_one() -> bool:
    """Centre of a 15x15 grid: B_2/(1 - p_Delta) -> 1 as alpha -> oo (limit; the grid's
    tail written as theta_7^2 - 1, the box factorisation above)."""
    theta = theta_expr(7)
    tail = theta**2 - 1
    return limit_is(tail_bound_expr(2) * (1 + tail) / tail, ALPHA, 1)


def _valid_at_corner() -> bool:
    """Corner of a 15x15 grid (keys 0..14 from Delta on each axis, a quarter of the
    neighbours): the bound still holds, within 2x, at alpha in {1/4, ..., 8}."""
    return all(1 <= r <= 2 for r in _ratios(box((0, 0), (14, 14)), 2))


def _valid_in_1d_and_3d() -> bool:
    """n = 1 (centre of 15 keys) and n = 3 (centre of a 7x7x7 window): B_n >= 1 - p_Delta."""
    return all(r >= 1 for r in _ratios(centred_window(15, 1), 1)) and all(
        r >= 1 for r in _ratios(centred_window(7, 3), 3)
    )


TAIL_BOUND = Statement(
    id="tail-bound",
    reference="new",
    statement=(
        "For any finite set S of integer offsets in Z^n (relative to the head's integer centre "
        "Delta) with 0 in S and alpha > 0: 1 - p_Delta = T_S/(1 + T_S) <= B_n(alpha) = "
        "1 - tanh(alpha/2)^n (sech^2(alpha/2) for n = 2); tight: at the centre of a 15x15 grid "
        "B_2/(1 - p_Delta) is within [1, 1.16] at alpha in {1/4, 1/2, 1, 2, 4, 8} and -> 1 as "
        "alpha -> oo; at the grid's corner it is within [1, 2] (argument symbolic; tightness "
        "on these instances, 30-digit evaluation of exact expressions)"
    ),
    hypotheses=(
        "keys q + d for d in S integer offsets; Delta an integer shift; 0 in S (the key "
        "q + Delta exists, padded tokens included)",
        "alpha > 0; n in {1, 2, 3}",
    ),
    proof=(
        Step("1 - p_Delta = T_S/(1 + T_S) (symbolic)", _tail_is_odds),
        Step("terms are positive, so T_S <= theta(alpha)^n - 1 (symbolic)", _terms_positive),
        Step("box sum over [-M, M]^2 = theta_M^2 (symbolic M)", _box_factorises_symbolic),
        Step("box sum = theta_M^n on [-3, 3]^2 and [-2, 2]^3 (explicit)", _box_factorises_explicit),
        Step("exp(-alpha m^2) <= exp(-alpha m) for integer m >= 1 (symbolic)", _square_dominates),
        Step("sum_{m>=1} exp(-alpha m) = 1/(e^alpha - 1) (summation)", _geometric_series),
        Step("1 + 2/(e^alpha - 1) = coth(alpha/2), so theta <= coth(alpha/2) (symbolic)",
             _theta_below_coth),
        Step("t/(1 + t) is increasing (symbolic)", _odds_increasing),
        Step("1 - 1/(1 + coth^n - 1) = 1 - tanh^n (symbolic n)", _closed_form),
        Step("B_2 = sech^2(alpha/2) (symbolic)", _two_dims_is_sech_squared),
        Step("cancellation-free form used by tail_bound = B_n, n = 1, 2, 3 (symbolic)",
             _stable_form_agrees),
        Step("centre of a 15x15 grid: 1 <= B_2/(1 - p_Delta) <= 1.16, alpha in {1/4, ..., 8} "
             "(exact, 30 digits)", _tight_at_centre),
        Step("centre of a 15x15 grid: B_2/(1 - p_Delta) -> 1 (limit)", _ratio_tends_to_one),
        Step("corner of a 15x15 grid: 1 <= B_2/(1 - p_Delta) <= 2, alpha in {1/4, ..., 8} "
             "(exact, 30 digits)", _valid_at_corner),
        Step("n = 1 (15 keys) and n = 3 (7x7x7): B_n >= 1 - p_Delta at the centre "
             "(exact, 30 digits)", _valid_in_1d_and_3d),
    ),
)


# --- output-error-bound -----------------------------------------------------------------------


def _l1_gap_to_one_hot() -> bool:
    """For probabilities p (p_0 = 1 - sum of the others, all >= 0): sum_k |p_k - e_k| =
    2 (1 - p_0) (symbolic, 2 to 6 keys)."""
    for size in range(2, 7):
        others = sp.symbols(f"p1:{size}", nonnegative=True)
        p_centre = 1 - sp.Add(*others)
        gap = sp.Abs(p_centre - 1) + sp.Add(*(sp.Abs(p) for p in others))
        if not equal(gap, 2 * (1 - p_centre)):
            return False
    return True


def padded_source(index: int, length: int, before: int, mode: str) -> int | None:
    """The input index that padded position `index` copies along one axis (None: a zero token), for
    torch's padding modes."""
    i = index - before
    if 0 <= i < length:
        return i
    if mode == "zeros":
        return None
    if mode == "replicate":
        return min(max(i, 0), length - 1)
    if mode == "circular":
        return i % length
    if mode == "reflect":  # mirror without repeating the edge: ... 2 1 [0 1 2 ... L-1] L-2 ...
        period = 2 * (length - 1)
        i = abs(i) % period if period else 0
        return period - i if i >= length else i
    raise ValueError(f"mode must be one of zeros, reflect, replicate, circular, got {mode!r}")


def _padded_tokens_bounded() -> bool:
    """Padded tokens are inputs or 0 in every mode, so max |padded x| <= max |x| (1D: L <= 5,
    padding < L, symbolic x)."""
    for length in range(2, 6):
        x = sp.symbols(f"x0:{length}", real=True)
        allowed = set(x) | {sp.Integer(0)}
        modes = ("zeros", "reflect", "replicate", "circular")
        for before, mode in itertools.product(range(length), modes):
            for index in range(length + 2 * before):
                source = padded_source(index, length, before, mode)
                value = sp.Integer(0) if source is None else x[source]
                if value not in allowed or (mode != "zeros" and source is None):
                    return False
    return True


def _random_rational(rng: random.Random, denominator: int) -> sp.Rational:
    """A seeded rational in [-9/denominator, 9/denominator]."""
    return sp.Rational(rng.randint(-9, 9), denominator)


def _random_probabilities(rng: random.Random, keys) -> dict:
    """Seeded positive rational probabilities over the keys (they sum to exactly 1)."""
    weights = [rng.randint(1, 20) for _ in keys]
    return {key: sp.Rational(w, sum(weights)) for key, w in zip(keys, weights)}


def _random_kernel(rng: random.Random, shifts, d_in: int, d_out: int) -> dict:
    """Seeded rational kernel slices W[Delta] (D_in x D_out)."""
    return {s: sp.Matrix(d_in, d_out, lambda *_: _random_rational(rng, 7)) for s in shifts}


def _mhsa_minus_conv(heads, kernel, at_shifts) -> sp.Matrix:
    """MHSA (W_val^(h) = W[Delta^(h)], W_out^(h) = I, bias cancelled) minus the conv, which
    reads at_shifts[Delta] = x_{q + Delta}; heads are in the kernel's shift order."""
    slices = list(kernel.values())
    identity = [sp.eye(slices[0].shape[1])] * len(slices)
    return layers.multi_head(heads, slices, identity) - layers.convolve(at_shifts, kernel)


def _max_abs(tokens) -> sp.Expr:
    return max(abs(v) for token in tokens.values() for v in token)


def _per_output_bound_instances() -> bool:
    """Heads with any probabilities p^(h): |MHSA - Conv|_o <= sum_h 2(1 - p^(h)_Delta) max|x|
    ||W[Delta^(h)][:, o]||_1 (60 seeded exact rational instances, 3x3 kernel, 2 -> 2 channels,
    keys a 5x5 window, bias cancelled)."""
    rng = random.Random(0)
    shifts, keys = geometry.shifts((3, 3)), centred_window(5, 2)
    for _ in range(60):
        x = {k: sp.Matrix([[_random_rational(rng, 9) for _ in range(2)]]) for k in keys}
        kernel = _random_kernel(rng, shifts, 2, 2)
        probabilities = {s: _random_probabilities(rng, keys) for s in shifts}
        heads = [layers.attend(probabilities[s], x) for s in shifts]
        error = _mhsa_minus_conv(heads, kernel, x)
        for o in range(2):
            bound = sp.Add(*(
                2 * (1 - probabilities[s][s]) * _max_abs(x) * sum(abs(v) for v in kernel[s][:, o])
                for s in shifts
            ))
            if not abs(error[0, o]) <= bound:
                return False
    return True


def _converted_layer_instances() -> bool:
    """End to end: quadratic heads at alpha on a zero-padded 4x4 input, 3x3 conv, 2 -> 2
    channels, keys all padded tokens: |MHSA - Conv| <= 2 B_2(alpha) max|x| ||W[o]||_1 at every
    output, alpha in {1, 3} (exact rational x, W; 30-digit evaluation)."""
    rng = random.Random(1)
    size, pad = 4, 1
    shifts = geometry.shifts((3, 3))

    def inside(position) -> bool:
        return all(pad <= c < pad + size for c in position)

    x = {
        p: sp.Matrix([[_random_rational(rng, 9) if inside(p) else 0 for _ in range(2)]])
        for p in box((0, 0), (size + 2 * pad - 1,) * 2)
    }
    kernel = _random_kernel(rng, shifts, 2, 2)
    kernel_l1 = max(sum(abs(v) for s in shifts for v in kernel[s][:, o]) for o in range(2))
    queries = geometry.query_positions(size, 3, 1, pad, pad)
    for alpha in (1, 3):
        bound = numeric(2 * tail_bound_expr(2).subs(ALPHA, alpha) * _max_abs(x) * kernel_l1)
        for q in itertools.product(queries, queries):
            relative = {k: tuple(kc - qc for kc, qc in zip(k, q)) for k in x}
            heads = [
                layers.attend(
                    numeric_softmax(
                        {k: quadratic.gaussian_score(alpha, s, d) for k, d in relative.items()}
                    ),
                    x,
                )
                for s in shifts
            ]
            window = {s: x[tuple(qc + sc for qc, sc in zip(q, s))] for s in shifts}
            error = _mhsa_minus_conv(heads, kernel, x) if False else (
                layers.multi_head(heads, list(kernel.values()), [sp.eye(2)] * len(shifts))
                - layers.convolve(window, kernel)
            )
            if not all(abs(e) <= bound for e in error):
                return False
    return True


OUTPUT_ERROR_BOUND = Statement(
    id="output-error-bound",
    reference="new",
    statement=(
        "A conv with weight W converted with every head at the same alpha satisfies "
        "|MHSA(x) - Conv(x)| <= 2 B_n(alpha) max|x| ||W[o]||_1 at every output position and "
        "channel o, since sum_k |p_k - e_k| = 2(1 - p_Delta) <= 2 B_n(alpha) per head "
        "(identity symbolic; triangle inequality on exact instances and end to end on a padded "
        "4x4 input)"
    ),
    hypotheses=(
        "tail-bound",
        "padded tokens (zeros, reflect, replicate, circular) are copies of x or 0",
        "bias copied from the conv (cancels)",
        "||W[o]||_1 over the in/groups x kernel entries of output channel o",
    ),
    proof=(
        Step("sum_k |p_k - e_k| = 2(1 - p_Delta) (symbolic, 2..6 keys)", _l1_gap_to_one_hot),
        Step("padded tokens are inputs or 0 (all modes; 1D instances)", _padded_tokens_bounded),
        Step("triangle inequality per output channel (60 exact rational instances)",
             _per_output_bound_instances),
        Step("end to end: quadratic heads on a zero-padded 4x4 input, alpha in {1, 3} "
             "(exact inputs, 30 digits)", _converted_layer_instances),
    ),
)


# --- rounding-bound ---------------------------------------------------------------------------

_BITS = {"float64": 53, "float32": 24, "float16": 11, "bfloat16": 8}


def _higham_instances() -> bool:
    """(1+u)^n - 1, 1 - (1-u)^n and (1-u)^-n - 1 are <= gamma_n, exactly, for n in {2, 5, 50}
    and u in {2^-24, 2^-53}."""
    for n, bits in itertools.product((2, 5, 50), (24, 53)):
        u = sp.Rational(1, 2**bits)
        bound = GAMMA_EXPR.subs({_N: n, _U: u})
        for error in ((1 + u) ** n - 1, 1 - (1 - u) ** n, (1 - u) ** -n - 1):
            if not error <= bound:
                return False
    return True


def _log_below_identity() -> bool:
    """log(1 + u) <= u for u >= 0: h = u - log(1 + u) has h(0) = 0 and h' = u/(1 + u) >= 0;
    so (1 + u)^n <= e^(n u)."""
    u = sp.Symbol("u", nonnegative=True)
    h = u - sp.log(1 + u)
    return h.subs(u, 0) == 0 and is_nonnegative(sp.diff(h, u))


def _exp_below_gamma() -> bool:
    """e^x <= 1/(1 - x) on [0, 1): g = (1 - x) e^x has g(0) = 1 and g' = -x e^x <= 0;
    with x = n u this gives (1 + u)^n - 1 <= e^(n u) - 1 <= gamma_n (symbolic)."""
    x = sp.Symbol("x", nonnegative=True)
    g = (1 - x) * sp.exp(x)
    return g.subs(x, 0) == 1 and is_nonnegative(-sp.diff(g, x)) and equal(
        1 / (1 - _N * _U) - 1, GAMMA_EXPR
    )


def _first_order() -> bool:
    """gamma_n and (1 + u)^n - 1 agree to first order (n u) and gamma_n is larger at second
    order by n(n + 1)/2 u^2 (series in u, n symbolic)."""
    n = sp.Symbol("n", integer=True, positive=True)
    u = sp.Symbol("u", positive=True)
    gamma_n = GAMMA_EXPR.subs({_N: n, _U: u})
    gap = sp.series(gamma_n - ((1 + u) ** n - 1), u, 0, 3).removeO()
    return equal(gap, n * (n + 1) / 2 * u**2) and is_positive(n * (n + 1) / 2)


def _round(value: Fraction, bits: int) -> Fraction:
    """Round to the nearest number with `bits` significand bits, ties to even (no overflow or
    underflow: the model gamma_n is stated in)."""
    if value == 0:
        return value
    exponent = math.floor(math.log2(abs(value)))
    while abs(value) >= Fraction(2) ** (exponent + 1):
        exponent += 1
    while abs(value) < Fraction(2) ** exponent:
        exponent -= 1
    scale = Fraction(2) ** (bits - 1 - exponent)
    return Fraction(round(value * scale)) / scale


def _simulated_dot_products() -> bool:
    """Dot products rounded after every operation (sequential and pairwise order) stay within
    gamma_n sum |x_i y_i| (exact rounding simulation; float64/32/16 and bfloat16,
    n in {2, 5, 50}, 20 seeded instances each)."""
    rng = random.Random(2)
    for (name, bits), n in itertools.product(_BITS.items(), (2, 5, 50)):
        gamma_n = sp.Rational(GAMMA_EXPR.subs({_N: n, _U: sp.Rational(1, 2**bits)}))
        bound_factor = Fraction(int(gamma_n.p), int(gamma_n.q))
        for _ in range(20):
            x = [_round(Fraction(rng.uniform(-4, 4)), bits) for _ in range(n)]
            y = [_round(Fraction(rng.uniform(-4, 4)), bits) for _ in range(n)]
            products = [_round(a * b, bits) for a, b in zip(x, y)]
            exact = sum(a * b for a, b in zip(x, y))
            allowed = bound_factor * sum(abs(a * b) for a, b in zip(x, y))
            for computed in (_sequential(products, bits), _pairwise(products, bits)):
                if abs(computed - exact) > allowed:
                    return False
    return True


def _sequential(terms: list[Fraction], bits: int) -> Fraction:
    total = terms[0]
    for term in terms[1:]:
        total = _round(total + term, bits)
    return total


def _pairwise(terms: list[Fraction], bits: int) -> Fraction:
    if len(terms) == 1:
        return terms[0]
    half = len(terms) // 2
    return _round(_pairwise(terms[:half], bits) + _pairwise(terms[half:], bits), bits)


ROUNDING_BOUND = Statement(
    id="rounding-bound",
    reference="new",
    statement=(
        "(Higham, Accuracy and Stability, Lemma 3.1 and eq. 3.5) A sum or dot product of n "
        "terms computed in floating point with unit roundoff u "
        "(in any order) errs by at most gamma_n sum |terms|, gamma_n = n u/(1 - n u), n u < 1 "
        "((1 + u)^n - 1 <= gamma_n symbolic via log(1 + u) <= u and e^x <= 1/(1 - x); exact on "
        "instances; dot products simulated exactly)"
    ),
    hypotheses=(
        "round to nearest, no overflow or underflow",
        "u = 2^-53, 2^-24, 2^-11, 2^-8 for float64, float32, float16, bfloat16",
        "no TF32 or other reduced-precision accumulation",
    ),
    proof=(
        Step("(1 + u)^n - 1, 1 - (1 - u)^n, (1 - u)^-n - 1 <= gamma_n "
             "(exact, n in {2, 5, 50}, u in {2^-24, 2^-53})", _higham_instances),
        Step("log(1 + u) <= u (symbolic, monotonicity)", _log_below_identity),
        Step("e^x <= 1/(1 - x) on [0, 1) and 1/(1 - n u) - 1 = gamma_n (symbolic)",
             _exp_below_gamma),
        Step("gamma_n = (1 + u)^n - 1 + n(n + 1)/2 u^2 + O(u^3) (series, n symbolic)",
             _first_order),
        Step("simulated dot products within gamma_n sum|x_i y_i| "
             "(exact rounding, 4 dtypes, n in {2, 5, 50})", _simulated_dot_products),
    ),
)

STATEMENTS = (TAIL_BOUND, OUTPUT_ERROR_BOUND, ROUNDING_BOUND)
