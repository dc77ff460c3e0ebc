"""CIFAR-10 through torchvision, with the paper's augmentation and normalisation.

Augmentation (training split): random 32x32 crop of the image zero-padded by 4, random horizontal flip.
Normalisation: mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010), as in the paper's runs.

The files live in DIR/cifar-10-batches-py (the python version of the official archive), with DIR = `data_dir`,
else $ATTENTION_CNN_DATA/cifar10, else ~/.cache/attention-cnn/cifar10.

Integrity: torchvision's `CIFAR10` compares the md5 of every batch file (and of `batches.meta`) with the
official release on every construction, so no other file in the same format can be loaded (a subset, a
re-export, the small fake the tests write), and each load hashes 180 MB. `CIFAR10Files` replaces that check
by a structural one: every file present, data a multiple of 3x32x32 bytes per image, one label in 0..9 per
image. The md5 check stays where it protects something: `download=True` fetches the archive through
torchvision, which verifies the archive's md5 before extracting it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torchvision
from torchvision import transforms

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
ENV_VAR = "ATTENTION_CNN_DATA"
FOLDER = torchvision.datasets.CIFAR10.base_folder  # "cifar-10-batches-py"


def default_dir() -> Path:
    """$ATTENTION_CNN_DATA/cifar10 if the variable is set, else ~/.cache/attention-cnn/cifar10."""
    root = os.environ.get(ENV_VAR)
    return (Path(root) if root else Path.home() / ".cache" / "attention-cnn") / "cifar10"


def expected_files() -> list[str]:
    """The files CIFAR10Files needs inside `cifar-10-batches-py`."""
    cls = torchvision.datasets.CIFAR10
    return [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]


def missing_files(data_dir) -> list[str]:
    folder = Path(data_dir) / FOLDER
    return [name for name in expected_files() if not (folder / name).is_file()]


class CIFAR10Files(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10 with a structural integrity check instead of md5 (see the module docstring)."""

    def _check_integrity(self) -> bool:
        return not missing_files(self.root)

    def _load_meta(self) -> None:
        # torchvision's version refuses a meta file whose md5 differs from the official one.
        import pickle

        with open(Path(self.root) / FOLDER / self.meta["filename"], "rb") as infile:
            meta = pickle.load(infile, encoding="latin1")
        self.classes = meta[self.meta["key"]]
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}
        self._check_structure()

    def _check_structure(self) -> None:
        # super().__init__ has already reshaped the concatenated bytes to (N, 32, 32, 3): a file whose size is
        # not a multiple of 3072 bytes per image failed there (numpy's reshape error).
        labels = np.asarray(self.targets)
        if len(labels) != len(self.data):
            raise ValueError(f"CIFAR-10 files in {Path(self.root) / FOLDER} are inconsistent: "
                             f"{len(self.data)} images but {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise ValueError(f"CIFAR-10 labels in {Path(self.root) / FOLDER} must lie in "
                             f"[0, {len(self.classes)}), got [{labels.min()}, {labels.max()}]")


def transform(augment: bool) -> transforms.Compose:
    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    return transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def load_cifar10(train: bool, *, data_dir=None, download: bool = False, augment: bool = False) -> CIFAR10Files:
    """The CIFAR-10 train or test split; items (float tensor (3, 32, 32), int label)."""
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"data_dir must be None, a str or an os.PathLike (a directory), "
                        f"got {type(data_dir).__name__} {data_dir!r}")
    if not isinstance(download, bool):
        raise TypeError(f"download must be a bool (True or False), got {type(download).__name__} {download!r}")
    data_dir = default_dir() if data_dir is None else Path(data_dir).expanduser()
    if data_dir.name == FOLDER:  # accept the batches folder itself
        data_dir = data_dir.parent
    missing = missing_files(data_dir)
    if missing and not download:
        raise FileNotFoundError(
            f"CIFAR-10 not found: {data_dir / FOLDER} lacks {', '.join(missing)}. Pass --download "
            f"(download=True) to fetch it (170 MB) into {data_dir}, or point data_dir (or ${ENV_VAR}, "
            f"which holds a cifar10/ folder) at a directory that contains {FOLDER}/.")
    return CIFAR10Files(str(data_dir), train=train, transform=transform(augment), download=download)
