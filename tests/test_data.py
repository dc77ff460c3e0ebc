"""Datasets: CIFAR-10 read from files in the real on-disk format, the digits, the synthetic noise, info()."""

from __future__ import annotations

import dataclasses
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from fake_cifar import LABEL_NAMES, read_batch, write_fake_cifar10  # noqa: E402

from impl.data import DATASETS, DatasetInfo, info, load  # noqa: E402
from impl.data.cifar import MEAN, STD  # noqa: E402

PER_BATCH, TEST = 20, 30


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar10(root, per_batch=PER_BATCH, test=TEST, seed=1)
    return root


# -- info -------------------------------------------------------------------------------------------------
def test_info():
    assert DATASETS == ("cifar10", "digits", "synthetic")
    assert info("cifar10") == DatasetInfo("cifar10", 10, 3, (32, 32), 2)
    assert info("digits") == DatasetInfo("digits", 10, 1, (8, 8), 1)
    assert info("synthetic") == DatasetInfo("synthetic", 10, 3, (32, 32), 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info("digits").channels = 3
    with pytest.raises(ValueError, match=r"name must be one of \('cifar10', 'digits', 'synthetic'\), got 'mnist'"):
        info("mnist")


def test_load_argument_errors(cifar_root):
    with pytest.raises(ValueError, match="name must be one of"):
        load("mnist", "train")
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'test'\), got 'val'"):
        load("digits", "val")
    with pytest.raises(TypeError, match="augment"):
        load("digits", "train", augment="yes")
    with pytest.raises(ValueError, match="seed"):
        load("synthetic", "train", seed=-1)
    with pytest.raises(ValueError, match="size applies to 'synthetic' only"):
        load("digits", "train", size=10)
    with pytest.raises(ValueError, match="size must be"):
        load("synthetic", "train", size=0)


@pytest.mark.parametrize("name", DATASETS)
def test_items_match_info(name, cifar_root):
    meta = info(name)
    for split in ("train", "test"):
        dataset = load(name, split, **({"data_dir": cifar_root} if name == "cifar10" else {}))
        image, label = dataset[len(dataset) - 1]
        assert image.dtype == torch.float32 and image.shape == (meta.channels, *meta.image_size)
        assert type(label) is int and 0 <= label < meta.num_classes
        assert all(n % meta.downsample == 0 for n in meta.image_size)


# -- cifar10 --------------------------------------------------------------------------------------------------
def test_fake_files_have_the_real_format(cifar_root):
    folder = cifar_root / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"])
    batch = read_batch(folder / "data_batch_3")  # as the dataset's page says: keys are byte strings
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (PER_BATCH, 3072)
    assert len(batch[b"labels"]) == PER_BATCH and batch[b"batch_label"] == b"training batch 3 of 5"
    meta = read_batch(folder / "batches.meta")
    assert meta[b"label_names"] == [name.encode() for name in LABEL_NAMES]
    with open(folder / "test_batch", "rb") as f:  # as torchvision reads them: text keys
        assert set(pickle.load(f, encoding="latin1")) == {"batch_label", "labels", "data", "filenames"}


