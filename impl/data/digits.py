"""scikit-learn's bundled handwritten digits: 1,797 real 8x8 grey images of 0-9, no download.

Pixels (0..16) are scaled to [0, 1], then normalised with the mean and std of the training pixels. The
train/test split is part of the dataset: a stratified 80/20 split with a fixed seed (1,437 / 360 images),
the same whatever seed the caller trains with. Augmentation (off by default for 'test'): a random
translation by up to one pixel in each direction (zero padding, i.e. background), no flips (digits have a
handedness).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

SPLIT_SEED = 0        # fixes the train/test split
TEST_FRACTION = 0.2
MAX_SHIFT = 1         # augmentation: translations in [-1, 1] pixels per axis


@functools.lru_cache(maxsize=1)
def _split() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16  # (N, 1, 8, 8) in [0, 1]
    labels = torch.tensor(bunch.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(torch.arange(len(labels)).numpy(), test_size=TEST_FRACTION,
                                           stratify=labels.numpy(), random_state=SPLIT_SEED)
    train_idx, test_idx = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    return {"train": (images[train_idx], labels[train_idx]), "test": (images[test_idx], labels[test_idx])}


def stats() -> tuple[float, float]:
    """(mean, std) of the training pixels in [0, 1] units."""
    images = _split()["train"][0]
    return float(images.mean()), float(images.std())


class Digits(torch.utils.data.Dataset):
    """One split of the digits; items (float tensor (1, 8, 8), int label)."""

    def __init__(self, train: bool, *, augment: bool = False) -> None:
        self.train, self.augment = train, augment
        images, self.labels = _split()["train" if train else "test"]
        self.images = images  # [0, 1]; normalised per item, after the shift pads with background (0)
        self.mean, self.std = stats()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.augment:
            dy, dx = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (2,)).tolist()
            padded = F.pad(image, (MAX_SHIFT,) * 4)
            h, w = image.shape[1:]
            image = padded[:, MAX_SHIFT + dy:MAX_SHIFT + dy + h, MAX_SHIFT + dx:MAX_SHIFT + dx + w]
        return (image - self.mean) / self.std, int(self.labels[index])

    def extra_repr(self) -> str:
        return f"split={'train' if self.train else 'test'}, augment={self.augment}"


def load_digits(train: bool, *, augment: bool = False) -> Digits:
    return Digits(train, augment=augment)
