"""The checks can fail: each known-wrong layer, fed to the same check function the real tests use, is
rejected with an AssertionError (and nothing is recorded for the report).

Mutations: one head's centre moved to a neighbouring pixel (hard limit and finite alpha), the kernel
transposed, alpha too small for the hard-limit tolerance, a wrong alpha given to the tail bound, a
perturbed merge block (gradients), a reference of another layer (fast paths), the layer's hand-written
backward off by 0.1%; and the assertion helper itself on NaN, on an error over its bound and on an
unknown statement id.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from unittest import mock

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import spec
from impl.attention import positional_merge, product_merge
from impl.attention.dense_merge import DenseMerge
from impl.convert import conv_to_attention
from verify import checks, reference, strategies, tolerances
from verify.assertions import RECORDS, assert_within, not_recorded
from verify.cases import ConvCase, LayerCase
from verify.profiles import examples

SMALL = examples(0.2)


def _padded(conv, x) -> tuple[int, ...]:
    pads = strategies.resolved_padding(conv.padding, conv.kernel_size, conv.dilation)
    return tuple(n + b + a for n, (b, a) in zip(x.shape[2:], pads))


def _rejects(check, *args) -> str:
    before = len(RECORDS)
    with not_recorded(), pytest.raises(AssertionError) as info:
        check(*args)
    assert len(RECORDS) == before
    return str(info.value)


def _reads(conv, x) -> list[list[list[int]]]:
    """Per axis, per tap: the input indices (not padding) the tap reads over the queries, by
    spec.geometry's queries and shifts."""
    pads = strategies.resolved_padding(conv.padding, conv.kernel_size, conv.dilation)
    reads = []
    for n, k, s, d, (before, after) in zip(x.shape[2:], conv.kernel_size, conv.stride, conv.dilation, pads):
        queries = spec.query_positions(n, k, s, before, after, d)
        reads.append([[q + shift - before for q in queries if 0 <= q + shift - before < n]
                      for shift in spec.shifts(k, d)])
    return reads


def _some_window_inside(conv, x) -> bool:
    """Whether some output's whole (dilated) window lies inside the image, on every axis."""
    pads = strategies.resolved_padding(conv.padding, conv.kernel_size, conv.dilation)
    return all(any(all(0 <= q + shift - before < n for shift in spec.shifts(k, d))
                   for q in spec.query_positions(n, k, s, before, after, d))
               for n, k, s, d, (before, after) in zip(x.shape[2:], conv.kernel_size, conv.stride,
                                                      conv.dilation, pads))


def _busiest_head(conv, x) -> tuple[int, tuple[int, ...], int]:
    """(head, tap, count): the head (tap, row-major) reading the most input pixels (not padding)."""
    reads = _reads(conv, x)
    taps = list(itertools.product(*(range(k) for k in conv.kernel_size)))
    counts = [math.prod(len(reads[a][t]) for a, t in enumerate(tap)) for tap in taps]
    head = max(range(len(taps)), key=counts.__getitem__)
    return head, taps[head], counts[head]


@SMALL
@given(case=strategies.conv_cases(dims=st.sampled_from((1, 2, 3))), data=st.data())
def test_a_head_moved_by_one_pixel_is_caught(case: ConvCase, data):
    conv, x = case.build()
    head, tap, count = _busiest_head(conv, x)
    axes = [a for a, n in enumerate(x.shape[2:]) if n >= 2]
    assume(count > 0 and axes)  # a head reading pixels, and another pixel to move it to
    axis = data.draw(st.sampled_from(axes), label="axis")
    first = _reads(conv, x)[axis][tap[axis]][0]  # the first pixel it reads on that axis
    step = 1 if first + 1 < x.shape[2 + axis] else -1  # ... moved to its neighbour inside the image
    layer = conv_to_attention(conv)
    alpha = data.draw(strategies.alphas(16.0, 64.0), label="alpha")
    soft = conv_to_attention(conv, alpha)
    with torch.no_grad():
        layer.encoding.centre[head, axis] += step
        soft.encoding.centre[head, axis] += step
    message = _rejects(checks.hard_limit, "lemma1", conv, layer, x, case.describe(), case.reproduce("# moved"))
    assert "max|attn - conv|" in message and "> bound" in message and "[lemma1: " in message
    _rejects(checks.finite_alpha, "output-error-bound", conv, soft, x, alpha, case.describe(), "")


@SMALL
@given(case=strategies.conv_cases(dims=st.just(2), kernel=st.integers(2, 4)))
def test_a_transposed_kernel_is_caught(case: ConvCase):
    conv, x = case.build()
    assume(_some_window_inside(conv, x))  # else, e.g., a 1x1 image reads one tap only
    transposed = ConvCase(**{**case.__dict__}).conv()
    with torch.no_grad():
        transposed.weight.copy_(conv.weight.transpose(-1, -2))
    _rejects(checks.hard_limit, "lemma1", conv, conv_to_attention(transposed), x, case.describe(), "")


@SMALL
@given(case=strategies.conv_cases(), alpha=strategies.alphas(0.25, 4.0))
def test_a_too_small_alpha_is_caught_by_the_hard_limit_tolerance(case: ConvCase, alpha: float):
    conv, x = case.build()
    assume(math.prod(_padded(conv, x)) >= 2)  # one key: every softmax is exactly one-hot
    _rejects(checks.hard_limit, "lemma1", conv, conv_to_attention(conv, alpha), x, case.describe(), "")


