"""Symbolic layers at one generic query: the pieces Lemma 1 and its relatives are built from.

Everything is written at a generic query q, with tokens named by their offset delta = k - q
(key minus query), so a statement proved here holds at every query by translation. A token is a
1 x D row vector of real symbols; weights are matrices of real symbols; a head's output is the
tokens averaged under its attention probabilities.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence, TypeVar

import sympy as sp

K = TypeVar("K", bound=Hashable)


def _label(position) -> str:
    """A readable symbol label for an offset: (0, -1) -> '0,-1'."""
    if isinstance(position, tuple):
        return ",".join(str(p) for p in position)
    return str(position)


def token(name: str, position, channels: int) -> sp.Matrix:
    """The token at `position` as a 1 x channels row of real symbols name[position]_c."""
    label = _label(position)
    return sp.Matrix([[sp.Symbol(f"{name}[{label}]_{c}", real=True) for c in range(channels)]])


def tokens(name: str, positions: Sequence[K], channels: int) -> dict[K, sp.Matrix]:
    """Symbolic tokens at every position."""
    return {position: token(name, position, channels) for position in positions}


def weight(name: str, rows: int, cols: int) -> sp.Matrix:
    """A rows x cols matrix of real symbols name_r_c (a kernel slice or a projection)."""
    return sp.Matrix(rows, cols, lambda r, c: sp.Symbol(f"{name}_{r}_{c}", real=True))


def one_hot(keys: Sequence[K], target: K) -> dict[K, sp.Integer]:
    """The attention probabilities of a head that puts all its mass on `target`."""
    if target not in keys:
        raise ValueError(f"target {target!r} is not among the keys")
    return {key: sp.Integer(1 if key == target else 0) for key in keys}


def attend(probabilities: Mapping[K, sp.Expr], values: Mapping[K, sp.Matrix]) -> sp.Matrix:
    """A head's output: sum_k p_k x_k over its keys."""
    terms = [p * values[key] for key, p in probabilities.items()]
    return sum(terms[1:], terms[0])


def multi_head(
    head_outputs: Sequence[sp.Matrix],
    value_maps: Sequence[sp.Matrix],
    output_blocks: Sequence[sp.Matrix],
) -> sp.Matrix:
    """MHSA's merge: concat_h(y_h W_val^(h)) W_out, W_out stacked from the per-head blocks.

    Bias is left out: the converted layer copies the convolution's bias, so it cancels in
    every difference this module is used for.
    """
    concatenated = sp.Matrix.hstack(*(y * w for y, w in zip(head_outputs, value_maps)))
    return concatenated * sp.Matrix.vstack(*output_blocks)


def convolve(values: Mapping[K, sp.Matrix], kernel: Mapping[K, sp.Matrix]) -> sp.Matrix:
    """The convolution (cross-correlation, as torch computes it) at the query:
    sum over shifts Delta of x_{q + Delta} W[Delta]."""
    terms = [values[shift] * slice_ for shift, slice_ in kernel.items()]
    return sum(terms[1:], terms[0])
