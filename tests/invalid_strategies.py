"""Generators of invalid arguments (and command-line values) for tests/test_invalid_inputs.py.

Each strategy draws values that a documented argument must refuse, grouped by what the argument is (a
positive int, a probability, an alpha, a name from a fixed list, a flag). They mix the three ways a value
goes wrong: the wrong type (text, None, bools where numbers are meant, floats where ints are meant,
containers, tensors), an impossible value of the right type (0, negatives, NaN, infinities), and an unknown
name. Valid values are never drawn: every strategy below is checked against its argument's contract in its
docstring, and the few values a contract does accept (a bool is an int to Python; alpha = inf is the hard
limit) are filtered out by construction, not by `assume`.

Sizes stay tiny on purpose: a rejected value must be rejected before any computation, so nothing here
needs to be big, and the valid-input tests draw their modules from `verify.strategies` (capped there).
"""

from __future__ import annotations

import math
import string

import torch
from hypothesis import strategies as st

# -- building blocks ---------------------------------------------------------------------------------

NAN, INF = math.nan, math.inf

_short_text = st.text(alphabet=string.ascii_letters + string.digits + "_-. ", max_size=8)


def tensors() -> st.SearchStrategy[torch.Tensor]:
    """Small tensors of several dtypes: a tensor is never a Python number, however it compares."""
    return st.one_of(
        st.integers(-2, 3).map(torch.tensor),
        st.floats(-2, 3, allow_nan=False).map(lambda v: torch.tensor(v, dtype=torch.float32)),
        st.lists(st.integers(0, 3), min_size=1, max_size=3).map(torch.tensor),
    )


def containers() -> st.SearchStrategy:
    """Lists, tuples, dicts and sets of small ints (only tuples are hashable)."""
    small = st.integers(-2, 4)
    return st.one_of(st.lists(small, max_size=3), st.tuples(small, small),
                     st.dictionaries(_short_text, small, max_size=2), st.sets(small, max_size=2))


def unhashable() -> st.SearchStrategy:
    """Values that cannot be a dict key or a set member: a `name in registry` check raises TypeError on them."""
    small = st.integers(-2, 4)
    return st.one_of(st.lists(st.one_of(small, _short_text), max_size=3),
                     st.dictionaries(_short_text, small, max_size=2), st.sets(small, max_size=2))


def not_numbers() -> st.SearchStrategy:
    """Neither int nor float: text, None, containers, tensors, complex numbers, bytes, a bare object."""
    return st.one_of(_short_text, st.none(), containers(), tensors(),
                     st.complex_numbers(max_magnitude=3, allow_nan=False), st.binary(max_size=3), st.builds(object))


def non_finite() -> st.SearchStrategy[float]:
    return st.sampled_from((NAN, INF, -INF))


# -- numbers ----------------------------------------------------------------------------------------

def bad_positive_ints() -> st.SearchStrategy:
    """Not an int >= 1: 0, negatives, bools, floats (2.0 included: a float is not an int), non-numbers."""
    return st.one_of(st.integers(max_value=0), st.booleans(), st.floats(), not_numbers())


def bad_non_negative_ints() -> st.SearchStrategy:
    """Not an int >= 0: negatives, bools, floats, non-numbers."""
    return st.one_of(st.integers(max_value=-1), st.booleans(), st.floats(), not_numbers())


def bad_probabilities() -> st.SearchStrategy:
    """Not a rate in [0, 1): values >= 1 or < 0, NaN, infinities, bools, non-numbers."""
    return st.one_of(st.floats(min_value=1.0), st.floats(max_value=0.0, exclude_max=True), non_finite(),
                     st.integers(min_value=1), st.integers(max_value=-1), st.booleans(), not_numbers())


def bad_alphas() -> st.SearchStrategy:
    """Not a positive real or +inf: 0, -0.0, negatives, -inf, NaN, bools, non-numbers (tensors included)."""
    return st.one_of(st.floats(max_value=0.0), st.just(NAN), st.integers(max_value=0), st.booleans(), not_numbers())


