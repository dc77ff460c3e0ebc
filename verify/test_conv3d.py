"""conv3d: the construction in three dimensions.

Statement (new): "Conv3d: N_h = K^3 heads, D_p = 4; the quadratic identity holds for n = 3, the softmax
over a 3x3x3 window tends to one-hot, and Lemma 1 holds for 3D kernels."

Numerically: every nn.Conv3d of the (small) generated space converts to a layer with prod(kernel)
heads and D_p = 4 parameters per head (centre + width) whose hard limit gives the conv's output and
gradients within the rounding of both computations.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import spec
from impl.convert import conv_to_attention
from verify import checks, strategies
from verify.assertions import assert_all_within
from verify.cases import ConvCase
from verify.profiles import examples


@pytest.mark.statement("conv3d")
@examples(1)
@given(case=strategies.conv_cases(dims=st.just(3)), alpha=strategies.alphas())
def test_conv3d_hard_limit(case: ConvCase, alpha: float):
    conv, x = case.build()
    hard, soft = conv_to_attention(conv), conv_to_attention(conv, alpha)
    per_head = sum(p.numel() for p in soft.encoding.parameters()) / soft.heads
    assert_all_within("conv3d", [
        ("|heads - prod(kernel)|", abs(hard.heads - spec.heads_for_kernel(conv.kernel_size)), 0),
        ("|parameters per head - D_p|", abs(per_head - spec.encoding_dim(3)), 0),
        *checks.hard_limit_checks(conv, hard, x), *checks.finite_alpha_checks(conv, soft, x, alpha),
    ], case.describe() + f", alpha={alpha:.4g}",
        case.reproduce("print((conv_to_attention(conv)(x) - conv(x)).abs().max())"))


@pytest.mark.statement("conv3d")
@examples(0.5)
@given(case=strategies.conv_cases(dims=st.just(3)), data=st.data())
def test_conv3d_gradients(case: ConvCase, data):
    checks.converted_gradients("conv3d", case, data.draw(strategies.seeds(), label="upstream seed"))
