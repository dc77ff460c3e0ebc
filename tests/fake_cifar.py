"""Write a small fake CIFAR-10 in the real on-disk format, for tests (no network here).

The official `cifar-10-python.tar.gz` unpacks to `cifar-10-batches-py/` holding `data_batch_1` .. `_5`,
`test_batch` and `batches.meta`. Each batch is a dict pickled by Python 2: keys 'batch_label', 'labels',
'data' (uint8 array (N, 3072), each row the red, green then blue 32x32 planes, row-major) and 'filenames';
`batches.meta` holds 'label_names', 'num_cases_per_batch' and 'num_vis'. Python 2's str is pickled as a
byte string, so loading with `encoding="bytes"` (the dataset's own instructions) gives b"data" keys and with
`encoding="latin1"` (torchvision) gives "data". A dict pickled by Python 3 would give "data" either way, so
`_py2_pickle` rewrites the text strings we choose into Python 2 byte-string opcodes.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import struct
from pathlib import Path

import numpy as np

LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TEXT_OPCODES = {"BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE"}


def _py2_pickle(obj, strings: set[str]) -> bytes:
    """Pickle `obj` (protocol 2) with every text string in `strings` stored as a Python 2 str."""
    raw = pickle.dumps(obj, protocol=2)
    ops = list(pickletools.genops(raw))
    out = io.BytesIO()
    for i, (opcode, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(raw)
        if opcode.name in TEXT_OPCODES and arg in strings:
            data = arg.encode("latin1")
            if len(data) < 256:
                out.write(b"U" + struct.pack("<B", len(data)) + data)  # SHORT_BINSTRING
            else:
                out.write(b"T" + struct.pack("<i", len(data)) + data)  # BINSTRING
        else:
            out.write(raw[pos:end])
    return out.getvalue()


def fake_batch(n: int, rng: np.random.Generator, name: str) -> tuple[dict, set[str]]:
    labels = [int(v) for v in rng.integers(0, 10, n)]
    filenames = [f"fake_{name}_{i:05d}.png" for i in range(n)]
    batch = {"batch_label": name, "labels": labels,
             "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "filenames": filenames}
    return batch, {"batch_label", "labels", "data", "filenames", name, *filenames}


def write_fake_cifar10(root, *, per_batch: int = 20, test: int = 30, seed: int = 0) -> Path:
    """Write `root/cifar-10-batches-py/` with 5 training batches of `per_batch` images and a test batch of
    `test` images (random pixels and labels). Returns the `cifar-10-batches-py` folder."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = [(f"data_batch_{i}", per_batch, f"training batch {i} of 5") for i in range(1, 6)]
    files.append(("test_batch", test, "testing batch 1 of 1"))
    for filename, n, label in files:
        batch, strings = fake_batch(n, rng, label)
        (folder / filename).write_bytes(_py2_pickle(batch, strings))
    meta = {"label_names": LABEL_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(_py2_pickle(meta, {*meta, *LABEL_NAMES}))
    return folder


def read_batch(path) -> dict:
    """Load a batch file the way the dataset's page says to (encoding="bytes")."""
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")
