"""Tests of spec/: the catalogue proves itself, the bound functions keep their promises, the
checking machinery can fail, and spec stays free of torch and numpy."""

from __future__ import annotations

import itertools
import math
import pathlib
import random
import re
import subprocess
import sys

import pytest
import sympy as sp

import spec
from spec import catalogue, geometry, layers, quadratic
from spec.proof import (
    ALPHA,
    centred_window,
    equal,
    limit_is,
    matrices_equal,
    real_symbols,
    squared_norm,
    tends_to_one_hot,
)

SPEC_DIR = pathlib.Path(spec.__file__).parent
EXPECTED_IDS = (
    "quadratic-identity",
    "softmax-shift-invariance",
    "softmax-limit",
    "lemma1",
    "theorem1",
    "remark-1d",
    "conv-geometry",
    "generalized-encoding",
    "conv3d",
    "separable-quadratic",
    "hard-limit",
    "tail-bound",
    "output-error-bound",
    "rounding-bound",
)


# --- the catalogue ----------------------------------------------------------------------------


@pytest.mark.parametrize("statement", spec.STATEMENTS, ids=lambda s: s.id)
def test_statement_holds(statement):
    failed = [name for name, ok in statement.run() if not ok]
    assert not failed, f"[{statement.id}] steps not proved: {failed}"
    assert statement.check() is True


def test_catalogue_ids_are_the_interface():
    assert spec.ids() == EXPECTED_IDS
    assert tuple(s.id for s in spec.STATEMENTS) == EXPECTED_IDS


def test_catalogue_ids_unique_and_kebab_case():
    ids = [s.id for s in spec.STATEMENTS]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", i) for i in ids)


def test_every_statement_has_steps_and_text():
    for statement in spec.STATEMENTS:
        assert statement.proof, statement.id
        assert statement.reference and statement.statement, statement.id
        assert all(isinstance(step, spec.Step) for step in statement.proof)


def _record(id: str, steps=1) -> spec.Statement:
    proof = tuple(spec.Step(f"step {i}", lambda: True) for i in range(steps))
    return spec.Statement(id=id, reference="test", statement="a claim", proof=proof)


@pytest.mark.parametrize("statements,message", [
    ((_record("a-b"), _record("a-b")), "duplicate id"),
    ((_record("Not_Kebab"),), "kebab-case"),
    ((_record("no-steps", steps=0),), "no proof steps"),
])
def test_catalogue_check_rejects_malformed_tables(statements, message):
    with pytest.raises(catalogue.CatalogueError, match=message):
        catalogue._validate(statements)


def test_get_returns_by_id():
    for statement in spec.STATEMENTS:
        assert spec.get(statement.id) is statement


def test_get_unknown_id_lists_known_ids():
    with pytest.raises(KeyError, match="lemma1") as info:
        spec.get("lemma-one")
    assert "lemma-one" in str(info.value)


def test_run_reports_each_step():
    statement = spec.get("quadratic-identity")
    report = statement.run()
    assert [name for name, _ in report] == [step.name for step in statement.proof]
    assert all(ok is True for _, ok in report)


# --- the machinery can fail -------------------------------------------------------------------


def _wrong_identity() -> bool:
    """The quadratic identity with +2 Delta in v instead of -2 Delta."""
    delta, centre = real_symbols("delta", 2), real_symbols("Delta", 2)
    v = -ALPHA * sp.Matrix([1, *(2 * c for c in centre)])
    claimed = -ALPHA * (squared_norm(d - c for d, c in zip(delta, centre)) - squared_norm(centre))
    return equal((v.T * quadratic.encoding(delta))[0, 0], claimed)


def test_wrong_identity_is_not_proved():
    assert _wrong_identity() is False
    wrong = spec.Statement(
        id="wrong-identity",
        reference="test",
        statement="the quadratic identity with the sign of Delta flipped",
        proof=(spec.Step("v . r_delta with +2 Delta (symbolic)", _wrong_identity),),
    )
    assert wrong.check() is False
    assert wrong.run() == [("v . r_delta with +2 Delta (symbolic)", False)]


