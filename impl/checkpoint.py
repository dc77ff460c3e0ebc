"""Checkpoints: atomic save, validated load, and everything a run needs to resume exactly.

A checkpoint is a plain dict of tensors, lists, numbers and strings, readable with
`torch.load(path, weights_only=True)` (no pickled code). Keys (`KEYS`):

    format       "attention-cnn/checkpoint/1"
    model        the model's state_dict (the bare module: never DDP's or torch.compile's wrapper)
    optimizer    optimizer.state_dict() (momentum buffers included)
    scheduler    the schedule's parameters (impl.schedule; the learning rate is a function of `step`)
    scaler       the gradient scaler's state_dict (empty when no scaler is enabled)
    rng          one dict per rank: torch CPU, CUDA (if present), numpy and python `random` states
    position     {"epoch": e, "batch": b}: the next batch to train is batch b of 0-based epoch e
    epoch        epochs completed (the weights are those after `epoch` epochs plus `position.batch` batches)
    step         optimizer steps done
    config       the run's resolved config (impl.train.Config as a dict)
    best         {"metric": "test_acc", "value": v, "epoch": e}: the best evaluation so far
    progress     running sums of the unfinished epoch (loss, correct, seen, seconds) for its metrics row

`save` writes a temporary file in the same directory, flushes and fsyncs it, renames it over the target
with `os.replace` and fsyncs the directory: a reader (or a resume after a crash) sees the old file or the
new one, never a torn one. `load` raises `CheckpointError` naming the file for anything it cannot trust:
a missing, truncated or corrupt file, another format, missing keys; `check_config` and `load_model_weights`
refuse a checkpoint of another run or model, naming what differs. `load_run_model` is the readers' entry
point (figures, analysis): it rebuilds a run's model from RUN/config.json and loads best.pt or last.pt,
pruned heads included.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch
from torch import nn

FORMAT = "attention-cnn/checkpoint/1"
KEYS = ("format", "model", "optimizer", "scheduler", "scaler", "rng", "position", "epoch", "step", "config",
        "best", "progress")
TEMPORARY_SUFFIX = ".tmp"


class CheckpointError(RuntimeError):
    """A checkpoint or run directory that cannot be used; the message names the file and the reason."""


# -- random number generators ------------------------------------------------------------------------
def capture_rng() -> dict:
    """This process's RNG states as tensors, lists and numbers (no numpy objects: weights_only-safe)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping) -> None:
    """Inverse of `capture_rng`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    python = state["python"]
    random.setstate((python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python `random`."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# -- save --------------------------------------------------------------------------------------------
def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_umask() -> int:
    """The process's umask (reading it means setting it: set straight back, once, at import)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write_bytes(path: str | os.PathLike, write) -> None:
    """Call `write(file)` on a temporary file next to `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    with contextlib.suppress(AttributeError, OSError):  # mkstemp's 0600 -> what open() would give (the umask)
        os.fchmod(fd, 0o666 & ~_UMASK)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)


def save(path: str | os.PathLike, state: Mapping) -> None:
    """Atomically write the checkpoint dict `state` (it must hold every key of KEYS) to `path`."""
    missing = [key for key in KEYS if key not in state]
    if missing:
        raise ValueError(f"state is missing checkpoint keys {missing}")
    atomic_write_bytes(path, lambda file: torch.save(dict(state), file))


def remove_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an interrupted `save` may have left in `directory`; returns them."""
    directory = Path(directory)
    stale = sorted(directory.glob(f".*{TEMPORARY_SUFFIX}")) if directory.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


# -- load --------------------------------------------------------------------------------------------
def load(path: str | os.PathLike, *, map_location="cpu", mmap: bool = False) -> dict:
    """Read and check a checkpoint written by `save`; raise CheckpointError naming `path` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for damaged files
        raise CheckpointError(f"{path} is corrupt or truncated ({path.stat().st_size} bytes) and cannot be "
                              f"loaded: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                              ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not an attention-cnn checkpoint: format {found!r}, expected {FORMAT!r}")
    missing = [key for key in KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path} is incomplete: it lacks {missing}")
    return state


def config_differences(saved: Mapping, current: Mapping, *, ignore: Iterable[str] = ()) -> list[str]:
    """Lines 'key: saved -> current' for every key whose value differs (keys in `ignore` excepted)."""
    ignore = set(ignore)
    lines = []
    for key in sorted(set(saved) | set(current)):
        if key in ignore:
            continue
        old, new = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if old != new:
            lines.append(f"{key}: {old!r} -> {new!r}")
    return lines


def check_config(saved: Mapping, current: Mapping, *, source: str | os.PathLike,
                 ignore: Iterable[str] = ()) -> None:
    """Raise CheckpointError naming `source` if `saved` and `current` differ outside `ignore`."""
    differences = config_differences(saved, current, ignore=ignore)
    if differences:
        raise CheckpointError(f"{source} belongs to an incompatible run (saved -> requested):\n  "
                              + "\n  ".join(differences))


def load_model_state(model: nn.Module, state_dict: Mapping, *, source: str | os.PathLike) -> None:
    """`model.load_state_dict(state_dict)`, strict, with a CheckpointError naming `source` on mismatch."""
    ours, theirs = model.state_dict(), state_dict
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    shapes = [f"{k}: {tuple(theirs[k].shape)} in the file, {tuple(ours[k].shape)} in the model"
              for k in ours if k in theirs and tuple(theirs[k].shape) != tuple(ours[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch {_few(shapes)}")
        raise CheckpointError(f"{source} holds the weights of another model ({type(model).__name__} does not "
                              f"match): " + "; ".join(parts))
    model.load_state_dict(state_dict)


def load_model_weights(model: nn.Module, state_dict: Mapping, *, source: str | os.PathLike) -> None:
    """Load `state_dict` into `model`, first shrinking its attention layers to the head counts of a pruned
    checkpoint (impl.models.pruning.match_heads); CheckpointError naming `source` if it does not fit."""
    from impl.models import pruning

    try:
        pruning.match_heads(model, state_dict)
    except ValueError as error:
        raise CheckpointError(f"{source} holds the weights of another model: {error}") from None
    load_model_state(model, state_dict, source=source)


def load_run_model(run_dir: str | os.PathLike, *, which: Iterable[str] = ("best", "last"),
                   map_location="cpu") -> tuple[nn.Module, dict, Path]:
    """Rebuild a run's model from RUN/config.json and load the first of RUN/checkpoints/{which}.pt found.

    Returns (model in eval mode, the checkpoint dict, its path). The run-directory contract: the model is
    `impl.models.build(config["model"], **config["model_overrides"])`.
    """
    from impl import models

    run = Path(run_dir)
    config_path = run / "config.json"
    try:
        config = json.loads(config_path.read_text())
        name, overrides = config["model"], config["model_overrides"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{config_path} is missing or not a run config: {error}") from None
    candidates = [run / "checkpoints" / f"{which_one}.pt" for which_one in which]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise CheckpointError(f"{run} has no checkpoint: none of {', '.join(map(str, candidates))} exists")
    state = load(path, map_location=map_location)
    model = models.build(name, **overrides)
    load_model_weights(model, state["model"], source=path)
    return model.eval(), state, path


def _few(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)})"
