"""`impl.attention.gemm`: the CPU float32 products, under each backend (oneDNN, BLAS), against the plain
float64 formulas.

Each result must equal the float64 product of the same float32 inputs within gamma_n (float32) of the sum
of |terms| (n the depth of the sum), for shapes with dimensions of size 1 as well (oneDNN then returns
layouts that a `view` would reject).
"""

import pytest
import torch

from impl.attention import gemm
from verify import tolerances

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(params=gemm.GEMM_BACKENDS)
def backend(request):
    """Every product test runs under each backend, whichever this machine's default is."""
    with gemm.backend(request.param):
        yield request.param


def _check(got: torch.Tensor, want: torch.Tensor, absolute: torch.Tensor, depth: int) -> None:
    assert got.dtype == torch.float32 and got.shape == want.shape and got.is_contiguous()
    bound = tolerances.gamma(depth, torch.float32) * absolute
    assert bool(((got.double() - want).abs() <= bound).all()), float(((got.double() - want).abs() - bound).max())


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("lead,c,o", [((2, 7, 5), 12, 9), ((1, 1), 3, 1), ((4, 1, 3), 1, 6), ((2, 16, 64), 40, 24)])
def test_project_and_its_gradients(lead, c, o, backend):
    assert gemm.onednn_gemm(torch.empty(1)) == (backend == "onednn")
    u, w, g = _randn(*lead, c, seed=0), _randn(o, c, seed=1), _randn(*lead, o, seed=2)
    _check(gemm.project(u, w), u.double() @ w.double().t(), u.double().abs() @ w.double().abs().t(), c)
    grad_u, grad_w = gemm.project_backward(g, u, w)
    rows_g, rows_u = g.double().reshape(-1, o), u.double().reshape(-1, c)
    rows = rows_g.shape[0]
    _check(grad_u, g.double() @ w.double(), g.double().abs() @ w.double().abs(), o)
    _check(grad_w, rows_g.t() @ rows_u, rows_g.abs().t() @ rows_u.abs(), rows)
    _check(gemm.transposed_matmul(g, u), rows_g.t() @ rows_u, rows_g.abs().t() @ rows_u.abs(), rows)
    only_u, none_w = gemm.project_backward(g, u, w, need_weight=False)
    assert none_w is None and torch.equal(only_u, grad_u)
    assert gemm.project_backward(g, u, w, need_input=False, need_weight=False) == (None, None)


