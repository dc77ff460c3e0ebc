"""spec: the paper's statements (and ours) as sympy-checked records, plus the bound functions.

Pure sympy and the standard library: no torch, no numpy, no impl/verify/bench. Convention:
the relative offset is delta = key - query; a K x K convolution reads, for query q, the keys
q + Delta for Delta in geometry.shifts(K) (centred for odd K).

    >>> import spec
    >>> spec.get("lemma1").check()
    True
"""

from spec.bounds import gamma, output_error_bound, rounding_bound, tail_bound, unit_roundoff
from spec.catalogue import STATEMENTS, Statement, Step, get, ids
from spec.geometry import anchor, output_length, query_positions, shifts
from spec.lemma1 import encoding_dim, heads_for_kernel

__all__ = [
    "STATEMENTS",
    "Statement",
    "Step",
    "anchor",
    "encoding_dim",
    "gamma",
    "get",
    "heads_for_kernel",
    "ids",
    "output_error_bound",
    "output_length",
    "query_positions",
    "rounding_bound",
    "shifts",
    "tail_bound",
    "unit_roundoff",
]
