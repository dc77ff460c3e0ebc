"""Datasets by name: `info(name)` describes one, `load(name, split)` returns a torch Dataset.

Every item is (float tensor (C, H, W), int label), normalised. `DatasetInfo.downsample` is the space-to-depth
factor the self-attention models use on the dataset (`impl.models.build(..., downsample=info.downsample)`).

    cifar10    CIFAR-10 from torchvision (needs the files, or download=True), the paper's augmentation
    digits     scikit-learn's bundled 8x8 handwritten digits (1,797 images), a fixed 80/20 split
    synthetic  torchvision FakeData shaped like CIFAR-10 (noise, random labels), for timing runs
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    channels: int
    image_size: tuple[int, int]
    downsample: int  # space-to-depth factor the self-attention models use on this dataset


DATASETS = ("cifar10", "digits", "synthetic")
SPLITS = ("train", "test")

_INFO = {
    "cifar10": DatasetInfo("cifar10", num_classes=10, channels=3, image_size=(32, 32), downsample=2),
    "digits": DatasetInfo("digits", num_classes=10, channels=1, image_size=(8, 8), downsample=1),
    "synthetic": DatasetInfo("synthetic", num_classes=10, channels=3, image_size=(32, 32), downsample=2),
}


def info(name: str) -> DatasetInfo:
    """The `DatasetInfo` of dataset `name` (one of DATASETS)."""
    if name not in _INFO:
        raise ValueError(f"name must be one of {DATASETS}, got {name!r}")
    return _INFO[name]


def load(name: str, split: str, *, data_dir=None, download: bool = False, augment: bool | None = None,
         seed: int = 0, size: int | None = None) -> torch.utils.data.Dataset:
    """The `split` ('train' or 'test') of dataset `name`.

    Args:
        data_dir: cifar10: the directory holding `cifar-10-batches-py` (default $ATTENTION_CNN_DATA/cifar10,
            else ~/.cache/attention-cnn/cifar10). Ignored by the datasets that need no files.
        download: cifar10: fetch the files when they are missing. Ignored by the others.
        augment: random augmentation (default: on for 'train', off for 'test'); it draws from torch's
            global RNG, so seed torch (and the DataLoader's workers) to make it reproducible.
        seed: synthetic only: which draw of noise images (the others are fixed data and ignore it).
        size: synthetic only: number of images (default 5,000 train / 1,000 test).
    """
    info(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if augment is None:
        augment = split == "train"
    if not isinstance(augment, bool):
        raise TypeError(f"augment must be a bool or None, got {type(augment).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if name != "synthetic" and size is not None:
        raise ValueError(f"size applies to 'synthetic' only, not {name!r}")
    train = split == "train"
    if name == "cifar10":
        from .cifar import load_cifar10
        return load_cifar10(train, data_dir=data_dir, download=download, augment=augment)
    if name == "digits":
        from .digits import load_digits
        return load_digits(train, augment=augment)
    from .synthetic import load_synthetic
    return load_synthetic(train, augment=augment, seed=seed, size=size)


__all__ = ["DATASETS", "SPLITS", "DatasetInfo", "info", "load"]
