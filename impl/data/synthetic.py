"""CIFAR-shaped noise for timing runs on any machine: torchvision's FakeData, 3x32x32, 10 classes.

Image and label of item i depend only on i and the seed (FakeData seeds torch with i + offset; every
generator it touches, CUDA's included, is restored afterwards); the two splits use disjoint offsets. The pipeline is CIFAR-10's (the same
augmentation for 'train' and the same normalisation), so a timing run pays what a CIFAR-10 run pays. Labels
are random: there is nothing to learn.
"""

from __future__ import annotations

import torch
import torchvision

from .cifar import transform

DEFAULT_SIZE = {True: 5000, False: 1000}  # train, test
OFFSET_STRIDE = 1_000_000                  # seeds [seed * stride, (seed + 1) * stride): train half, test half
MAX_SEED = (2**63 - 1) // OFFSET_STRIDE - 1  # every item seed fits a signed 64-bit int


class _FakeData(torchvision.datasets.FakeData):
    """FakeData leaving every RNG as it found it: its per-item `torch.manual_seed` also reseeds CUDA's
    generators, and FakeData restores only the CPU one (a --data synthetic run on CUDA would otherwise
    draw its GPU dropout masks from the last item's seed)."""

    def __getitem__(self, index):
        # devices: only where CUDA is already up (a DataLoader worker must not initialise it)
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices):
            return super().__getitem__(index)


def load_synthetic(train: bool, *, augment: bool = False, seed: int = 0,
                   size: int | None = None) -> torchvision.datasets.FakeData:
    """The synthetic train or test split; items (float tensor (3, 32, 32), int label)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an int in [0, {MAX_SEED}], got {seed!r}")
    size = DEFAULT_SIZE[train] if size is None else size
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= OFFSET_STRIDE // 2:
        raise ValueError(f"size must be an int in [1, {OFFSET_STRIDE // 2}], got {size!r}")
    offset = seed * OFFSET_STRIDE + (0 if train else OFFSET_STRIDE // 2)
    return _FakeData(size=size, image_size=(3, 32, 32), num_classes=10,
                     transform=transform(augment), random_offset=offset)