def bad_non_negative_finite() -> st.SearchStrategy:
    """Not a finite real >= 0 (a bound's kernel_l1, max_abs_input, abs_sum): negatives, NaN, inf, non-numbers."""
    return st.one_of(st.floats(max_value=0.0, exclude_max=True), non_finite(), st.integers(max_value=-1),
                     st.booleans(), not_numbers())


def bad_stds() -> st.SearchStrategy:
    """Not a standard deviation (finite real >= 0): NaN, +-inf, negatives, None, text, tensors."""
    return st.one_of(non_finite(), st.floats(max_value=-1e-3, allow_infinity=False), st.none(), _short_text,
                     tensors(), st.booleans())


# -- names and flags --------------------------------------------------------------------------------

def bad_names(valid) -> st.SearchStrategy:
    """Hashable values that are not one of `valid`: other text (case and spaces matter), None, numbers, tuples."""
    valid = set(valid)
    variants = st.sampled_from(sorted(valid)).flatmap(
        lambda v: st.sampled_from((v.upper(), v + " ", " " + v, v[:-1], v + "x")))
    return st.one_of(_short_text, variants, st.none(), st.integers(), st.floats(), st.booleans(),
                     st.tuples(_short_text), st.binary(max_size=3)).filter(lambda v: v not in valid)


def bad_flags() -> st.SearchStrategy:
    """Not a bool: text ('False' is truthy), None, ints, floats, containers, tensors."""
    return st.one_of(_short_text, st.none(), st.integers(), st.floats(), containers(), tensors())


# -- command-line values (text) ---------------------------------------------------------------------

def _number_text() -> st.SearchStrategy[str]:
    return st.one_of(st.floats().map(repr), st.sampled_from(("nan", "inf", "-inf", "NaN", "1e999", "")),
                     st.text(alphabet=string.ascii_letters, min_size=1, max_size=5))


def bad_positive_int_text() -> st.SearchStrategy[str]:
    """Command-line text that is not an int >= 1."""
    return st.one_of(st.integers(max_value=0).map(str), _number_text(), st.sampled_from(("1.5", "2.0", "0x10", "1_0e")))


def bad_non_negative_int_text() -> st.SearchStrategy[str]:
    """Command-line text that is not an int >= 0."""
    return st.one_of(st.integers(max_value=-1).map(str), _number_text(), st.sampled_from(("1.5", "2.0", "-0.5")))


def bad_positive_float_text() -> st.SearchStrategy[str]:
    """Command-line text that is not a finite float > 0."""
    return st.one_of(st.floats(max_value=0.0, allow_nan=False).map(repr),
                     st.sampled_from(("nan", "inf", "-inf", "1e999", "", "0", "-1")),
                     st.text(alphabet=string.ascii_letters, min_size=1, max_size=5).filter(
                         lambda t: t.lower() not in ("inf", "infinity", "nan")))


def bad_non_negative_float_text() -> st.SearchStrategy[str]:
    """Command-line text that is not a finite float >= 0."""
    return st.one_of(st.floats(max_value=-1e-300, allow_nan=False).map(repr),
                     st.sampled_from(("nan", "inf", "-inf", "1e999", "", "-1")),
                     st.text(alphabet=string.ascii_letters, min_size=1, max_size=5).filter(
                         lambda t: t.lower() not in ("inf", "infinity", "nan")))


def bad_alpha_text() -> st.SearchStrategy[str]:
    """`--alpha` text that is not a positive float or 'inf': 0, negatives, '-inf', 'nan', words."""
    return st.one_of(st.floats(max_value=0.0, allow_nan=False).map(repr),
                     st.sampled_from(("nan", "-inf", "", "0", "-1")),
                     st.text(alphabet=string.ascii_letters, min_size=1, max_size=5).filter(
                         lambda t: t.lower() not in ("inf", "infinity", "nan")))


def bad_choice_text(valid) -> st.SearchStrategy[str]:
    """Command-line text that is not one of `valid`."""
    valid = set(valid)
    variants = st.sampled_from(sorted(valid)).flatmap(lambda v: st.sampled_from((v.upper(), v + "x", v[:-1])))
    return st.one_of(st.text(alphabet=string.ascii_letters + "-_", min_size=1, max_size=8), variants).filter(
        lambda v: v not in valid)