def test_wrong_limits_are_not_proved():
    window = centred_window(3, 2)
    scores = quadratic.window_scores(ALPHA, (1, 0), window)
    assert tends_to_one_hot(scores, (1, 0)) is True
    assert tends_to_one_hot(scores, (0, 0)) is False
    assert limit_is(sp.exp(-ALPHA), ALPHA, 1) is False


def test_reflected_kernel_is_not_the_conv():
    """Heads on -Delta (the paper's k = q - shift read with our W) give a different layer."""
    shifts = geometry.shifts((3, 3))
    keys = centred_window(5, 2)
    x = layers.tokens("x", keys, 2)
    w = {s: layers.weight(f"W{s}", 2, 2) for s in shifts}
    reflected = [layers.attend(layers.one_hot(keys, (-s[0], -s[1])), x) for s in shifts]
    mhsa = layers.multi_head(reflected, [w[s] for s in shifts], [sp.eye(2)] * len(shifts))
    assert matrices_equal(mhsa, layers.convolve(x, w)) is False


def test_step_must_answer_a_bool():
    relation = sp.Symbol("x") > 0  # unevaluated: truthiness must not pass for a proof
    statement = spec.Statement(
        id="not-a-bool", reference="test", statement="x > 0",
        proof=(spec.Step("returns a relation", lambda: relation),),
    )
    with pytest.raises(TypeError, match="expected bool"):
        statement.check()


# --- tail_bound -------------------------------------------------------------------------------

ALPHAS = (0.05, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


def _brute_tail(alpha: float, offsets) -> float:
    """1 - p_Delta = T/(1 + T) by brute force (T the off-centre weights), no cancellation."""
    tail = sum(math.exp(-alpha * sum(c * c for c in d)) for d in offsets if any(d))
    return tail / (1 + tail)


GRID_41 = list(itertools.product(range(-20, 21), repeat=2))
CORNER_41 = list(itertools.product(range(0, 41), repeat=2))


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("offsets", [GRID_41, CORNER_41], ids=["centre", "corner"])
def test_tail_bound_dominates_brute_force_2d(alpha, offsets):
    exact = _brute_tail(alpha, offsets)
    assert spec.tail_bound(alpha) >= exact * (1 - 1e-12)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_tail_bound_dominates_brute_force_1d_3d(alpha):
    line = [(m,) for m in range(-20, 21)]
    assert spec.tail_bound(alpha, 1) >= _brute_tail(alpha, line) * (1 - 1e-12)
    cube = list(itertools.product(range(-8, 9), repeat=3))
    assert spec.tail_bound(alpha, 3) >= _brute_tail(alpha, cube) * (1 - 1e-12)


def test_tail_bound_is_tight_at_the_centre():
    """tail-bound's stated factor 1.16 is nearly attained (about 1.154 at alpha = 1)."""
    ratio = spec.tail_bound(1.0) / _brute_tail(1.0, GRID_41)
    assert 1.15 < ratio <= 1.16
    assert spec.tail_bound(8.0) / _brute_tail(8.0, GRID_41) < 1.001


def test_tail_bound_matches_closed_form_and_stays_positive():
    for alpha in (0.1, 1.0, 3.0, 10.0):
        for dims in (1, 2, 3):
            closed_form = 1 - math.tanh(alpha / 2) ** dims
            assert spec.tail_bound(alpha, dims) == pytest.approx(closed_form, rel=1e-12)
    # 1 - tanh(20)^2 rounds to 0 in float64; the true tail does not.
    assert spec.tail_bound(40.0) == pytest.approx(4 * math.exp(-40.0), rel=1e-9)
    assert 0 < spec.tail_bound(800.0) <= 6 * 2 * math.ulp(0.0)  # exp underflows; the true tail is > 0
    assert spec.tail_bound(math.inf) == 0.0
    values = [spec.tail_bound(a) for a in ALPHAS]
    assert all(0 < v <= 1 for v in values[:-1])
    assert values == sorted(values, reverse=True)


def test_tail_bound_accepts_numpy_scalars():
    np = pytest.importorskip("numpy")
    assert spec.tail_bound(np.float64(2.0)) == spec.tail_bound(2.0)
    assert spec.tail_bound(np.float32(2.0), np.int64(3)) == spec.tail_bound(2.0, 3)


@pytest.mark.parametrize("alpha", [0, 0.0, -1.0, -math.inf, math.nan, True, "1", None])
def test_tail_bound_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        spec.tail_bound(alpha)


@pytest.mark.parametrize("dims", [0, 4, 2.0, True, "2", None])
def test_tail_bound_rejects_bad_dims(dims):
    with pytest.raises(ValueError, match="dims"):
        spec.tail_bound(1.0, dims)


# --- output_error_bound -----------------------------------------------------------------------


def test_output_error_bound_arithmetic():
    for alpha, l1, m, dims in ((1.0, 3.0, 0.5, 2), (4.0, 10.0, 2.0, 1), (2.5, 0.0, 7.0, 3)):
        expected = 2 * spec.tail_bound(alpha, dims) * l1 * m
        assert spec.output_error_bound(alpha, l1, m, dims) == expected
    assert spec.output_error_bound(math.inf, 5.0, 5.0) == 0.0


@pytest.mark.parametrize("name,args", [
    ("kernel_l1", (1.0, -1.0, 1.0)),
    ("kernel_l1", (1.0, math.inf, 1.0)),
    ("max_abs_input", (1.0, 1.0, -0.5)),
    ("max_abs_input", (1.0, 1.0, math.nan)),
    ("alpha", (0.0, 1.0, 1.0)),
])
def test_output_error_bound_rejects_bad_arguments(name, args):
    with pytest.raises(ValueError, match=name):
        spec.output_error_bound(*args)


def _converted_conv_error(alpha: float, size: int, rng: random.Random) -> tuple[float, float]:
    """Max |MHSA - Conv| of a zero-padded 3x3 conv (1 -> 1 channel) converted with quadratic
    heads at alpha (softmax over every padded token), and the spec's bound for it."""
    padded = size + 2
    x = [[0.0] * padded for _ in range(padded)]
    for i, j in itertools.product(range(size), repeat=2):
        x[i + 1][j + 1] = rng.uniform(-1, 1)
    w = {s: rng.uniform(-1, 1) for s in spec.shifts((3, 3))}
    worst = 0.0
    for q in itertools.product(range(1, size + 1), repeat=2):
        conv = sum(w[s] * x[q[0] + s[0]][q[1] + s[1]] for s in w)
        mhsa = 0.0
        for s, weight in w.items():
            scores = {k: -alpha * ((k[0] - q[0] - s[0]) ** 2 + (k[1] - q[1] - s[1]) ** 2)
                      for k in itertools.product(range(padded), repeat=2)}
            top = max(scores.values())
            exps = {k: math.exp(v - top) for k, v in scores.items()}
            total = sum(exps.values())
            mhsa += weight * sum(e / total * x[k[0]][k[1]] for k, e in exps.items())
        worst = max(worst, abs(mhsa - conv))
    max_abs = max(abs(v) for row in x for v in row)
    return worst, spec.output_error_bound(alpha, sum(abs(v) for v in w.values()), max_abs)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 4.0])
