"""Datasets by name: `info(name)` describes one, `load(name, split)` returns a torch Dataset.

Every item is (float tensor (C, H, W), int label), normalised. `DatasetInfo.downsample` is the space-to-depth
factor the self-attention models use on the dataset (`impl.models.build(..., downsample=info.downsample)`).

    cifar10    CIFAR-10 from torchvision (needs the files, or download=True), the paper's augmentation
    digits     scikit-learn's bundled 8x8 handwritten digits (1,797 images), a fixed 80/20 split
    synthetic  torchvision FakeData shaped like CIFAR-10 (noise, random labels), for timing runs
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    channels: int
    image_size: tuple[int, int]
    downsample: int  # space-to-depth factor the self-attention models use on this dataset


_SEED_STRIDE = 1_000_000  # impl.data.synthetic.OFFSET_STRIDE (checked there; kept here to avoid importing it)
MAX_SEED = (2**63 - 1) // _SEED_STRIDE - 1
"""The largest `seed` of 'synthetic': its items seed torch with seed * 10^6 + index, a signed 64-bit int."""

DATASETS = ("cifar10", "digits", "synthetic")
SPLITS = ("train", "test")

_INFO = {
    "cifar10": DatasetInfo("cifar10", num_classes=10, channels=3, image_size=(32, 32), downsample=2),
    "digits": DatasetInfo("digits", num_classes=10, channels=1, image_size=(8, 8), downsample=1),
    "synthetic": DatasetInfo("synthetic", num_classes=10, channels=3, image_size=(32, 32), downsample=2),
}


def info(name: str) -> DatasetInfo:
    """The `DatasetInfo` of dataset `name` (one of DATASETS)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, one of {DATASETS}, got {type(name).__name__} {name!r}")
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
        seed: synthetic only: which draw of noise images (the others are fixed data and ignore it), an int
            in [0, MAX_SEED] (the images' torch seeds, seed * 10^6 + index, must fit a signed 64-bit int).
        size: synthetic only: number of images (default 5,000 train / 1,000 test).

    Raises:
        TypeError, ValueError: an argument of the wrong type or value; the message names it.
        FileNotFoundError: cifar10's files are missing (and download is False).
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
    if name == "synthetic" and seed > MAX_SEED:
        raise ValueError(f"seed must be an int in [0, {MAX_SEED}] for 'synthetic' (item seeds seed * "
                         f"{_SEED_STRIDE} + index must fit a signed 64-bit int), got {seed}")
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"data_dir must be None, a str or an os.PathLike (a directory), "
                        f"got {type(data_dir).__name__} {data_dir!r}")
    if not isinstance(download, bool):
        raise TypeError(f"download must be a bool (True or False), got {type(download).__name__} {download!r}")
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


__all__ = ["DATASETS", "MAX_SEED", "SPLITS", "DatasetInfo", "info", "load"]
