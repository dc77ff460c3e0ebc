"""rounding-bound: float32 (and float64) results stay within Higham's bound of the exact value.

Statement (new; Higham, Lemma 3.1 and eq. 3.5): "A sum or dot product of n terms computed in floating
point with unit roundoff u (in any order) errs by at most gamma_n sum |terms|, gamma_n = n u/(1 - n u)."

Numerically: for every float32 conv of the generated space, both torch's convolution and the
hard-limit converted layer, computed in float32, are within spec.rounding_bound(n, sum |x||W| + |b|,
'float32') of the same conv computed in float64 from the same (float32) values, n = in/groups *
prod(kernel) + 1, plus the float64 computation's own bound.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from impl.convert import conv_to_attention
from verify import strategies, tolerances
from verify.assertions import assert_all_within
from verify.cases import ConvCase
from verify.profiles import examples


@pytest.mark.statement("rounding-bound")
@examples(1.5)
@given(case=strategies.conv_cases(dtype=st.just("float32")))
def test_float32_conv_and_hard_limit_within_rounding_bound(case: ConvCase):
    conv, x = case.build()
    layer = conv_to_attention(conv)
    wide = tolerances.float64_twin(conv)
    with torch.no_grad():
        wide.load_state_dict({k: v.double() for k, v in conv.state_dict().items()})
        exact = wide(x.double())
        conv32, attn32 = conv(x).double(), layer(x).double()
    bound = tolerances.conv_rounding(conv, x, torch.float32) + tolerances.conv_rounding(conv, x, torch.float64)
    assert_all_within("rounding-bound", [
        ("max|conv float32 - conv float64|", (conv32 - exact).abs(), bound),
        ("max|hard-limit attention float32 - conv float64|", (attn32 - exact).abs(), bound),
    ], case.describe(),
        case.reproduce("print((conv_to_attention(conv)(x).double() - conv.double()(x.double())).abs().max())"))