def test_output_error_bound_holds_on_a_converted_conv(alpha):
    worst, bound = _converted_conv_error(alpha, 5, random.Random(int(alpha * 10)))
    assert worst <= bound


# --- rounding ---------------------------------------------------------------------------------


def test_unit_roundoff_values():
    assert spec.unit_roundoff("float64") == 2.0**-53
    assert spec.unit_roundoff("float32") == 2.0**-24
    assert spec.unit_roundoff("bfloat16") == 2.0**-8
    assert spec.unit_roundoff("float16") == 2.0**-11


def test_unit_roundoff_rejects_unknown_names():
    with pytest.raises(ValueError, match="bfloat16.*float16.*float32.*float64"):
        spec.unit_roundoff("float8")


def test_gamma_and_rounding_bound():
    u = spec.unit_roundoff("float32")
    assert spec.gamma(9, u) == pytest.approx(9 * u / (1 - 9 * u), rel=1e-15)
    assert spec.gamma(9, u) >= (1 + u) ** 9 - 1
    assert spec.rounding_bound(9, 3.0, "float32") == spec.gamma(9, u) * 3.0
    bad = ((0, u, "n"), (2.0, u, "n"), (10, 0.2, "n \\* dtype_eps"), (3, 0.0, "dtype_eps"))
    for n, eps, name in bad:
        with pytest.raises(ValueError, match=name):
            spec.gamma(n, eps)
    with pytest.raises(ValueError, match="abs_sum"):
        spec.rounding_bound(3, -1.0, "float32")
    with pytest.raises(ValueError, match="float64"):
        spec.rounding_bound(3, 1.0, "double")


