"""Lemma 1 and Theorem 1: one-hot heads on the kernel's shifts make MHSA a convolution.

Convention: delta = key - query, so head h attending on shift Delta^(h) reads x_{q + Delta^(h)},
and the convolution (cross-correlation, as torch computes it) is sum_Delta x_{q+Delta} W[Delta].
The paper's Lemma 1 writes k = q - shift; that is the reflected kernel and changes nothing.
"""

from __future__ import annotations

import itertools
import math
import numbers
from typing import Sequence

import sympy as sp

from spec import geometry, layers, quadratic
from spec.proof import box, is_zero, matrices_equal
from spec.statement import Statement, Step


def heads_for_kernel(kernel_size: Sequence[int]) -> int:
    """N_h = prod(kernel): one head per kernel entry (K^2 for a K x K kernel).

    Raises:
        TypeError: kernel_size is not a tuple or list (a bare int is refused: write (K,)).
        ValueError: kernel_size is empty or holds anything but ints >= 1.
    """
    if not isinstance(kernel_size, (tuple, list)):
        raise TypeError(
            f"kernel_size must be a non-empty tuple of ints >= 1 (e.g. (3, 3), or (3,) in 1D), "
            f"got {type(kernel_size).__name__} {kernel_size!r}"
        )
    sizes = tuple(kernel_size)
    valid = all(
        isinstance(k, numbers.Integral) and not isinstance(k, bool) and k >= 1 for k in sizes
    )
    if not sizes or not valid:
        raise ValueError(f"kernel_size must be a non-empty tuple of ints >= 1, got {kernel_size!r}")
    return math.prod(int(k) for k in sizes)


def encoding_dim(dims: int) -> int:
    """D_p = dims + 1: the quadratic encoding (||delta||^2, delta_1, ..., delta_dims)."""
    if isinstance(dims, bool) or not isinstance(dims, numbers.Integral) or dims < 1:
        raise ValueError(f"dims must be an int >= 1, got {dims!r}")
    return int(dims) + 1


# --- the construction -------------------------------------------------------------------------


