"""The CIFAR ResNet18 baseline of the paper's Table 1 (and a narrow one for CPU demos).

The common CIFAR variant: a 3x3 stride-1 stem, no max-pool, BasicBlocks [2, 2, 2, 2] with 64/128/256/512
channels (stride 2 at the first block of stages 2-4, a 1x1 convolution + BatchNorm on the shortcut where the
shape changes), global average pooling (the paper's 4x4 pool at 32x32; adaptive here, so any input size
works) and Linear(512 -> classes). 11,173,962 parameters at the paper's configuration.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import _checks
from .registry import register_model


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn1(self.conv1(x)).relu()
        y = self.bn2(self.conv2(y))
        return (y + self.shortcut(x)).relu()


class ResNet(nn.Module):
    """CIFAR ResNet with BasicBlocks.

    Args:
        in_channels: input image channels.
        num_classes: outputs of the classifier.
        image_size: the model's default input (H, W) or an int; used for the FLOP count and the input
            check. Any size works (global average pooling).
        widths: channels of the four stages (the stem has widths[0]).
        blocks: BasicBlocks per stage ([2, 2, 2, 2] is ResNet18).
    """

    OVERRIDES = ("in_channels", "num_classes", "image_size", "widths")

    def __init__(self, *, in_channels: int = 3, num_classes: int = 10, image_size=(32, 32),
                 widths: Sequence[int] = (64, 128, 256, 512), blocks: Sequence[int] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.in_channels = _checks.positive_int("in_channels", in_channels)
        self.num_classes = _checks.positive_int("num_classes", num_classes)
        self.image_size = _checks.image_size(image_size)
        self.widths = _checks.int_tuple("widths", widths, 4)
        self.blocks = _checks.int_tuple("blocks", blocks, 4)

        self.stem = nn.Sequential(nn.Conv2d(in_channels, self.widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(self.widths[0]), nn.ReLU(inplace=True))
        stages, channels = [], self.widths[0]
        for index, (width, count) in enumerate(zip(self.widths, self.blocks)):
            stride = 1 if index == 0 else 2
            layers = []
            for _ in range(count):
                layers.append(BasicBlock(channels, width, stride))
                channels, stride = width, 1
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.image_batch(x, self.in_channels)
        x = self.stages(self.stem(x))
        return self.classifier(self.pool(x).flatten(1))

    def check_image_size(self, image_size) -> None:
        """Raise ValueError if `image_size` ((H, W) or an int) is not a valid size (any size works otherwise:
        global average pooling)."""
        _checks.image_size(image_size)

    def attention_layers(self) -> list:
        """No attention layers (uniform interface with the self-attention models)."""
        return []

    def no_weight_decay(self) -> list[str]:
        """Every parameter is decayed (the paper's ResNet run uses plain SGD weight decay)."""
        return []

    def extra_repr(self) -> str:
        return f"widths={self.widths}, blocks={self.blocks}, image_size={self.image_size}"


@register_model
def resnet18():
    """The paper's CIFAR ResNet18 baseline (11.2M parameters)."""
    return ResNet, dict()


@register_model
def tiny_resnet18():
    """ResNet18 with stages 16/32/64/128 wide, for CPU demos."""
    return ResNet, dict(widths=(16, 32, 64, 128))