# --- geometry and bookkeeping -----------------------------------------------------------------


def test_geometry_examples():
    assert spec.anchor(3) == 1 and spec.anchor(2) == 0 and spec.anchor(3, 2) == 2
    assert spec.anchor((3, 4), (1, 2)) == (1, 2)
    assert spec.shifts(3) == [-1, 0, 1]
    assert spec.shifts(4) == [-1, 0, 1, 2]
    assert spec.shifts(3, 2) == [-2, 0, 2]
    assert spec.shifts((2, 2)) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # torch: floor((L + pb + pa - d(K-1) - 1)/s) + 1
    assert spec.output_length(32, 3, 1, 1, 1, 1) == 32
    assert spec.output_length(32, 3, 2, 1, 1, 1) == 16
    assert spec.output_length(7, 3, 2, 1, 1, 2) == 3
    assert spec.query_positions(7, 3, 2, 1, 1, 2) == [2, 4, 6]
    assert spec.query_positions(5, 2) == [0, 1, 2, 3]


@pytest.mark.parametrize("name,kwargs", [
    ("length", dict(length=0, kernel=1)),
    ("kernel", dict(length=5, kernel=0)),
    ("stride", dict(length=5, kernel=3, stride=0)),
    ("padding_before", dict(length=5, kernel=3, padding_before=-1)),
    ("padding_after", dict(length=5, kernel=3, padding_after=1.5)),
    ("dilation", dict(length=5, kernel=3, dilation=0)),
    ("kernel", dict(length=3, kernel=3, dilation=2)),
])
def test_geometry_rejects_bad_arguments(name, kwargs):
    with pytest.raises(ValueError, match=name):
        spec.output_length(**kwargs)
    with pytest.raises(ValueError, match=name):
        spec.query_positions(**kwargs)


def test_geometry_rejects_bad_kernel_and_dilation():
    with pytest.raises(ValueError, match="kernel"):
        spec.shifts(0)
    with pytest.raises(ValueError, match="dilation"):
        spec.shifts((3, 3), (1, 2, 3))
    with pytest.raises(ValueError, match="dilation"):
        spec.anchor(3, 0)


def test_bookkeeping():
    assert spec.heads_for_kernel((3, 3)) == 9
    assert spec.heads_for_kernel((2, 2, 2)) == 8
    assert spec.heads_for_kernel((5,)) == 5
    assert spec.encoding_dim(2) == 3 and spec.encoding_dim(3) == 4
    with pytest.raises(ValueError, match="kernel_size"):
        spec.heads_for_kernel((3, 0))
    with pytest.raises(ValueError, match="dims"):
        spec.encoding_dim(0)


# --- purity -----------------------------------------------------------------------------------


def test_spec_imports_neither_torch_nor_numpy():
    code = "import spec, sys; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    root = SPEC_DIR.parent
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_spec_sources_import_only_sympy_and_the_standard_library():
    forbidden = re.compile(r"^\s*(import|from)\s+(torch|numpy|impl|verify|bench)\b", re.MULTILINE)
    for path in SPEC_DIR.glob("*.py"):
        assert not forbidden.search(path.read_text()), path.name


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_tail_bound_is_an_upper_bound_as_a_float(dims):
    """For large alpha the infinite grid's tail 1 - theta^-n (theta = sum_m exp(-alpha m^2)) is within an
    ulp of B_n: the float returned must still be at least it (computed to 400 digits: 1 - theta^-n cancels
    all but the last ~17 of e^-alpha's digits, and e^-760 ~ 1e-330)."""
    import mpmath

    rng = random.Random(dims)
    with mpmath.workdps(400):
        for alpha in [rng.uniform(20.0, 760.0) for _ in range(300)] + [37.5, 151.77317337417924, 708.5, 745.0]:
            a = mpmath.mpf(alpha)
            theta = 1 + 2 * sum(mpmath.exp(-a * m * m) for m in range(1, 4))
            exact = 1 - theta ** -dims
            assert mpmath.mpf(spec.tail_bound(alpha, dims)) >= exact, (alpha, dims)
