"""Run directories as `impl.train` writes them (config.json, checkpoints/best.pt), with untrained models, for
the tests of the tools that read them (impl.analyze, impl.explore, impl.figures)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from impl import checkpoint, models


# The trainer logs to TensorBoard where the tensorboard package is installed (a development dependency, not on
# the GPU image), and skips it elsewhere.
TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


def tensorboard_event_files(run: Path) -> list[Path]:
    """The TensorBoard event files of run directory `run`."""
    return sorted((run / "tensorboard").glob("events.out.tfevents.*"))


def start_run(root: Path, name: str, model_name: str, overrides: dict, *, epochs: int = 1
              ) -> tuple[Path, torch.nn.Module, dict]:
    """(run directory, model, config): `root/name` with its checkpoints/ folder and config.json (preset
    `name`, digits, seed 0), and the registry's `model_name` built from torch seed 0."""
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    model = models.build(model_name, **overrides)
    config = {"preset": name, "model": model_name, "model_overrides": overrides, "data": "digits",
              "epochs": epochs, "seed": 0}
    (run / "config.json").write_text(json.dumps(config))
    return run, model, config


def save_best(run: Path, model: torch.nn.Module, config: dict, *, epoch: int = 1, step: int = 1) -> Path:
    """checkpoints/best.pt with the model's weights, as the trainer saves it; returns the run directory."""
    state = {key: {} for key in checkpoint.KEYS}
    state.update(format=checkpoint.FORMAT, model=model.state_dict(), rng=[], epoch=epoch, step=step,
                 position={"epoch": epoch, "batch": 0}, config=config)
    checkpoint.save(run / "checkpoints" / "best.pt", state)
    return run
