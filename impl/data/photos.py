"""Crops of real photographs and a random convolution "teacher" to imitate on them.

The two photographs bundled with scikit-learn (`sklearn.datasets.load_sample_images()`: china.jpg and
flower.jpg, 427 x 640 RGB each) need no download. A crop set is fixed by its seed: each crop picks a
photograph and a top-left corner at random, is scaled to [0, 1] and normalised per channel with the mean and
std of the two photographs. The teacher is a seeded `nn.Conv2d(3, out_channels, 3, padding=1)` with torch's
default init distribution (weights and bias uniform in +-1/sqrt(fan_in)); its output on the crops is the
target an attention layer is trained to reproduce (`impl.teacher`).

Nothing here touches torch's global RNG: every draw comes from a `torch.Generator` seeded by the caller.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

PHOTO_NAMES = ("china.jpg", "flower.jpg")


def _check_int(name: str, value, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


@functools.lru_cache(maxsize=1)
def _photos_uint8() -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_sample_images  # scikit-learn ships the two JPEGs; no download

    images = load_sample_images().images
    # torch.tensor copies: the arrays scikit-learn returns are read-only.
    return tuple(torch.tensor(image).permute(2, 0, 1).contiguous() for image in images)  # (3, H, W)


def photos() -> list[torch.Tensor]:
    """The two photographs as float32 tensors (3, 427, 640) in [0, 1] (china, flower)."""
    return [image.float() / 255 for image in _photos_uint8()]


@functools.lru_cache(maxsize=1)
def photo_stats() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of the pixels of both photographs, in [0, 1] units."""
    pixels = torch.cat([image.flatten(1) for image in photos()], dim=1).double()  # (3, all pixels)
    return tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).tolist())


def _check_seed(seed) -> None:
    """A torch.Generator seed: an int in [0, 2**63)."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed}")


def photo_crops(n: int, size: int, seed: int, *, normalise: bool = True) -> torch.Tensor:
    """`n` random `size` x `size` RGB crops of the photographs, (n, 3, size, size) float32.

    Args:
        n: number of crops.
        size: side of each square crop, in pixels (at most 427, the photographs' height).
        seed: fixes the crops (photograph and corner of each); the same arguments give the same tensor.
        normalise: subtract the photographs' per-channel mean and divide by their std (`photo_stats`);
            otherwise the crops stay in [0, 1].
    """
    _check_int("n", n, 1)
    images = photos()
    height = min(image.shape[1] for image in images)
    width = min(image.shape[2] for image in images)
    _check_int("size", size, 1)
    if size > height:
        raise ValueError(f"size must be at most {height} (the photographs' height), got {size}")
    _check_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    which = torch.randint(len(images), (n,), generator=generator)
    top = torch.randint(height - size + 1, (n,), generator=generator)
    left = torch.randint(width - size + 1, (n,), generator=generator)
    crops = torch.stack([images[i][:, t:t + size, l:l + size]
                         for i, t, l in zip(which.tolist(), top.tolist(), left.tolist())])
    if normalise:
        mean, std = photo_stats()
        crops = (crops - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return crops.contiguous()


def conv_teacher(out_channels: int, seed: int, *, in_channels: int = 3, kernel_size: int = 3) -> nn.Conv2d:
    """A seeded random `nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)`.

    Weights and bias are uniform in +-1/sqrt(in_channels * kernel_size^2), torch's default init
    distribution, drawn from a generator seeded with `seed`. The teacher does not require grad.
    """
    _check_int("out_channels", out_channels, 1)
    _check_int("in_channels", in_channels, 1)
    _check_int("kernel_size", kernel_size, 1)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd (a centred 'same' kernel), got {kernel_size}")
    _check_seed(seed)
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    generator = torch.Generator().manual_seed(seed)
    bound = 1 / math.sqrt(in_channels * kernel_size ** 2)
    with torch.no_grad():
        conv.weight.copy_((torch.rand(conv.weight.shape, generator=generator) * 2 - 1) * bound)
        conv.bias.copy_((torch.rand(conv.bias.shape, generator=generator) * 2 - 1) * bound)
    conv.requires_grad_(False)
    return conv


def conv_teacher_dataset(n: int, size: int, out_channels: int, seed: int
                         ) -> tuple[torch.Tensor, torch.Tensor, nn.Conv2d]:
    """(inputs, targets, teacher): `photo_crops(n, size, seed)`, the teacher's outputs on them, the teacher.

    The teacher is `conv_teacher(out_channels, seed)`; targets are (n, out_channels, size, size).
    Use different seeds for training and held-out crops and build the teacher once (`conv_teacher`) to
    share it between them.
    """
    inputs = photo_crops(n, size, seed)
    teacher = conv_teacher(out_channels, seed)
    with torch.no_grad():
        targets = teacher(inputs)
    return inputs, targets, teacher