def test_cifar_images_and_labels(cifar_root):
    raw = read_batch(cifar_root / "cifar-10-batches-py" / "test_batch")
    test = load("cifar10", "test", data_dir=cifar_root)
    assert len(test) == TEST and test.classes == LABEL_NAMES
    # Each row holds the red, green and blue 32x32 planes; ToTensor scales to [0, 1], then normalisation.
    pixels = torch.tensor(raw[b"data"]).reshape(TEST, 3, 32, 32).float() / 255
    expected = (pixels - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    for i in (0, 7, TEST - 1):
        image, label = test[i]
        torch.testing.assert_close(image, expected[i])
        assert label == raw[b"labels"][i]
    train = load("cifar10", "train", data_dir=cifar_root, augment=False)
    labels = [label for name in range(1, 6)
              for label in read_batch(cifar_root / "cifar-10-batches-py" / f"data_batch_{name}")[b"labels"]]
    assert len(train) == 5 * PER_BATCH and [train[i][1] for i in range(len(train))] == labels


def test_cifar_augmentation(cifar_root):
    plain = load("cifar10", "train", data_dir=cifar_root, augment=False)
    augmented = load("cifar10", "train", data_dir=cifar_root)  # augment defaults to True for 'train'
    torch.manual_seed(0)
    first = [augmented[i][0] for i in range(10)]
    torch.manual_seed(0)
    assert all(torch.equal(a, augmented[i][0]) for i, a in enumerate(first))  # reproducible under a seed
    assert any(not torch.equal(a, plain[i][0]) for i, a in enumerate(first))
    assert [augmented[i][1] for i in range(10)] == [plain[i][1] for i in range(10)]


def test_cifar_data_dir_forms(cifar_root, monkeypatch):
    assert len(load("cifar10", "test", data_dir=cifar_root / "cifar-10-batches-py")) == TEST
    assert len(load("cifar10", "test", data_dir=str(cifar_root))) == TEST
    env_root = cifar_root.parent / "env-root"
    write_fake_cifar10(env_root / "cifar10", per_batch=2, test=3)
    monkeypatch.setenv("ATTENTION_CNN_DATA", str(env_root))
    assert len(load("cifar10", "test")) == 3


def test_cifar_missing_files_message(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="--download") as error:
        load("cifar10", "train", data_dir=missing)
    assert str(missing / "cifar-10-batches-py") in str(error.value)
    monkeypatch.setenv("ATTENTION_CNN_DATA", str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "env" / "cifar10")):
        load("cifar10", "test")
    folder = write_fake_cifar10(tmp_path / "partial", per_batch=2, test=3)
    (folder / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="lacks data_batch_4[.] Pass --download"):
        load("cifar10", "test", data_dir=tmp_path / "partial")


def test_cifar_structural_check(tmp_path):
    folder = write_fake_cifar10(tmp_path, per_batch=2, test=3)
    with open(folder / "test_batch", "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    batch["labels"][1] = 12
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(ValueError, match=r"labels .* must lie in \[0, 10\)"):
        load("cifar10", "test", data_dir=tmp_path)


# -- digits -----------------------------------------------------------------------------------------------
def test_digits_split_is_fixed_and_stratified():
    train, test = load("digits", "train", augment=False), load("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    other = load("digits", "train", augment=False, seed=7)  # the split is part of the dataset
    assert all(torch.equal(train[i][0], other[i][0]) for i in range(0, len(train), 97))
    counts = np.bincount([test[i][1] for i in range(len(test))], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 20% of each class (174..183 images per class)
    train_images = torch.stack([train[i][0] for i in range(len(train))])
    test_images = torch.stack([test[i][0] for i in range(len(test))])
    # normalised with the training pixels' statistics
    assert abs(float(train_images.mean())) < 1e-5 and abs(float(train_images.std()) - 1) < 1e-3
    # no test image is a training image (the 1,797 digits are pairwise distinct)
    train_set = {tuple(x.flatten().tolist()) for x in train_images}
    assert not any(tuple(x.flatten().tolist()) in train_set for x in test_images)


def test_digits_augmentation_shifts_by_at_most_one_pixel():
    plain = load("digits", "train", augment=False)
    augmented = load("digits", "train")
    background = float(plain[0][0].min())  # a 0 pixel, normalised
    torch.manual_seed(0)
    for i in range(20):
        shifted, label = augmented[i]
        original = plain[i][0]
        assert label == plain[i][1]
        padded = torch.nn.functional.pad(original, (1, 1, 1, 1), value=background)
        windows = [padded[:, 1 + dy:9 + dy, 1 + dx:9 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        assert any(torch.allclose(shifted, window) for window in windows)


# -- synthetic ----------------------------------------------------------------------------------------------
def test_synthetic_is_deterministic_per_index():
    train, test = load("synthetic", "train", augment=False), load("synthetic", "test")
    assert (len(train), len(test)) == (5000, 1000)
    assert len(load("synthetic", "train", size=64)) == 64
    state = torch.get_rng_state()
    a, label_a = train[123]
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    b, label_b = load("synthetic", "train", augment=False)[123]
    assert torch.equal(a, b) and label_a == label_b
    assert not torch.equal(train[0][0], test[0][0])
    assert not torch.equal(train[0][0], load("synthetic", "train", augment=False, seed=1)[0][0])
    labels = [train[i][1] for i in range(200)]
    assert set(labels) == set(range(10))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_synthetic_items_leave_the_cuda_generator_alone():
    torch.cuda.init()
    state = torch.cuda.get_rng_state()
    load("synthetic", "train")[7]
    assert torch.equal(torch.cuda.get_rng_state(), state)
