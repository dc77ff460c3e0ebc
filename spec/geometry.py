"""Where a converted convolution's queries and heads sit: padding, stride and dilation.

The paper states these remarks in words only. Along one axis a convolution with kernel K,
stride s, dilation d and padding (p_before, p_after) computes output i from the padded indices
i*s + a*d, a = 0..K-1. We anchor output i's query at the padded position q_i = i*s + c with
c = d*((K-1)//2); its heads then sit on the shifts Delta_a = a*d - c (key minus query), and a
2D or 3D convolution does the same on every axis (shifts are the product of the axes' shifts, in
the weight's row-major order).

The plain-int functions below are the geometry impl/ must reproduce; verify/ compares impl's
tables against them. They take Python ints (numpy ints also pass) and raise ValueError naming
the offending argument.
"""

from __future__ import annotations

import itertools
import numbers
from typing import Sequence, Union

import sympy as sp

from spec import layers
from spec.proof import equal, matrices_equal
from spec.statement import Statement, Step

IntOrTuple = Union[int, Sequence[int]]


# --- validation -------------------------------------------------------------------------------


def _integer(name: str, value, minimum: int) -> int:
    """`value` as an int >= minimum, or a ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _per_axis(kernel: IntOrTuple, dilation: IntOrTuple) -> list[tuple[int, int]]:
    """Pair each axis's kernel size with its dilation (an int dilation applies to every axis)."""
    if isinstance(kernel, numbers.Integral) and not isinstance(kernel, bool):
        return [(_integer("kernel", kernel, 1), _integer("dilation", dilation, 1))]
    if not isinstance(kernel, (tuple, list)) or not kernel:
        raise ValueError(f"kernel must be an int or a non-empty tuple of ints, got {kernel!r}")
    dilations = (dilation,) * len(kernel) if isinstance(dilation, numbers.Integral) else dilation
    if not isinstance(dilations, (tuple, list)) or len(dilations) != len(kernel):
        raise ValueError(
            f"dilation must be an int or a tuple of {len(kernel)} ints, got {dilation!r}"
        )
    return [
        (_integer("kernel", k, 1), _integer("dilation", d, 1)) for k, d in zip(kernel, dilations)
    ]


# --- the geometry -----------------------------------------------------------------------------


