"""impl.checkpoint: atomic save, validated load, RNG states, weights of another model, pruned checkpoints."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from impl import checkpoint, models
from impl.checkpoint import CheckpointError


def _state(model: nn.Module | None = None, **changes) -> dict:
    model = model or nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for parameter in model.parameters():
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()  # creates the momentum buffers
    state = {"format": checkpoint.FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": {"name": "cosine", "base_lr": 0.1, "total_steps": 10, "warmup_fraction": 0.05},
             "scaler": {}, "rng": [checkpoint.capture_rng()], "position": {"epoch": 1, "batch": 3}, "epoch": 1,
             "step": 13, "config": {"preset": "quadratic", "model": "tiny_quadratic", "model_overrides": {"dim": 8}},
             "best": {"metric": "test_acc", "value": 0.5, "epoch": 1},
             "progress": {"loss": 1.0, "correct": 2.0, "seen": 3.0, "seconds": 0.5}}
    state.update(changes)
    return state


def test_save_is_loadable_without_pickled_code_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    state = _state()
    checkpoint.save(path, state)
    raw = torch.load(path, weights_only=True)  # the contract: no code execution needed
    assert set(raw) == set(checkpoint.KEYS)
    loaded = checkpoint.load(path)
    for key, tensor in state["model"].items():
        assert torch.equal(loaded["model"][key], tensor)
    assert loaded["optimizer"]["state"][0]["momentum_buffer"].shape == (2, 3)
    assert loaded["position"] == {"epoch": 1, "batch": 3} and loaded["step"] == 13
    assert sorted(os.listdir(path.parent)) == ["last.pt"]


def test_save_refuses_an_incomplete_state(tmp_path):
    state = _state()
    del state["rng"]
    with pytest.raises(ValueError, match="rng"):
        checkpoint.save(tmp_path / "x.pt", state)
    assert not (tmp_path / "x.pt").exists()


def test_a_failed_save_keeps_the_previous_file_and_removes_its_temporary(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save(path, _state(step=1))
    before = path.read_bytes()

    def half_then_crash(file):
        file.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoint.atomic_write_bytes(path, half_then_crash)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    assert checkpoint.load(path)["step"] == 1


def test_temporaries_left_by_a_kill_are_removed(tmp_path):
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"torn")
    (tmp_path / "last.pt").write_bytes(b"keep")
    removed = checkpoint.remove_temporaries(tmp_path)
    assert [p.name for p in removed] == [".last.pt.abc123.tmp"]
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_rng_states_round_trip_through_a_file(tmp_path):
    checkpoint.seed_everything(7)
    random.gauss(0, 1)      # leaves a cached gaussian in python's state
    np.random.randn()       # and numpy's
    captured = checkpoint.capture_rng()
    expected = (torch.rand(3).tolist(), np.random.rand(2).tolist(), random.random(), random.gauss(0, 1),
                np.random.randn())
    checkpoint.save(tmp_path / "c.pt", _state(rng=[captured]))
    checkpoint.seed_everything(123)  # scramble
    checkpoint.restore_rng(checkpoint.load(tmp_path / "c.pt")["rng"][0])
    assert (torch.rand(3).tolist(), np.random.rand(2).tolist(), random.random(), random.gauss(0, 1),
            np.random.randn()) == expected


@pytest.mark.parametrize("keep", [0, 100, 0.5, -10])
def test_truncated_checkpoint_is_a_clear_error_naming_the_file(tmp_path, keep):
    path = tmp_path / "last.pt"
    checkpoint.save(path, _state())
    data = path.read_bytes()
    size = keep if isinstance(keep, int) and keep >= 0 else int(len(data) * keep) if keep > 0 else len(data) + keep
    path.write_bytes(data[:size])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        checkpoint.load(path)
    assert str(path) in str(info.value)


def test_garbage_and_foreign_files_are_rejected(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="garbage.pt"):
        checkpoint.load(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}, "epoch": 3}, foreign)
    with pytest.raises(CheckpointError, match="not an attention-cnn checkpoint"):
        checkpoint.load(foreign)
    incomplete = tmp_path / "incomplete.pt"
    state = _state()
    del state["optimizer"]
    torch.save(state, incomplete)
    with pytest.raises(CheckpointError, match="lacks.*optimizer"):
        checkpoint.load(incomplete)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "missing.pt")


def test_config_differences_name_the_source_and_every_key():
    saved = {"preset": "quadratic", "model": "tiny_quadratic", "lr": 0.1, "epochs": 3}
    checkpoint.check_config(saved, {**saved, "epochs": 5}, source="run/last.pt", ignore=("epochs",))
    with pytest.raises(CheckpointError) as info:
        checkpoint.check_config(saved, {**saved, "model": "tiny_learned", "lr": 0.2}, source="run/last.pt")
    message = str(info.value)
    assert "run/last.pt" in message and "model: 'tiny_quadratic' -> 'tiny_learned'" in message
    assert "lr: 0.1 -> 0.2" in message


def test_weights_of_another_model_are_refused_naming_the_file(tmp_path):
    small = dict(in_channels=1, image_size=8, downsample=1, dim=8, depth=1, heads=2, mlp_dim=8)
    quadratic = models.build("tiny_quadratic", **small)
    path = tmp_path / "last.pt"
    checkpoint.save(path, _state(models.build("tiny_learned", **small)))
    state = checkpoint.load(path)
    with pytest.raises(CheckpointError, match="last.pt holds the weights of another model") as info:
        checkpoint.load_model_weights(quadratic, state["model"], source=path)
    assert "encoding" in str(info.value)
    wider = models.build("tiny_quadratic", **{**small, "dim": 16})
    with pytest.raises(CheckpointError, match="another model"):
        checkpoint.load_model_weights(wider, quadratic.state_dict(), source=path)


def test_pruned_checkpoint_loads_into_a_freshly_built_model(tmp_path):
    overrides = dict(in_channels=1, image_size=[8, 8], downsample=1, dim=8, depth=2, heads=3, mlp_dim=8)
    model = models.build("tiny_generalized", **overrides)
    with torch.no_grad():  # make head 1 of layer 0 degenerate (Sigma^-1 of rank 1: it attends along a line)
        model.layers[0].attention.encoding.scale[1] = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    pruned = models.pruning.prune_degenerate_heads(model)
    assert pruned[0][1] == [1] and model.layers[0].attention.heads == 2
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "tiny_generalized", "model_overrides": overrides}))
    checkpoint.save(run / "checkpoints" / "last.pt", _state(model))
    rebuilt, state, path = checkpoint.load_run_model(run)
    assert path.name == "last.pt" and rebuilt.layers[0].attention.heads == 2
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(rebuilt(x), model.eval()(x))


def test_load_run_model_without_a_checkpoint_says_so(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model": "tiny_quadratic", "model_overrides": {}}))
    with pytest.raises(CheckpointError, match="has no checkpoint"):
        checkpoint.load_run_model(tmp_path)
