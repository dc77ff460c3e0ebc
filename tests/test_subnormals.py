"""impl.subnormals: inside the block, float32 results below the normal range are zero, on torch's worker
threads too when the block is entered before they start (a fresh interpreter); outside it, and with
ATTENTION_CNN_SUBNORMALS=keep, they are the CPU's subnormals."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from impl import subnormals, train

TINY = torch.finfo(torch.float32).tiny


def _subnormal_count(t: torch.Tensor) -> int:
    return int(((t != 0) & (t.abs() < TINY)).sum())


def _product() -> torch.Tensor:
    """1e-30 * 1e-10 = 1e-40: a float32 subnormal, or 0 when flushed."""
    return torch.full((1,), 1e-30) * torch.full((1,), 1e-10)


# The block entered first thing, then a product over 4M elements (split over torch's threads)
PROBE = """
import json, sys, torch
from impl.subnormals import subnormals_flushed
torch.set_num_threads(2)
with subnormals_flushed() as took:
    small = torch.full((1 << 22,), 1e-30) * torch.full((1 << 22,), 1e-10)
    parallel = small.abs() * 1.0
print(json.dumps({"took": took, "subnormal": int(((parallel != 0) & (parallel < 1.2e-38)).sum())}))
"""


def _probe(env_value: str | None) -> dict:
    env = dict(os.environ)
    env.pop(subnormals.ENV, None)
    if env_value is not None:
        env[subnormals.ENV] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_entered_first_it_flushes_on_every_thread():
    result = _probe(None)
    if not result["took"]:
        pytest.skip("this CPU has no flush-to-zero mode")
    assert result["subnormal"] == 0


def test_the_environment_can_keep_subnormals():
    result = _probe("keep")
    assert result["took"] is False
    assert result["subnormal"] == 1 << 22


def test_the_block_restores_the_calling_thread(monkeypatch):
    monkeypatch.delenv(subnormals.ENV, raising=False)
    assert _subnormal_count(_product()) == 1
    with subnormals.subnormals_flushed() as took:
        if not took:
            pytest.skip("this CPU has no flush-to-zero mode")
        assert subnormals.flushing()
        assert _subnormal_count(_product()) == 0
        with subnormals.subnormals_flushed() as inner:  # nested: the outer block still owns the flag
            assert inner
        assert _subnormal_count(_product()) == 0
    assert not subnormals.flushing()
    assert _subnormal_count(_product()) == 1


@pytest.mark.parametrize("value", ["off", "KEEP", ""])
def test_a_bad_setting_is_named(monkeypatch, value):
    monkeypatch.setenv(subnormals.ENV, value)
    with pytest.raises(ValueError, match=f"{subnormals.ENV} must be 'flush' or 'keep'"):
        with subnormals.subnormals_flushed():
            pass


def test_the_trainer_refuses_a_bad_setting_before_training(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(subnormals.ENV, "never")
    with pytest.raises(SystemExit) as exit_:
        train.main(["--preset", "quadratic", "--data", "digits", "--out", str(tmp_path / "run")])
    assert exit_.value.code == 2
    assert subnormals.ENV in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["flop_rate", "throughput"])
def test_the_training_step_benchmarks_refuse_a_bad_setting(monkeypatch, capsys, command):
    import importlib
    monkeypatch.setenv(subnormals.ENV, "never")
    module = importlib.import_module(f"bench.{command}")
    with pytest.raises(SystemExit) as exit_:
        module.main(["--rounds", "1"])
    assert exit_.value.code == 2
    assert subnormals.ENV in capsys.readouterr().err
    assert not subnormals.flushing()