def _anchor_1d(kernel: int, dilation: int) -> int:
    return dilation * ((kernel - 1) // 2)


def _shifts_1d(kernel: int, dilation: int) -> list[int]:
    c = _anchor_1d(kernel, dilation)
    return [a * dilation - c for a in range(kernel)]


def anchor(kernel: IntOrTuple, dilation: IntOrTuple = 1):
    """The query's offset c = d*((K-1)//2) inside the dilated kernel's footprint.

    An int kernel gives an int; a tuple kernel gives a tuple (one anchor per axis).
    """
    axes = _per_axis(kernel, dilation)
    anchors = tuple(_anchor_1d(k, d) for k, d in axes)
    return anchors[0] if isinstance(kernel, numbers.Integral) else anchors


def shifts(kernel: IntOrTuple, dilation: IntOrTuple = 1) -> list:
    """The heads' shifts Delta_a = a*d - c, in kernel order.

    An int kernel gives list[int]; a tuple kernel gives the product of the axes' shifts as
    tuples, row-major (the last axis fastest), i.e. the order of the weight's kernel entries.
    """
    axes = _per_axis(kernel, dilation)
    per_axis = [_shifts_1d(k, d) for k, d in axes]
    return per_axis[0] if isinstance(kernel, numbers.Integral) else list(
        itertools.product(*per_axis)
    )


def output_length(
    length: int,
    kernel: int,
    stride: int = 1,
    padding_before: int = 0,
    padding_after: int = 0,
    dilation: int = 1,
) -> int:
    """The convolution's output size along one axis: floor((L_p - d(K-1) - 1)/s) + 1.

    L_p = length + padding_before + padding_after. Raises ValueError when the dilated kernel
    does not fit in the padded input (the convolution would have no output).
    """
    length = _integer("length", length, 1)
    kernel = _integer("kernel", kernel, 1)
    stride = _integer("stride", stride, 1)
    padding_before = _integer("padding_before", padding_before, 0)
    padding_after = _integer("padding_after", padding_after, 0)
    dilation = _integer("dilation", dilation, 1)
    padded = length + padding_before + padding_after
    extent = dilation * (kernel - 1) + 1
    if extent > padded:
        raise ValueError(
            f"kernel: dilated extent {extent} exceeds the padded length {padded} "
            "(length + padding_before + padding_after)"
        )
    return (padded - extent) // stride + 1


def query_positions(
    length: int,
    kernel: int,
    stride: int = 1,
    padding_before: int = 0,
    padding_after: int = 0,
    dilation: int = 1,
) -> list[int]:
    """The padded coordinates q_i = i*s + c of the queries, one per output along the axis."""
    count = output_length(length, kernel, stride, padding_before, padding_after, dilation)
    c = _anchor_1d(kernel, dilation)
    return [i * stride + c for i in range(count)]


# --- conv-geometry ----------------------------------------------------------------------------

_INTS = dict(integer=True)


def _index_identity() -> bool:
    """q_i + Delta_a = (i s + c) + (a d - c) = i s + a d: the heads read the conv's indices."""
    i, s, a, d, c = sp.symbols("i s a d c", **_INTS)
    return equal((i * s + c) + (a * d - c), i * s + a * d)


def _shifts_scale_with_dilation() -> bool:
    """With c = d*k0 (k0 = (K-1)//2), Delta_a = a d - d k0 = d (a - k0) = d * Delta_a(d=1)."""
    a, d, k0 = sp.symbols("a d k0", **_INTS)
    return equal(a * d - d * k0, d * (a - k0))


def _small_configs():
    """Every 1D configuration with L <= 8, K <= 4, s <= 3, d <= 3, paddings <= 2 (2592)."""
    return itertools.product(range(1, 9), range(1, 5), range(1, 4), range(1, 4), range(3), range(3))


def _queries_read_the_conv_indices() -> bool:
    """Exposed functions vs the conv's definition: query q_i plus the shifts is {i s + a d}."""
    for length, k, s, d, pb, pa in _small_configs():
        if d * (k - 1) + 1 > length + pb + pa:
            continue
        deltas = shifts(k, d)
        for i, q in enumerate(query_positions(length, k, s, pb, pa, d)):
            if [q + delta for delta in deltas] != [i * s + a * d for a in range(k)]:
                return False
    return True


def _lattice_queries(length: int, k: int, s: int, d: int, pb: int, pa: int) -> list[int]:
    """By enumeration: padded positions q = c (mod s), q >= c, whose keys fit in the padding."""
    padded, c = length + pb + pa, d * ((k - 1) // 2)
    reach_after = d * (k - 1) - c
    return [
        q for q in range(padded) if q >= c and (q - c) % s == 0 and q + reach_after <= padded - 1
    ]


def _count_matches_lattice() -> bool:
    """floor((L_p - d(K-1) - 1)/s) + 1 outputs = the lattice queries (none when it is <= 0)."""
    for length, k, s, d, pb, pa in _small_configs():
        lattice = _lattice_queries(length, k, s, d, pb, pa)
        formula = (length + pb + pa - d * (k - 1) - 1) // s + 1
        if formula <= 0:
            if lattice:
                return False
            continue
        if formula != len(lattice):
            return False
        if query_positions(length, k, s, pb, pa, d) != lattice:
            return False
    return True


def _padded_tokens_reproduce_zero_padding(
    size: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[tuple[int, int], ...],
    dilation: tuple[int, ...],
) -> bool:
    """Conv with implicit zeros (its definition) = one-hot heads over explicit padded tokens.

    One channel, symbolic input and kernel. The conv reads x[i*s + a*d - p_before] (0 outside
    the input); the attention side pads the token grid with zero tokens, puts its queries at
    `query_positions` and its heads at `shifts`, all per axis.
    """
    inputs = {
        position: sp.Symbol(f"x{position}", real=True)
        for position in itertools.product(*(range(n) for n in size))
    }
    kernel_positions = list(itertools.product(*(range(k) for k in kernel)))
    kernel_values = {a: sp.Symbol(f"w{a}", real=True) for a in kernel_positions}

    padded_size = [n + pb + pa for n, (pb, pa) in zip(size, padding)]
    padded = {
        position: inputs.get(tuple(p - pb for p, (pb, _) in zip(position, padding)), sp.Integer(0))
        for position in itertools.product(*(range(n) for n in padded_size))
    }
    padded_tokens = {position: sp.Matrix([[value]]) for position, value in padded.items()}

    axes_queries = [
        query_positions(n, k, s, pb, pa, d)
        for n, k, s, (pb, pa), d in zip(size, kernel, stride, padding, dilation)
    ]
    head_shifts = shifts(tuple(kernel), tuple(dilation))
    for output, query in zip(
        itertools.product(*(range(len(q)) for q in axes_queries)),
        itertools.product(*axes_queries),
    ):
        conv = sp.Add(
            *(
                kernel_values[a]
                * inputs.get(
                    tuple(
                        i * s + a_ * d - pb
                        for i, a_, s, d, (pb, _) in zip(output, a, stride, dilation, padding)
                    ),
                    sp.Integer(0),
                )
                for a in kernel_positions
            )
        )
        heads = [
            layers.attend(
                layers.one_hot(list(padded_tokens), tuple(q + x for q, x in zip(query, delta))),
                padded_tokens,
            )
            for delta in head_shifts
        ]
        values = [sp.Matrix([[kernel_values[a]]]) for a in kernel_positions]
        identity = [sp.Matrix([[1]])] * len(kernel_positions)
        if not matrices_equal(layers.multi_head(heads, values, identity), sp.Matrix([[conv]])):
            return False
    return True


_PADDING_INSTANCES = (
    ((5,), (3,), (1,), ((1, 1),), (1,)),
    ((6,), (2,), (2,), ((0, 1),), (1,)),
    ((7,), (3,), (2,), ((2, 1),), (2,)),
    ((4,), (4,), (1,), ((2, 1),), (1,)),
    ((3, 4), (2, 3), (2, 1), ((1, 0), (1, 1)), (1, 2)),
)


def _padding_instances() -> bool:
    return all(_padded_tokens_reproduce_zero_padding(*config) for config in _PADDING_INSTANCES)


def _product_shifts() -> bool:
    """A 2D/3D kernel's shifts are the product of its axes' shifts, last axis fastest."""
    for kernel, dilation in (((3, 2), (1, 2)), ((2, 3, 1), 1), ((4, 4), (3, 1))):
        dilations = dilation if isinstance(dilation, tuple) else (dilation,) * len(kernel)
        expected = list(itertools.product(*(shifts(k, d) for k, d in zip(kernel, dilations))))
        if shifts(kernel, dilation) != expected:
            return False
    return True


CONV_GEOMETRY = Statement(
    id="conv-geometry",
    reference="Remarks (padding, stride, dilation)",
    statement=(
        "Per axis, conv output i reads padded indices i*s + a*d; the query q_i = i*s + c with "
        "c = d*((K-1)//2) and heads on Delta_a = a*d - c read exactly these; the "
        "floor((L_p - d(K-1) - 1)/s) + 1 outputs are the stride-lattice queries whose keys fit; "
        "zero padding = zero padded tokens (identities symbolic; counts exhaustive on small "
        "configurations; padding on symbolic 1D/2D instances)"
    ),
    hypotheses=(
        "L_p = L + p_before + p_after",
        "a = 0..K-1; integers s, d >= 1",
        "delta = key - query",
    ),
    proof=(
        Step("index identity q_i + Delta_a = i s + a d (symbolic)", _index_identity),
        Step("shifts scale with the dilation: a d - d k0 = d (a - k0) (symbolic)",
             _shifts_scale_with_dilation),
        Step("query_positions + shifts = the conv's padded indices "
             "(exhaustive: L<=8, K<=4, s<=3, d<=3, p<=2)", _queries_read_the_conv_indices),
        Step("output count = stride-lattice queries whose keys fit "
             "(exhaustive: L<=8, K<=4, s<=3, d<=3, p<=2)", _count_matches_lattice),
        Step("zero padding = padded tokens with one-hot heads "
             "(symbolic x, w; four 1D instances and a 2D stride/dilation instance)",
             _padding_instances),
        Step("2D/3D shifts = product of the axes' shifts, row-major (instances)", _product_shifts),
    ),
)

STATEMENTS = (CONV_GEOMETRY,)
