"""How the fused CPU merges split a batch into chunks of images (`impl.attention.axis_passes.chunk_images`)."""

import pytest
import torch

from impl.attention import axis_passes, positional_merge, product_merge
from verify import reference

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: the budgets are per thread


def test_chunks_of_the_issue_shape():
    # ProductMerge's widest tensor for a converted 3x3 conv: tokens x 3 column groups x 400 channels;
    # PositionalMerge's: tokens x 400 channels of one head; float32
    for side, product, per_head in ((16, 8, 4), (32, 2, 1)):
        head = side * side * 400  # elements of one head's tensor for one image
        assert axis_passes.chunk_images(16, 3 * head, 4, CPU, product_merge.PRODUCT_CHUNK_BYTES) == product
        assert axis_passes.chunk_images(16, head, 4, CPU, positional_merge.CHUNK_BYTES) == per_head


def test_chunks_are_balanced_and_within_the_budget():
    for batch in range(1, 40):
        for per_image in (1, 1000, 300_000, 10**7):
            chunk = axis_passes.chunk_images(batch, per_image, 4, CPU, 1 << 20)
            assert 1 <= chunk <= batch
            assert chunk == 1 or chunk * per_image * 4 <= 1 << 20
            count = -(-batch // chunk)
            assert count * chunk - batch < count  # the last chunk is short by less than one per chunk


def test_the_budget_is_per_thread():
    per_image = 32 * 32 * 3 * 400  # 4.9 MB in float32: two images per chunk with one thread, four with two
    assert axis_passes.chunk_images(16, per_image, 4, CPU, product_merge.PRODUCT_CHUNK_BYTES) == 2
    torch.set_num_threads(2)
    assert axis_passes.chunk_images(16, per_image, 4, CPU, product_merge.PRODUCT_CHUNK_BYTES) == 4


def test_no_chunks_off_the_cpu():
    assert axis_passes.chunk_images(16, 10**9, 4, torch.device("meta"), 1) == 16


@pytest.mark.parametrize("grad_mode", [True, False])
def test_product_merge_keeps_the_key_side_mix_only_when_recorded(monkeypatch, grad_mode):
    """`ProductMerge` keeps U (every image's key-side mix) for its backward only when autograd records the
    call; under no_grad (inference; parameters still requiring grad) U lives chunk by chunk. Either way
    the output is the same."""
    g = torch.Generator().manual_seed(0)
    rows, cols = torch.rand(2, 5, 5, generator=g), torch.rand(2, 4, 4, generator=g)
    query_probs = torch.stack([rows[0], rows[0], rows[1], rows[1]])
    key_probs = torch.stack([cols[0], cols[1], cols[0], cols[1]])
    x = torch.randn(3, 6, 5, 4, generator=g)
    weight = torch.randn(7, 4 * 6, generator=g, requires_grad=True)
    monkeypatch.setattr(product_merge, "PRODUCT_CHUNK_BYTES", 1)  # one image a chunk
    kept = []
    key_side = axis_passes.axis_apply

    def spy(p, t, axis, **kwargs):
        if axis == 1 and p.shape[0] == 2 * 4:  # the stacked key-axis matrices: U
            kept.append(kwargs.get("into") is not None)
        return key_side(p, t, axis, **kwargs)

    monkeypatch.setattr(product_merge, "axis_apply", spy)
    with torch.set_grad_enabled(grad_mode):
        out = positional_merge.positional_merge(x, weight, None, query_probs, [key_probs], fused=True)
    assert kept == [grad_mode] * 3 and (out.grad_fn is not None) == grad_mode
    monkeypatch.setattr(product_merge, "axis_apply", key_side)
    plain = reference.merge_heads(reference.mix_separable(x, [query_probs, key_probs]), weight.detach(), None)
    torch.testing.assert_close(out.detach(), plain)
