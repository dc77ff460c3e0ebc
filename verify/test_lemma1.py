"""lemma1, theorem1, remark-1d: the converted layer in the hard limit IS the convolution.

Lemma 1: "With N_h = K^2 heads, D_h >= D_out, a one-to-one map from heads to shifts Delta^(h), and each
head's softmax putting all its mass on the key q + Delta^(h), there are value/output matrices (the
product W_val^(h) W_out^(h) restricted to head h equals the kernel slice W[Delta^(h)]) for which
MHSA = Conv for every input."
Theorem 1: "An MHSA layer with N_h heads of dimension D_h, output dimension D_out and a relative
positional encoding of dimension D_p >= 3 can express any convolution with a sqrt(N_h) x sqrt(N_h)
kernel and min(D_h, D_out) output channels."
Remark (1D): K heads and D_p >= 2 express a 1D convolution of kernel K.

Numerically: for every nn.Conv1d/nn.Conv2d in torch's constructor space (stride, padding int/tuple/
'same'/'valid', four padding modes, dilation, groups, bias, odd/even/non-square kernels),
`conv_to_attention(conv)` at alpha = inf gives the conv's output and gradients to within the rounding
of the two computations (spec.rounding_bound, n = in/groups * prod(kernel) + 1). Conv3d: test_conv3d.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import spec
from impl.convert import conv_to_attention
from verify import checks, strategies
from verify.assertions import assert_all_within
from verify.cases import ConvCase
from verify.profiles import examples
from verify.tolerances import hard_limit_tolerance

STATEMENT_OF_DIMS = {1: "remark-1d", 2: "lemma1", 3: "conv3d"}


@pytest.mark.statement("lemma1", "remark-1d")
@examples(3)
@given(case=strategies.conv_cases(dims=st.sampled_from((1, 2))))
def test_hard_limit_equals_conv(case: ConvCase):
    conv, x = case.build()
    layer = conv_to_attention(conv)
    checks.hard_limit(STATEMENT_OF_DIMS[case.dims], conv, layer, x, case.describe(),
                      case.reproduce("print((conv_to_attention(conv)(x) - conv(x)).abs().max())"))


@pytest.mark.statement("lemma1", "remark-1d")
@examples(1)
@given(case=strategies.conv_cases(dims=st.sampled_from((1, 2))), data=st.data())
def test_gradients_equal_conv(case: ConvCase, data):
    checks.converted_gradients(STATEMENT_OF_DIMS[case.dims], case,
                               data.draw(strategies.seeds(), label="upstream seed"))


@pytest.mark.statement("theorem1")
@examples(1)
@given(case=strategies.conv_cases(dims=st.just(2), kernel=st.integers(1, strategies.MAX_KERNEL)),
       alpha=strategies.alphas())
def test_theorem1_square_kernel(case: ConvCase, alpha: float):
    """A K x K conv: K^2 heads, D_p = 3 parameters per head (centre + width: the encoding's
    (||delta||^2, delta_1, delta_2) weights), D_out = out_channels; the conv's output at the hard limit
    (the layer and the plain attention) and within the output-error bound at finite alpha."""
    conv, x = case.build()
    hard, soft = conv_to_attention(conv), conv_to_attention(conv, alpha)
    per_head = sum(p.numel() for p in soft.encoding.parameters()) / soft.heads
    counts = [
        ("|heads - K^2|", abs(hard.heads - spec.heads_for_kernel(conv.kernel_size)), 0),
        ("|parameters per head - D_p|", abs(per_head - spec.encoding_dim(2)), 0),
        ("|out_dim - D_out|", abs(hard.out_dim - conv.out_channels), 0),
    ]
    assert_all_within("theorem1", counts + checks.hard_limit_checks(conv, hard, x)
                      + checks.finite_alpha_checks(conv, soft, x, alpha),
                      case.describe() + f", alpha={alpha:.4g}", case.reproduce("attn = conv_to_attention(conv)"))


ACCEPTANCE = ConvCase(2, 6, 4, (("kernel_size", (2, 3)), ("stride", 2), ("padding", (1, 0)),
                                ("dilation", (1, 2)), ("groups", 2), ("padding_mode", "reflect")),
                      size=(7, 9), batch=2, dtype="float64", seed=0)


@pytest.mark.statement("lemma1")
def test_acceptance_example():
    """Conv2d(6, 4, (2, 3), stride=2, padding=(1, 0), dilation=(1, 2), groups=2, padding_mode='reflect')
    on a 7x9 input, float64: equal to 1e-12 relative (and within the rounding bound)."""
    conv = torch.nn.Conv2d(6, 4, (2, 3), stride=2, padding=(1, 0), dilation=(1, 2), groups=2,
                           padding_mode="reflect").double()
    built, x = ACCEPTANCE.build()
    conv.load_state_dict(built.state_dict())
    layer = conv_to_attention(conv)
    with torch.no_grad():
        expected, actual = conv(x), layer(x)
    relative = 1e-12 * float(expected.abs().max())
    expected_shape = (2, 4, spec.output_length(7, 2, 2, 1, 1, 1), spec.output_length(9, 3, 2, 0, 0, 2))
    assert actual.shape == expected.shape == expected_shape == (2, 4, 4, 3)
    assert_all_within("lemma1", [
        ("max|attn - conv| (1e-12 relative)", (actual - expected).abs(), relative),
        ("max|attn - conv| (rounding bound)", (actual - expected).abs(), hard_limit_tolerance(conv, x)),
    ], ACCEPTANCE.describe(), ACCEPTANCE.reproduce("attn = conv_to_attention(conv)"))
    assert math.isfinite(relative) and relative > 0