@SMALL
@given(case=strategies.conv_cases(dtype=st.just("float64")), alpha=strategies.alphas(0.25, 2.0))
def test_a_wrong_alpha_is_caught_by_the_tail_bound(case: ConvCase, alpha: float):
    conv, x = case.build()
    padded = _padded(conv, x)
    # a neighbour of every centre key must exist: two keys on some axis for the first query's heads
    assume(max(padded) >= 2)
    layer = conv_to_attention(conv, alpha)
    ref = reference.attention(layer, x)
    probs = layer.attention_probabilities(tuple(x.shape[2:]), torch.float64).detach()
    claimed = 16 * layer.encoding.alpha.detach()
    _rejects(checks.tail, "tail-bound", layer, probs, ref, claimed, case.describe(), "")


@SMALL
@given(case=strategies.conv_cases(dims=st.sampled_from((1, 2))))
def test_a_perturbed_merge_block_is_caught_by_the_gradient_check(case: ConvCase):
    conv, x = case.build()
    head, _, count = _busiest_head(conv, x)
    assume(count > 0)  # every head reads only padding: the output is the bias whatever the weights
    layer = conv_to_attention(conv)
    with torch.no_grad():
        layer.merge.weight[0, head * conv.in_channels] += 1  # output 0, input channel 0: group 0's block
    upstream = torch.ones_like(conv(x))
    _rejects(checks.gradients, "lemma1", conv, layer, x, upstream, case.describe(), "")


@SMALL
@given(case=strategies.layer_cases())
def test_a_reference_of_another_layer_is_caught(case: LayerCase):
    layer, x = case.build()
    other = case.layer()
    with torch.no_grad():
        other.merge.weight.mul_(-1)
        if other.merge.bias is not None:
            other.merge.bias.add_(1)
        else:
            other.merge.weight.add_(1)
    _rejects(checks.fast_path, "fast-paths", layer, x, case.describe(), "", reference.attention(other, x))


def test_the_assertion_helper_fails_as_documented():
    reproduce = "conv, x = case.build()"
    message = _rejects(assert_within, "lemma1", 3e-9, 1e-12, "Conv2d(4, 6, k=(2,3), stride=2)", reproduce)
    assert message.startswith("max|attn - conv| = 3e-09 > bound 1e-12 [lemma1: Conv2d(4, 6, k=(2,3), stride=2)]")
    assert message.endswith("Reproduce:\n" + reproduce)
    _rejects(assert_within, "lemma1", float("nan"), 1.0, "nan", None)
    _rejects(assert_within, "lemma1", torch.tensor([0.0, float("nan")]), 1.0, "nan entry", None)
    _rejects(assert_within, "lemma1", torch.tensor([0.0, 2e-12]), torch.tensor([1.0, 1e-12]), "entrywise", None)
    _rejects(assert_within, "lemma1", 1e-300, 0.0, "zero bound", None)
    with not_recorded(), pytest.raises(KeyError, match="statement_id must be one of"):
        assert_within("lemma-one", 0.0, 1.0, "typo", None)
    with not_recorded():  # and an exact pass is a pass
        assert_within("lemma1", 0.0, 0.0, "exact", None)
        assert_within("lemma1", torch.zeros(3), torch.zeros(3), "exact", None)
    assert tolerances.gamma(1, torch.float64) > 0


@SMALL
@given(case=strategies.layer_cases(encoding=st.sampled_from(("quadratic", "learned", "generalized")),
                                   content=st.just(False), hard=st.just(False)), seed=strategies.seeds())
def test_a_backward_off_by_a_thousandth_is_caught(case: LayerCase, seed: int):
    """The layer's hand-written backwards (`positional_merge.PositionalMerge`, `product_merge.ProductMerge`
    (quadratic heads that share their matrices), `dense_merge.DenseMerge`), their gradients scaled by
    1.001: the gradient check must notice."""
    layer, x = case.build()
    layer.train()
    upstream = torch.randn(layer(x).shape, generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64).to(x.dtype)
    def skewed(original):
        return staticmethod(lambda ctx, grad: tuple(None if g is None else g * 1.001 for g in original(ctx, grad)))

    merges = (positional_merge.PositionalMerge, product_merge.ProductMerge, DenseMerge)
    with contextlib.ExitStack() as patches:
        for merge in merges:
            patches.enter_context(mock.patch.object(merge, "backward", skewed(merge.backward)))
        _rejects(checks.fast_path_gradients, "fast-paths", layer, x, upstream, case.describe(), "")


@SMALL
@given(case=strategies.converted_cases(), seed=strategies.seeds())
def test_a_fixed_encoding_backward_off_by_a_thousandth_is_caught(case, seed: int):
    """`ProductMerge`'s backward for a frozen encoding (`product_merge._fixed_probs_backward`), x's and the merge's
    gradients scaled by 1.001: the gradient check must notice."""
    layer, x = case.build()
    layer.train()
    layer.encoding.requires_grad_(False)
    upstream = torch.randn(layer(x).shape, generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64).to(x.dtype)
    original = product_merge._fixed_probs_backward
    calls = []

    def skewed(*args):
        original(*args)
        calls.append(args)
        for grad in args[-2:]:  # grad_x, grad_w, filled in place
            if grad is not None:
                grad.mul_(1.001)

    with mock.patch.object(product_merge, "_fixed_probs_backward", skewed):
        (layer(x.detach().requires_grad_(True)) * upstream).sum().backward()
        assume(calls)  # the layer took ProductMerge (not, e.g., a hard or a one-head layer)
        _rejects(checks.fast_path_gradients, "fast-paths", layer, x, upstream, case.describe(), "")
