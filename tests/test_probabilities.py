"""The layers' positional probabilities carry no negligible entries (`encodings.drop_negligible`): subnormal
probabilities, and products of tiny ones with gradients, cost a microcode assist per operation on Intel CPUs.
"""

import torch

from impl.attention.encodings import attention_softmax, probability_floor
from impl.convert import conv_to_attention


def _converted(size: int = 16, alpha: float = 4.0):
    conv = torch.nn.Conv2d(3, 2, 3, padding=1)
    return conv_to_attention(conv, alpha), (size, size)


def test_converted_probabilities_have_no_negligible_entries():
    layer, shape = _converted()
    floor = probability_floor(torch.float32)
    kind, per_axis = layer.positional(shape, torch.float32, "cpu")
    dense = layer.attention_probabilities(shape)
    assert kind == "separable"
    for probs in [*per_axis, dense]:
        assert not bool(((probs > 0) & (probs < floor)).any())
    # alpha = 4 puts exp(-4 d^2) of the far keys among float32's subnormals: the plain softmax has them
    plain = layer.encoding.axis_logits(0, layer.axis_offsets(shape, torch.float32, "cpu")[0]).softmax(-1)
    assert bool(((plain > 0) & (plain < torch.finfo(torch.float32).tiny)).any())
    assert bool(((plain - per_axis[0]).abs() < floor).all())
    assert torch.equal(per_axis[0][plain >= floor], plain[plain >= floor])


def test_float64_keeps_every_probability():
    logits = torch.linspace(0, -800, 64, dtype=torch.float64)
    assert probability_floor(torch.float64) == 0.0
    assert torch.equal(attention_softmax(logits), logits.softmax(-1))


def test_dropped_entries_keep_their_gradient_path_exact():
    """The gradient is the softmax's own through the kept entries: a dropped one passes no upstream gradient."""
    logits = torch.tensor([0.0, -1.0, -40.0], requires_grad=True)
    probs = attention_softmax(logits)
    assert probs[2] == 0 and probs[1] > 0
    weights = torch.tensor([1.0, 2.0, 3.0])
    (probs * weights).sum().backward()
    kept = logits.detach().softmax(-1)
    kept[2] = 0
    expected = kept * (weights - (kept * weights).sum())
    torch.testing.assert_close(logits.grad, expected)
