"""`impl.flops.flop_counter` counts every product the layers run, exactly."""

import pytest
import torch
from torch import nn

from impl.convert import conv_to_attention
from impl.flops import flop_counter
from impl.models.linear import TokenLinear

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_counts_the_converted_convs_product_merge():
    """The converted 3x3 conv's forward (ProductMerge): its column-side pass, its three row-group
    projections (oneDNN) and its three row-side passes (in-place baddbmm), 2 FLOPs a multiply-add."""
    batch, channels, side, groups = 2, 8, 16, 3
    layer = conv_to_attention(nn.Conv2d(channels, channels, 3, padding=1), alpha=4.0)
    with torch.no_grad(), flop_counter() as counter:
        layer(torch.randn(batch, channels, side, side))
    column_pass = 2 * batch * side * (groups * side) * side * channels
    projections = groups * 2 * batch * side * side * (groups * channels) * channels
    row_passes = groups * 2 * batch * side * side * side * channels
    assert counter.get_total_flops() == column_pass + projections + row_passes


def test_counts_token_linear_forward_and_backward():
    rows, n_in, n_out = 2 * 5 * 7, 12, 9
    layer = TokenLinear(n_in, n_out)
    x = torch.randn(2, 5, 7, n_in, requires_grad=True)
    with flop_counter() as counter:
        layer(x).sum().backward()
    # forward, input gradient, weight gradient: one rows x n_in x n_out product each
    assert counter.get_total_flops() == 3 * 2 * rows * n_in * n_out


def test_plain_flop_counter_misses_them():
    """Why the formulas are registered: without them the projection and the in-place pass are free."""
    x = torch.randn(1, 8, 4, 4)
    w = torch.randn(5, 8, 1, 1)
    registry = dict(torch.utils.flop_counter.flop_registry)
    for op in (torch.ops.aten.mkldnn_convolution, torch.ops.aten.baddbmm_):
        torch.utils.flop_counter.flop_registry.pop(op, None)
    try:
        with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
            torch.mkldnn_convolution(x, w, None, [0, 0], [1, 1], [1, 1], 1)
            torch.zeros(2, 3, 3).baddbmm_(torch.randn(2, 3, 4), torch.randn(2, 4, 3))
        assert counter.get_total_flops() == 0
    finally:
        torch.utils.flop_counter.flop_registry.clear()
        torch.utils.flop_counter.flop_registry.update(registry)
    with flop_counter() as counted:
        torch.mkldnn_convolution(x, w, None, [0, 0], [1, 1], [1, 1], 1)
        torch.zeros(2, 3, 3).baddbmm_(torch.randn(2, 3, 4), torch.randn(2, 4, 3))
    assert counted.get_total_flops() == 2 * 16 * 8 * 5 + 2 * 2 * 3 * 4 * 3


@pytest.mark.parametrize("backward", [False, True])
def test_counts_content_attention_whichever_sdpa_kernel_runs(backward):
    # without dropout SDPA takes the CPU flash kernel (under no_grad, and for the backward where it has
    # one): it must count what the plain math kernel counts
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    from impl.models import build

    x = torch.randn(2, 3, 32, 32, requires_grad=backward)
    counts = []
    for context in (contextlib.nullcontext(), sdpa_kernel(SDPBackend.MATH)):
        torch.manual_seed(0)
        model = build("tiny_learned_content").eval()  # afresh: a warm eval cache skips the positional scores
        counter = flop_counter()
        with context, counter, torch.set_grad_enabled(backward):
            out = model(x)
            if backward:
                out.sum().backward()
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0
