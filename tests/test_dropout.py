"""impl.dropout: the CPU mask's statistics, exact scaling, gradients, broadcasting, errors, and the CUDA
fallback's agreement in meaning with nn.Dropout."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from torch import nn

from impl import dropout as dropout_module
from impl.dropout import Dropout, _MaskedScale, dropout, keep_mask, keep_probability


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_fraction_is_binomial(p):
    n = 1 << 20
    torch.manual_seed(0)
    kept = keep_mask((n,), p).sum().item()
    keep = keep_probability(p)
    assert abs(keep - (1 - p)) <= 2**-16
    assert abs(kept - n * keep) < 6 * math.sqrt(n * keep * (1 - keep))  # six standard deviations


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_traced_masks_keep_the_same_fraction(p):
    """Under torch.compile (`python -m impl.train --compile`) the mask is the compiler's random 15-bit
    integers: one graph, and each element kept with the same probability `keep_probability(p)`. A mask of
    2^23 elements, which eager mode draws in parts on Python threads."""
    torch._dynamo.reset()
    n = 1 << 23
    torch.manual_seed(0)
    traced = torch.compile(lambda: keep_mask((n,), p), backend="aot_eager", fullgraph=True)
    kept = traced().sum().item()
    keep = keep_probability(p)
    assert abs(kept - n * keep) < 6 * math.sqrt(n * keep * (1 - keep))  # six standard deviations


@pytest.mark.parametrize("backend", [
    "aot_eager",
    pytest.param("inductor", marks=pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                                      reason="inductor needs a C++ compiler")),
])
def test_dropout_under_torch_compile_keeps_its_gradient(backend):
    """`impl.train --compile` and `bench.throughput --compile` take inductor. Under torch 2.11 (the GPU
    image's, within pyproject's range) inductor could not lower the mask's uint8 view of a bool tensor, so
    a model compiled on the CPU failed before its first step; and with either backend, the Function's
    output scaled in place came back with a zero gradient, silently. The compiled dropout's output and
    gradient are x and the upstream gradient times the mask, scaled by 1 / keep_probability(p) (p = 1/2:
    a scale of 2, exact whichever precision the compiled code multiplies in)."""
    torch._dynamo.reset()
    p = 0.5
    x = torch.randn(4, 64, requires_grad=True)
    out = torch.compile(lambda t: dropout(t, p), backend=backend, fullgraph=True)(x)
    kept = out.detach() != 0
    scale = 1 / keep_probability(p)
    assert torch.equal(out.detach(), torch.where(kept, x.detach() * scale, 0))
    upstream = torch.randn(4, 64)
    out.backward(upstream)
    assert torch.equal(x.grad, torch.where(kept, upstream * scale, 0))
    assert 0 < int(kept.sum()) < kept.numel()


def test_keep_probability_is_exact_on_multiples_of_two_to_the_minus_fifteen():
    assert keep_probability(0.5) == 0.5 and keep_probability(0.25) == 0.75 and keep_probability(0.0) == 1.0
    assert keep_probability(3 * 2**-15) == 1 - 3 * 2**-15
    assert keep_probability(0.1) == 1 - 3277 / 2**15


@pytest.mark.parametrize("p", [0.1, 0.7])
def test_each_of_a_words_four_pieces_is_binomial(p):
    """The mask reads each 64-bit draw as four 15-bit integers: elements 4i .. 4i + 3. Every position in
    the word keeps with the same probability (a piece whose top bit were not cleared, or a short top piece,
    would keep about twice as often as the others)."""
    n = 1 << 20
    torch.manual_seed(8)
    keep = keep_probability(p)
    by_piece = keep_mask((n // 4, 4), p).sum(0)
    for kept in by_piece.tolist():
        assert abs(kept - n / 4 * keep) < 6 * math.sqrt(n / 4 * keep * (1 - keep))


def test_masks_of_any_length_and_shape():
    torch.manual_seed(9)
    for shape in [(0,), (1,), (3,), (5, 7), (2, 3, 1, 5)]:
        mask = keep_mask(shape, 0.3)
        assert mask.shape == shape and mask.dtype == torch.bool


def test_masks_are_independent_across_elements_and_calls():
    torch.manual_seed(1)
    a, b = keep_mask((1 << 16,), 0.5), keep_mask((1 << 16,), 0.5)
    both = (a & b).float().mean().item()
    assert abs(both - 0.25) < 6 * math.sqrt(0.25 * 0.75 / (1 << 16))
    assert abs((a[1:] & a[:-1]).float().mean().item() - 0.25) < 6 * math.sqrt(0.25 * 0.75 / (1 << 16))


def test_a_mask_drawn_in_parts_depends_on_the_seed_not_the_thread_count(monkeypatch):
    """Above `PART_WORDS` words the mask is drawn in parts, each from its own seeded generator, on a pool of
    threads: the same seed gives the same mask with one thread or two, and the parts are not copies of each
    other (their seeds are distinct draws)."""
    monkeypatch.setattr(dropout_module, "PART_WORDS", 1 << 10)
    n = 40 * 4 << 10  # 40 parts of 4,096 elements
    threads = torch.get_num_threads()
    masks = []
    try:
        for count in (1, 2, 1):
            torch.set_num_threads(count)
            torch.manual_seed(5)
            masks.append(keep_mask((n,), 0.5))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[2])
    parts = masks[0].view(40, -1)
    assert not any(torch.equal(parts[0], parts[j]) for j in range(1, 40))
    agree = (parts[:-1] == parts[1:]).float().mean().item()  # neighbouring parts agree half the time
    assert abs(agree - 0.5) < 6 * math.sqrt(0.25 / parts[1:].numel())
    kept = masks[0].sum().item()
    assert abs(kept - n / 2) < 6 * math.sqrt(n / 4)


def test_kept_values_are_scaled_exactly_and_dropped_ones_are_zero():
    torch.manual_seed(2)
    x = torch.randn(64, 33)
    y = dropout(x, 0.1)
    kept = y != 0
    assert 0 < kept.sum() < x.numel()
    assert torch.equal(y[kept], x[kept] * (1 / keep_probability(0.1)))


def test_reproducible_under_manual_seed_and_generator():
    x = torch.randn(1000)
    torch.manual_seed(3)
    a = dropout(x, 0.3)
    torch.manual_seed(3)
    assert torch.equal(a, dropout(x, 0.3))
    g = torch.Generator().manual_seed(4)
    b = dropout(x, 0.3, generator=g)
    assert torch.equal(b, dropout(x, 0.3, generator=torch.Generator().manual_seed(4)))


def test_gradient_is_the_mask_times_the_scale():
    keep = torch.rand(5, 7) > 0.4
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: _MaskedScale.apply(t, keep, 1 / 0.6), (x,))
    y = dropout(x, 0.4)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, (y != 0).double() / keep_probability(0.4))


def test_broadcast_input_gets_one_mask_per_element_and_a_summed_gradient():
    keep = torch.rand(4, 3, 6) > 0.5
    probs = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: _MaskedScale.apply(t, keep, 2.0), (probs,))
    torch.manual_seed(5)
    out = dropout(probs, 0.5, shape=(4, 3, 6))
    assert out.shape == (4, 3, 6)
    images_differ = [not torch.equal(out[0] != 0, out[i] != 0) for i in range(1, 4)]
    assert any(images_differ)
    kept = out != 0
    assert torch.equal(out[kept], probs.detach().expand(4, 3, 6)[kept] * 2)


def test_identity_when_not_training_or_p_zero_and_zeros_at_p_one():
    x = torch.randn(3, 4)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    assert torch.equal(dropout(x, 1 - 2**-17), torch.zeros_like(x))  # keeps with probability 0: no 1/0
    assert torch.equal(dropout(x, 2**-17), x)  # keeps with probability 1, scale 1
    assert dropout(x, 0.5, training=False, shape=(2, 3, 4)).shape == (2, 3, 4)


@pytest.mark.parametrize("p", [-0.1, 1.5, "0.1", True, None])
def test_bad_p_is_a_value_error_naming_it(p):
    with pytest.raises(ValueError, match="p must be a float in \\[0, 1\\]"):
        dropout(torch.ones(2), p)
    with pytest.raises(ValueError, match="p must be"):
        Dropout(p)


def test_bad_input_and_shape():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        dropout([1.0, 2.0], 0.1)
    with pytest.raises(ValueError, match="shape"):
        dropout(torch.ones(3, 4), 0.1, shape=(3, 5))


def test_module_is_an_nn_dropout_with_the_same_contract():
    module = Dropout(0.25)
    assert isinstance(module, nn.Dropout) and repr(module) == repr(nn.Dropout(0.25))
    x = torch.randn(200, 50)
    torch.manual_seed(6)
    y = module(x)
    kept = y != 0
    assert torch.equal(y[kept], x[kept] * (1 / 0.75))
    module.eval()
    assert module(x) is x


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_takes_torch_dropout():
    x = torch.randn(1000, device="cuda")
    y = dropout(x, 0.2)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.8)


@pytest.mark.parametrize("encoding", ["quadratic", "generalized"])
def test_the_attention_layers_dropout_is_per_image_and_unbiased(encoding):
    """RelativeSelfAttention(attn_dropout=p) in training: identical images get different outputs (a mask per
    image), and their mean is the eval output within six standard errors of the empirical spread."""
    from impl.attention import RelativeSelfAttention

    torch.manual_seed(7)
    layer = RelativeSelfAttention(3, heads=4, encoding=encoding, attn_dropout=0.3)
    image = torch.randn(1, 3, 5, 4)
    images = image.expand(512, -1, -1, -1).contiguous()
    with torch.no_grad():
        layer.train()
        dropped = layer(images)
        layer.eval()
        clean = layer(image)[0]
    assert not torch.allclose(dropped[0], dropped[1])
    mean, spread = dropped.mean(0), dropped.std(0)
    assert torch.all((mean - clean).abs() <= 6 * spread / math.sqrt(len(images)) + 1e-6)
    assert (mean - clean).abs().max() > 0  # a finite sample: not the eval output exactly
