"""How the fused CPU merges split a batch into chunks of images (`impl.attention.mixing._chunk`)."""

import torch

from impl.attention import mixing

CPU = torch.device("cpu")


def test_product_merge_chunks_of_the_issue_shape():
    # the widest tensor of a converted 3x3 conv's row group: tokens x 3 column groups x 400 channels, float32
    for side, images in ((16, 2), (32, 1)):
        per_image = side * side * 3 * 400
        chunk = mixing._chunk(16, per_image, 4, CPU, budget=mixing.PRODUCT_CHUNK_BYTES, max_chunks=None)
        assert chunk == images, (side, chunk)


def test_chunks_stay_within_the_budget_and_the_cap():
    for batch in range(1, 40):
        for per_image in (1, 1000, 300_000, 10**7):
            uncapped = mixing._chunk(batch, per_image, 4, CPU, budget=1 << 20, max_chunks=None)
            assert 1 <= uncapped <= batch
            assert uncapped == 1 or uncapped * per_image * 4 <= 1 << 20
            capped = mixing._chunk(batch, per_image, 4, CPU, budget=1 << 20, max_chunks=3)
            assert -(-batch // capped) <= 3 and capped >= uncapped


def test_no_chunks_off_the_cpu():
    assert mixing._chunk(16, 10**9, 4, torch.device("meta")) == 16