def _keys_around(shifts: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The window of the shifts widened by one on every side: keys the heads must ignore."""
    lower = [min(axis) - 1 for axis in zip(*shifts)]
    upper = [max(axis) + 1 for axis in zip(*shifts)]
    return box(lower, upper)


def _as_tuples(shifts: Sequence) -> list[tuple[int, ...]]:
    return [s if isinstance(s, tuple) else (s,) for s in shifts]


def mhsa_equals_conv(
    kernel: tuple[int, ...], d_in: int, d_out: int, d_h: int | None = None
) -> bool:
    """MHSA with one-hot heads on geometry.shifts(kernel) equals the convolution, symbolically.

    With d_h None the heads use the lemma's own choice (D_h = D_out, W_val^(h) = W[Delta^(h)]
    with symbolic entries, W_out^(h) = I); with d_h given, W_val^(h) (D_in x D_h) and
    W_out^(h) (D_h x D_out) are symbolic and the kernel is their product, i.e. any factorisation
    of the slices works. The tokens sit on a window wider than the kernel, so each head's
    one-hot really selects among keys it must ignore.
    """
    shifts = _as_tuples(geometry.shifts(kernel))
    if len(set(shifts)) != len(shifts) or len(shifts) != heads_for_kernel(kernel):
        return False  # heads -> shifts must be one-to-one and onto
    keys = _keys_around(shifts)
    values = layers.tokens("x", keys, d_in)
    if d_h is None:
        value_maps = [layers.weight(f"W{shift}", d_in, d_out) for shift in shifts]
        output_blocks = [sp.eye(d_out)] * len(shifts)
    else:
        value_maps = [layers.weight(f"V{h}", d_in, d_h) for h in range(len(shifts))]
        output_blocks = [layers.weight(f"O{h}", d_h, d_out) for h in range(len(shifts))]
    kernel_slices = {shift: v * o for shift, v, o in zip(shifts, value_maps, output_blocks)}
    heads = [layers.attend(layers.one_hot(keys, shift), values) for shift in shifts]
    return matrices_equal(
        layers.multi_head(heads, value_maps, output_blocks), layers.convolve(values, kernel_slices)
    )


LEMMA1 = Statement(
    id="lemma1",
    reference="Lemma 1",
    statement=(
        "With N_h = prod(K) heads mapped one-to-one to the shifts, each attending one-hot on "
        "q + Delta^(h), and W_val^(h) W_out^(h) = W[Delta^(h)], MHSA = Conv at every query "
        "(symbolic tokens and weights; instances K = 3x3 and 2x2 with D_in = D_out = 2, "
        "any factorisation with D_h = 3, and 1D K = 3)"
    ),
    hypotheses=(
        "delta = key - query; conv = cross-correlation",
        "D_h >= D_out",
        "the key q + Delta^(h) exists (padded tokens included)",
        "bias copied from the conv",
    ),
    proof=(
        Step("K = 3x3, D_in = D_out = 2, W_val = W[Delta], W_out = I (symbolic)",
             lambda: mhsa_equals_conv((3, 3), 2, 2)),
        Step("K = 2x2 (even), D_in = D_out = 2 (symbolic)", lambda: mhsa_equals_conv((2, 2), 2, 2)),
        Step("K = 3x3, any factorisation W_val (2x3) W_out (3x2) = W[Delta] (symbolic)",
             lambda: mhsa_equals_conv((3, 3), 2, 2, d_h=3)),
        Step("1D, K = 3 heads, D_in = D_out = 2 (symbolic)", lambda: mhsa_equals_conv((3,), 2, 2)),
    ),
)


# --- theorem1 ---------------------------------------------------------------------------------


def _heads_count() -> bool:
    """heads_for_kernel((K, K)) = K^2 = the number of distinct 2D shifts, K = 1..7."""
    return all(
        heads_for_kernel((k, k)) == k * k == len(set(geometry.shifts((k, k))))
        for k in range(1, 8)
    )


def _encoding_dimension() -> bool:
    """The quadratic encoding has D_p = encoding_dim(n) = n + 1 entries (3 for images)."""
    return all(
        len(quadratic.encoding(sp.symbols(f"d1:{n + 1}"))) == encoding_dim(n) == n + 1
        for n in (1, 2, 3)
    )


def _minors_vanish(matrix: sp.Matrix, order: int) -> bool:
    """Every order x order minor of `matrix` reduces to 0, i.e. rank(matrix) < order."""
    rows, cols = matrix.shape
    return all(
        is_zero(matrix.extract(list(r), list(c)).det())
        for r in itertools.combinations(range(rows), order)
        for c in itertools.combinations(range(cols), order)
    )


def _rank_at_most_head_dim() -> bool:
    """W_val (D_in x D_h) W_out (D_h x D_out) has rank <= D_h: all (D_h+1)-minors vanish
    (symbolic, D_in = D_out = 3, D_h = 1 and 2)."""
    return all(
        _minors_vanish(layers.weight("A", 3, d_h) * layers.weight("B", d_h, 3), d_h + 1)
        for d_h in (1, 2)
    )


def _slice_factorises() -> bool:
    """D_h >= D_out: W_val = [W_slice, 0] and W_out = [I; 0] give W_val W_out = W_slice
    (symbolic, D_in = D_out = 2, D_h = 3)."""
    d_in, d_out, d_h = 2, 2, 3
    w_slice = layers.weight("W", d_in, d_out)
    w_val = sp.Matrix.hstack(w_slice, sp.zeros(d_in, d_h - d_out))
    w_out = sp.Matrix.vstack(sp.eye(d_out), sp.zeros(d_h - d_out, d_out))
    return matrices_equal(w_val * w_out, w_slice)


def _first_channels_expressible() -> bool:
    """D_h < D_out: W_val = W_slice[:, :D_h], W_out = [I, 0] reproduce the first D_h output
    channels (symbolic, D_in = 2, D_h = 2, D_out = 3); the rest are what the rank bound forbids."""
    d_in, d_h, d_out = 2, 2, 3
    w_slice = layers.weight("W", d_in, d_out)
    product = w_slice[:, :d_h] * sp.Matrix.hstack(sp.eye(d_h), sp.zeros(d_h, d_out - d_h))
    return matrices_equal(product[:, :d_h], w_slice[:, :d_h])


THEOREM1 = Statement(
    id="theorem1",
    reference="Theorem 1",
    statement=(
        "MHSA with N_h = K^2 heads and D_p >= 3 expresses any K x K convolution with "
        "min(D_h, D_out) output channels: Lemma 1 with the quadratic heads of Lemma 2 "
        "(D_p = n + 1 = 3); each head's W_val W_out has rank <= D_h (symbolic instances)"
    ),
    hypotheses=(
        "Lemma 1 (lemma1)",
        "Lemma 2 (quadratic-identity, softmax-shift-invariance, softmax-limit)",
    ),
    proof=(
        Step("N_h = K^2 distinct shifts, K = 1..7 (instances)", _heads_count),
        Step("quadratic encoding has D_p = n + 1 entries, n = 1, 2, 3", _encoding_dimension),
        Step("rank(W_val W_out) <= D_h: (D_h+1)-minors vanish (symbolic, D_h = 1, 2)",
             _rank_at_most_head_dim),
        Step("D_h >= D_out: any slice factorises as [W, 0] [I; 0] (symbolic)", _slice_factorises),
        Step("D_h < D_out: the first D_h output channels are expressed (symbolic)",
             _first_channels_expressible),
    ),
)

STATEMENTS = (LEMMA1, THEOREM1)