@pytest.mark.parametrize("lead,c,o", [((2, 7, 5), 12, 9), ((1, 1), 3, 1), ((3, 16), 40, 24)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_project_into_a_buffer(lead, c, o, with_bias, backend):
    """With `out`, the product (bias added) is the same, written into the buffer under BLAS (whatever it
    held before), returned either way."""
    u, w, bias = _randn(*lead, c, seed=3), _randn(o, c, seed=4), _randn(o, seed=5) if with_bias else None
    buffer = torch.full((*lead, o), float("nan"))
    got = gemm.project(u, w, bias, out=buffer)
    want = u.double() @ w.double().t() + (0 if bias is None else bias.double())
    absolute = u.double().abs() @ w.double().abs().t() + (0 if bias is None else bias.double().abs())
    _check(got, want, absolute, c + 1)
    assert (got is buffer) == (backend == "blas")


@pytest.mark.parametrize("lead,c,o", [((2, 7, 5), 12, 9), ((1, 1), 3, 1), ((3, 16), 40, 24)])
def test_project_add_accumulates_into_the_output(lead, c, o, backend):
    """`project_add` adds u @ w.T to what the output holds, in place, and returns the output itself."""
    u, w, start = _randn(*lead, c, seed=20), _randn(o, c, seed=21), _randn(*lead, o, seed=22)
    out = start.clone()
    got = gemm.project_add(u, w, out)
    want = start.double() + u.double() @ w.double().t()
    absolute = start.double().abs() + u.double().abs() @ w.double().abs().t()
    assert got is out
    _check(got, want, absolute, c + 1)


@pytest.mark.parametrize("lead,c,o", [((2, 7, 5), 12, 9), ((1, 1), 3, 1), ((3, 16), 40, 24)])
def test_project_backward_into_buffers(lead, c, o, backend):
    """With `into_input` (a buffer of u's shape, holding anything) and `add_weight_to` (a running sum, as
    over a loop's chunks), u's gradient is the same, written into the buffer under BLAS, and w's gradient
    is added to the sum and returned as it."""
    u, w, g = _randn(*lead, c, seed=30), _randn(o, c, seed=31), _randn(*lead, o, seed=32)
    buffer, running = torch.full((*lead, c), float("nan")), _randn(o, c, seed=33)
    start = running.clone()
    grad_u, grad_w = gemm.project_backward(g, u, w, into_input=buffer, add_weight_to=running)
    rows_g, rows_u = g.double().reshape(-1, o), u.double().reshape(-1, c)
    _check(grad_u, g.double() @ w.double(), g.double().abs() @ w.double().abs(), o)
    _check(grad_w, start.double() + rows_g.t() @ rows_u, start.double().abs() + rows_g.abs().t() @ rows_u.abs(),
           rows_g.shape[0] + 1)
    assert grad_w is running and (grad_u.data_ptr() == buffer.data_ptr()) == (backend == "blas")


@pytest.mark.parametrize("lead,m,s", [((7,), 5, 3), ((1,), 4, 1), ((2, 48), 12, 8)])
def test_transposed_matmul_adds_to_a_strided_slice(lead, m, s, backend):
    """With `add_to` (here a slice of a larger tensor, its rows strided), a^T b is added to what it holds;
    the rest of the larger tensor is untouched."""
    a, b = _randn(*lead, m, seed=12), _randn(*lead, s, seed=13)
    whole = _randn(m, 3, s, seed=14)
    before = whole.clone()
    got = gemm.transposed_matmul(a, b, add_to=whole[:, 1])
    a64, b64 = a.double().reshape(-1, m), b.double().reshape(-1, s)
    want = before[:, 1].double() + a64.t() @ b64
    bound = tolerances.gamma(a64.shape[0] + 1, torch.float32) * (before[:, 1].double().abs() + a64.abs().t() @ b64.abs())
    assert got.data_ptr() == whole[:, 1].data_ptr()
    assert bool(((whole[:, 1].double() - want).abs() <= bound).all())
    assert torch.equal(whole[:, 0], before[:, 0]) and torch.equal(whole[:, 2], before[:, 2])


@pytest.mark.parametrize("lead,m,s", [((7,), 5, 3), ((1,), 4, 1), ((6,), 1, 2), ((2304,), 16, 24), ((4, 48), 12, 8)])
def test_transposed_matmul_and_its_gradients(lead, m, s, backend):
    """a^T b over rows (an image's transposed attention matrix E and its values V: out = E^T V), and its
    gradients b grad^T and a grad, every operand taken as channels-last rows."""
    a, b, g = _randn(*lead, m, seed=9), _randn(*lead, s, seed=10), _randn(m, s, seed=11)
    a64, b64, g64 = a.double().reshape(-1, m), b.double().reshape(-1, s), g.double()
    rows = a64.shape[0]
    _check(gemm.transposed_matmul(a, b), a64.t() @ b64, a64.abs().t() @ b64.abs(), rows)
    grad_a, grad_b = gemm.transposed_matmul_backward(g, a, b)
    assert grad_a.shape == a.shape and grad_b.shape == b.shape
    _check(grad_a.reshape(rows, m), b64 @ g64.t(), b64.abs() @ g64.abs().t(), s)
    _check(grad_b.reshape(rows, s), a64 @ g64, a64.abs() @ g64.abs(), m)
    assert gemm.transposed_matmul_backward(g, a, b, need_a=False)[0] is None
    assert gemm.transposed_matmul_backward(g, a, b, need_b=False)[1] is None
    plain_a, plain_b = gemm.transposed_matmul_backward(g64, a64, b64)  # float64: the plain products
    torch.testing.assert_close(plain_a, b64 @ g64.t())
    torch.testing.assert_close(plain_b, a64 @ g64)
    torch.testing.assert_close(gemm.transposed_matmul(a64, b64), a64.t() @ b64)


@pytest.mark.parametrize("lead,m,s", [((7,), 5, 3), ((2304,), 16, 24), ((4, 48), 12, 8)])
def test_transposed_matmul_backward_writes_b_gradient_into_a_slot(lead, m, s, backend):
    """With `into_b` (one image's slot of a chunk's gradient), b's gradient a grad is written there and
    returned as b's shape; the other slots are untouched."""
    a, b, g = _randn(*lead, m, seed=15), _randn(*lead, s, seed=16), _randn(m, s, seed=17)
    chunk = _randn(3, *lead, s, seed=18)
    before = chunk.clone()
    grad_a, grad_b = gemm.transposed_matmul_backward(g, a, b, into_b=chunk[1])
    assert grad_b.shape == b.shape and grad_b.data_ptr() == chunk[1].data_ptr()
    a64, g64 = a.double().reshape(-1, m), g.double()
    _check(chunk[1].reshape(-1, s), a64 @ g64, a64.abs() @ g64.abs(), m)
    assert torch.equal(grad_a, gemm.transposed_matmul_backward(g, a, b, need_b=False)[0])
    assert torch.equal(chunk[0], before[0]) and torch.equal(chunk[2], before[2])


@pytest.mark.parametrize("n,m,d,s", [(3, 5, 7, 4), (1, 2, 3, 1), (4, 1, 6, 9)])
def test_matmul_of_one_matrix_by_a_batch(n, m, d, s, backend):
    """One a (M, D) by every matrix of b (n, D, S): a shared attention matrix by each image's values."""
    a, b = _randn(m, d, seed=6), _randn(n, d, s, seed=7)
    _check(gemm.matmul(a, b), a.double() @ b.double(), a.double().abs() @ b.double().abs(), d)
    _check(gemm.matmul(a.t().contiguous().t(), b), a.double() @ b.double(), a.double().abs() @ b.double().abs(), d)


def test_other_dtypes_take_the_plain_products():
    a, b = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    g = torch.randn(3, 5, dtype=torch.float64)
    assert not gemm.onednn_gemm(a)
    assert torch.equal(gemm.transposed_matmul(a, b), a.t() @ b)
    assert torch.equal(gemm.matmul(a.t(), b[None]), torch.matmul(a.t(), b[None]))
    grad_a, grad_b = gemm.transposed_matmul_backward(g, a, b)
    assert torch.equal(grad_a, b @ g.t()) and torch.equal(grad_b, a @ g)
    u, w = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    gu = torch.randn(2, 3, 6, dtype=torch.float64)
    grad_u, grad_w = gemm.project_backward(gu, u, w)
    assert torch.allclose(grad_u, gu @ w) and torch.allclose(grad_w, gu.reshape(-1, 6).t() @ u.reshape(-1, 4))


@pytest.mark.parametrize("vendor,avx512,expected", [
    ("AuthenticAMD", True, "onednn"), ("AuthenticAMD", False, "blas"),
    ("GenuineIntel", True, "blas"), ("GenuineIntel", False, "blas"), ("", False, "blas")])
def test_auto_backend_follows_the_cpu(monkeypatch, vendor, avx512, expected):
    monkeypatch.delenv("ATTENTION_CNN_GEMM", raising=False)
    monkeypatch.setattr(gemm, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(gemm, "cpu_has_avx512", lambda: avx512)
    assert gemm.default_backend() == expected
    for choice in gemm.GEMM_BACKENDS:  # the environment overrides the CPU
        monkeypatch.setenv("ATTENTION_CNN_GEMM", choice)
        assert gemm.default_backend() == choice


def test_cpu_vendor_and_avx512_are_read_from_cpuinfo(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 fma avx512f avx512bw\n\n"
                    "processor\t: 1\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 fma avx512f avx512bw\n")
    monkeypatch.setattr(gemm, "CPUINFO", str(info))
    assert gemm.cpu_vendor() == "AuthenticAMD" and gemm.cpu_has_avx512()
    info.write_text("vendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 fma avx_vnni\n")
    assert not gemm.cpu_has_avx512()
    monkeypatch.setattr(gemm, "CPUINFO", str(tmp_path / "absent"))
    assert gemm.cpu_vendor() == "" and not gemm.cpu_has_avx512()


def test_bad_backend_names_are_refused(monkeypatch):
    monkeypatch.setenv("ATTENTION_CNN_GEMM", "mkl")
    with pytest.raises(ValueError, match="ATTENTION_CNN_GEMM must be one of auto, onednn, blas"):
        gemm.default_backend()
    before = gemm.current_backend()
    with pytest.raises(ValueError, match="backend must be one of onednn, blas"):
        with gemm.backend("cublas"):
            pass
    assert gemm.current_backend() == before
