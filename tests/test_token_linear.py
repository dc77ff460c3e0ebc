"""`impl.models.linear.TokenLinear`: nn.Linear's parameters and results, through oneDNN on CPU float32."""

import pytest
import torch
from torch import nn

from impl.models import build
from impl.models.linear import TokenLinear
from verify import tolerances

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _gamma(n: int) -> float:
    """Higham's gamma_n for float32 (spec's, through verify.tolerances): an n-term dot product's bound."""
    return tolerances.gamma(n, torch.float32)


@pytest.mark.parametrize("shape", [(2, 5, 7, 12), (3, 11, 12)])
def test_equals_nn_linear_within_float32_rounding(shape):
    torch.manual_seed(0)
    fast = TokenLinear(12, 9)
    x = torch.randn(shape, requires_grad=True)
    upstream = torch.randn(*shape[:-1], 9, dtype=torch.float64)
    out = fast(x)
    (out.double() * upstream).sum().backward()
    grads = [x.grad, fast.weight.grad, fast.bias.grad]

    exact = nn.Linear(12, 9).double()
    exact.load_state_dict(fast.state_dict())  # the same state_dict keys and shapes as nn.Linear
    x64 = x.detach().double().requires_grad_(True)
    reference = exact(x64)
    (reference * upstream).sum().backward()
    with torch.no_grad():
        magnitude = x64.abs() @ exact.weight.abs().t() + exact.bias.abs()
    rows = x64.numel() // 12
    # each value is one dot product (plus the bias) in float32: 13 terms forward; the input gradient has 9
    # terms, the weight and bias gradients one per row of tokens
    assert ((out.double() - reference).abs() <= 2 * _gamma(13) * magnitude).all()
    bounds = [_gamma(9) * (upstream.abs() @ exact.weight.abs()),
              _gamma(rows) * (upstream.abs().reshape(-1, 9).t() @ x64.abs().reshape(-1, 12)),
              _gamma(rows) * upstream.abs().reshape(-1, 9).sum(0)]
    for got, want, bound in zip(grads, [x64.grad, exact.weight.grad, exact.bias.grad], bounds):
        assert ((got.double() - want).abs() <= 2 * bound + 1e-300).all()


def test_other_inputs_take_nn_linear():
    layer = TokenLinear(4, 3)
    x2 = torch.randn(5, 4)
    assert torch.equal(layer(x2), nn.functional.linear(x2, layer.weight, layer.bias))
    layer64 = TokenLinear(4, 3).double()
    x64 = torch.randn(2, 5, 4, dtype=torch.float64)
    assert torch.equal(layer64(x64), nn.functional.linear(x64, layer64.weight, layer64.bias))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(2, 5, 4)).dtype == torch.bfloat16  # autocast's nn.Linear, not oneDNN's float32


def test_transformer_uses_it_and_stays_an_nn_linear():
    model = build("tiny_quadratic")
    token_maps = [m for m in model.modules() if isinstance(m, TokenLinear)]
    assert len(token_maps) == 1 + 3 * len(model.layers)  # embed, and per layer attention_out + two MLP maps
    assert all(isinstance(m, nn.Linear) for m in token_maps)
