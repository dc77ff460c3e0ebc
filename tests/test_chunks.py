"""How the fused CPU merges split a batch into chunks of images (`impl.attention.mixing._chunk`)."""

import pytest
import torch

from impl.attention import mixing

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: the budgets are per thread


def test_chunks_of_the_issue_shape():
    # ProductMerge's widest tensor for a converted 3x3 conv: tokens x 3 column groups x 400 channels;
    # PositionalMerge's: tokens x 400 channels of one head; float32
    for side, product, per_head in ((16, 8, 4), (32, 2, 1)):
        assert mixing._chunk(16, side * side * 3 * 400, 4, CPU, mixing.PRODUCT_CHUNK_BYTES) == product
        assert mixing._chunk(16, side * side * 400, 4, CPU, mixing.CHUNK_BYTES) == per_head


def test_chunks_are_balanced_and_within_the_budget():
    for batch in range(1, 40):
        for per_image in (1, 1000, 300_000, 10**7):
            chunk = mixing._chunk(batch, per_image, 4, CPU, 1 << 20)
            assert 1 <= chunk <= batch
            assert chunk == 1 or chunk * per_image * 4 <= 1 << 20
            count = -(-batch // chunk)
            assert count * chunk - batch < count  # the last chunk is short by less than one per chunk


def test_the_budget_is_per_thread():
    per_image = 32 * 32 * 3 * 400  # 4.9 MB in float32: two images per chunk with one thread, four with two
    assert mixing._chunk(16, per_image, 4, CPU, mixing.PRODUCT_CHUNK_BYTES) == 2
    torch.set_num_threads(2)
    assert mixing._chunk(16, per_image, 4, CPU, mixing.PRODUCT_CHUNK_BYTES) == 4


def test_no_chunks_off_the_cpu():
    assert mixing._chunk(16, 10**9, 4, torch.device("meta"), 1) == 16
