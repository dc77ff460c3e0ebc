"""The trainer: schedules, presets, the CLI's errors, the run directory, resume, kill + resume, divergence.

The end-to-end tests run the real CLI (`python -m impl.train`) in subprocesses on the digits data set with
tiny models; the usage-error tests call `impl.train.main` in-process (they stop before training starts).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from impl import models, presets, train
from impl.schedule import StepDecay, WarmupCosine, build_schedule

sys.path.insert(0, str(Path(__file__).parent))
from run_dirs import TENSORBOARD, tensorboard_event_files  # noqa: E402

# One xdist worker for the whole file (with `--dist loadgroup`): the acceptance run is a module fixture.
pytestmark = pytest.mark.xdist_group("train")

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SMALL = ["--model-override", "dim=16", "--model-override", "heads=4", "--model-override", "depth=1",
         "--model-override", "mlp_dim=32"]


def cli(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "impl.train", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def snapshot(run: Path) -> dict:
    """Every file of a run directory and its bytes (to check that a refused command changed nothing)."""
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def final_weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


# -- schedules -------------------------------------------------------------------------------------------
def test_warmup_cosine_never_trains_at_zero_and_peaks_after_five_percent():
    schedule = WarmupCosine(0.1, total_steps=1000)  # 50 warm-up steps
    assert schedule.warmup_steps == 50
    assert schedule(0) == pytest.approx(0.1 / 50)  # the very first step already trains
    assert [schedule(s) for s in range(50)] == sorted(schedule(s) for s in range(50))
    assert schedule(49) == pytest.approx(0.1) and schedule(50) == pytest.approx(0.1)
    assert schedule(525) == pytest.approx(0.05)  # half-way through the cosine
    assert 0 < schedule(999) < 1e-5
    decay = [schedule(s) for s in range(50, 1000)]
    assert decay == sorted(decay, reverse=True)


def test_step_decay_lands_exactly_on_the_epoch_boundary():
    schedule = StepDecay(0.1, steps_per_epoch=500)
    assert schedule(80 * 500 - 1) == pytest.approx(0.1)
    assert schedule(80 * 500) == pytest.approx(0.01)
    assert schedule(150 * 500 - 1) == pytest.approx(0.01) and schedule(150 * 500) == pytest.approx(0.001)
    assert schedule(250 * 500) == pytest.approx(1e-4) and schedule(300 * 500 - 1) == pytest.approx(1e-4)
    assert schedule(0) == 0.1  # no warm-up: the first step trains at the full rate


def test_schedule_arguments_are_checked():
    with pytest.raises(ValueError, match="schedule must be one of"):
        build_schedule("linear", base_lr=0.1, steps_per_epoch=1, epochs=1)
    with pytest.raises(ValueError, match="base_lr"):
        WarmupCosine(float("nan"), 10)
    with pytest.raises(ValueError, match="milestones"):
        StepDecay(0.1, 10, milestones=(150, 80))


# -- presets ---------------------------------------------------------------------------------------------
def test_presets_are_the_papers_runs():
    assert list(presets.PRESETS) == ["quadratic", "quadratic-generalized", "quadratic-generalized-pruned",
                                     "many-heads", "learned", "learned-content", "resnet"]
    for preset in presets.PRESETS.values():
        assert (preset.momentum, preset.weight_decay, preset.batch_size) == (0.9, 1e-4, 100)
        assert preset.model in models.list_models() and preset.tiny_model in models.list_models()
        assert preset.model_for("digits") == preset.tiny_model and preset.model_for("cifar10") == preset.model
    assert presets.get("resnet").schedule == "step" and presets.get("quadratic").schedule == "cosine"
    pruned = presets.get("quadratic-generalized-pruned")
    assert (pruned.lr, pruned.epochs, pruned.needs_init) == (0.01, 100, True)


def test_help_lists_every_preset(capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name, preset in presets.PRESETS.items():
        assert name in out and preset.summary[:30] in " ".join(out.split())


def test_weight_decay_skips_the_models_exemptions():
    model = models.build("tiny_quadratic", in_channels=1, image_size=8, downsample=1, dim=8, depth=1, heads=2)
    optimizer = train.build_optimizer(model, train.Config())
    decayed, exempt = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in exempt["params"]} == set(model.no_weight_decay()) != set()
    assert exempt["weight_decay"] == 0 and decayed["weight_decay"] == 1e-4
    assert len(decayed["params"]) + len(exempt["params"]) == len(list(model.parameters()))


# -- bad command lines: argparse usage errors, exit 2, naming the argument -------------------------------
@pytest.mark.parametrize("argv, expected", [
    (["--preset", "quadratic", "--epochs", "0"], "--epochs: must be an int > 0"),
    (["--preset", "quadratic", "--epochs", "-3"], "--epochs: must be an int > 0"),
    (["--preset", "quadratic", "--batch-size", "0"], "--batch-size: must be an int > 0"),
    (["--preset", "quadratic", "--lr", "0"], "--lr: must be a finite number > 0"),
    (["--preset", "quadratic", "--lr", "-0.1"], "--lr: must be a finite number > 0"),
    (["--preset", "quadratic", "--lr", "nan"], "--lr: must be a finite number > 0"),
    (["--preset", "quadratic", "--lr", "inf"], "--lr: must be a finite number > 0"),
    (["--preset", "quadratic", "--seed", "x"], "--seed: must be an int >= 0"),
    (["--preset", "quadratic", "--seed", str(2**64 - 1)], "--seed: must be an int in [0, 2**32)"),
    (["--preset", "quadratic", "--data", "mnist"], "--data: invalid choice"),
    (["--resume"], "--resume needs --out"),
    (["--epochs", "3"], "--preset is required"),
    (["--preset", "quadratic-generalized-pruned", "--data", "digits"], "--init-from RUN_DIR"),
    (["--preset", "quadratic", "--data", "digits", "--model", "vit"], "--model 'vit': unknown"),
    (["--preset", "quadratic", "--data", "digits", "--download"], "--download apply to --data cifar10 only"),
    (["--preset", "quadratic", "--model-override", "depht=2"], "--model-override depht"),
    (["--preset", "quadratic", "--model-override", "depth=0"], "depth must be a positive int, got 0"),
])
def test_bad_arguments_are_usage_errors(argv, expected, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        train.main([*argv, *(["--out", str(tmp_path / "run")] if "--resume" not in argv else [])])
    assert exit_.value.code == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_unknown_preset_lists_the_presets(capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(["--preset", "quadratik"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--preset: invalid choice: 'quadratik'" in err
    assert all(name in err for name in presets.PRESETS)


def test_resume_of_a_directory_that_is_no_run_says_so(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        train.main(["--resume", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "is not a run directory" in capsys.readouterr().err


def test_out_that_cannot_be_written_is_refused_before_the_data_is_read(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exit_:
        train.main(["--preset", "quadratic", "--data", "digits", "--out", str(blocker / "run")])
    assert exit_.value.code == 2 and f"{blocker} is not a writable directory" in capsys.readouterr().err


def test_a_bad_allocator_setting_is_a_usage_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTENTION_CNN_MALLOC", "jemalloc")
    with pytest.raises(SystemExit) as exit_:
        train.main(["--preset", "quadratic", "--data", "digits", "--out", str(tmp_path / "run")])
    assert exit_.value.code == 2 and "ATTENTION_CNN_MALLOC must be" in capsys.readouterr().err


def test_a_truncated_cifar_batch_is_a_clear_error(capsys, tmp_path):
    from fake_cifar import write_fake_cifar10  # tests/ is on the path (its conftest)

    root = tmp_path / "data"
    write_fake_cifar10(root)
    batch = next(root.rglob("data_batch_3"))
    batch.write_bytes(batch.read_bytes()[: batch.stat().st_size // 2])
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        code = train.main(["--preset", "quadratic", "--data", "cifar10", "--data-dir", str(root), "--out",
                           str(tmp_path / "run")])
    finally:  # train() switched deterministic algorithms on in this process
        torch.use_deterministic_algorithms(deterministic)
    assert code == 2 and "is truncated or corrupt" in capsys.readouterr().err


def test_run_files_are_readable_as_the_umask_allows(trained):
    for name in ("config.json", "checkpoints/last.pt", "checkpoints/best.pt", "metrics.csv"):
        assert (trained / name).stat().st_mode & 0o777 == 0o666 & ~train.checkpoint._UMASK, name


def test_a_batch_larger_than_the_data_set_is_refused_before_writing(capsys, tmp_path):
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        code = train.main(["--preset", "quadratic", "--data", "digits", "--batch-size", "5000", "--out",
                           str(tmp_path / "run")])
    finally:  # train() switched deterministic algorithms on in this process
        torch.use_deterministic_algorithms(deterministic)
    assert code == 2 and "--batch-size 5000 exceeds the 1437 training images" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cpu_runs_keep_freed_memory_for_reuse(monkeypatch, tmp_path):
    """impl.allocator.retain_freed_memory is called once per CPU run, before any training."""
    calls = []
    monkeypatch.setattr(train, "retain_freed_memory", lambda: calls.append("called") or True)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:  # refused before training (batch too large): the call comes first
        train.main(["--preset", "quadratic", "--data", "digits", "--batch-size", "5000", "--out", str(tmp_path / "r")])
    finally:
        torch.use_deterministic_algorithms(deterministic)
    assert calls == ["called"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("flags", [[], ["--amp"], ["--amp", "--compile"]], ids=["float32", "amp", "amp-compile"])
def test_cuda_runs_learn(flags, tmp_path):
    """The trainer on CUDA (`bench/gpu_session.sh tests`): 3 epochs of the quadratic preset on digits, as the
    acceptance run below, in float32, in bfloat16 autocast and compiled; every metric finite, and it learns
    (twice chance)."""
    run = tmp_path / "run"
    result = cli("--preset", "quadratic", "--data", "digits", "--epochs", 3, "--device", "cuda", *flags, "--out", run)
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = rows(run / "metrics.csv")
    assert [int(r["epoch"]) for r in metrics] == [1, 2, 3]
    assert all(math.isfinite(float(r[k])) for r in metrics for k in r)
    assert float(metrics[-1]["test_acc"]) > 0.2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is missing")
def test_device_cuda_without_cuda_is_a_clear_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        train.main(["--preset", "quadratic", "--data", "digits", "--device", "cuda", "--out", str(tmp_path / "r")])
    assert exit_.value.code == 2 and "CUDA is not available" in capsys.readouterr().err


# -- the acceptance run, resume and its refusals -------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The acceptance command: 3 epochs of the quadratic preset on digits (tiny_quadratic), on the CPU."""
    run = tmp_path_factory.mktemp("acceptance") / "run"
    result = cli("--preset", "quadratic", "--data", "digits", "--epochs", 3, "--out", run)
    assert result.returncode == 0, result.stderr
    return run


def test_acceptance_run_writes_the_run_directory(trained):
    config = json.loads((trained / "config.json").read_text())
    assert {k: config[k] for k in ("preset", "model", "data", "epochs", "seed", "batch_size", "lr")} == \
        {"preset": "quadratic", "model": "tiny_quadratic", "data": "digits", "epochs": 3, "seed": 42,
         "batch_size": 100, "lr": 0.1}
    assert config["model_overrides"] == {"in_channels": 1, "num_classes": 10, "image_size": [8, 8], "downsample": 1}
    with open(trained / "metrics.csv") as file:
        assert file.readline().strip() == "epoch,train_loss,train_acc,test_loss,test_acc,lr,images_per_s"
    metrics = rows(trained / "metrics.csv")
    assert [int(r["epoch"]) for r in metrics] == [1, 2, 3]
    assert all(math.isfinite(float(r[k])) for r in metrics for k in r)
    assert float(metrics[-1]["test_acc"]) > 0.3  # it learns (chance is 0.1)
    centres = rows(trained / "centres.csv")
    steps = sorted({int(r["step"]) for r in centres})
    assert steps[0] == 0 and steps[-1] == 3 * 14 and len([s for s in steps if 0 < s < 14]) >= 6
    assert len(centres) == len(steps) * 2 * 9  # every head of both layers at every point
    last = torch.load(trained / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(trained / "checkpoints" / "best.pt", weights_only=True)
    assert last["epoch"] == 3 and last["step"] == 42 and last["position"] == {"epoch": 3, "batch": 0}
    accuracies = [float(r["test_acc"]) for r in metrics]
    assert best["epoch"] == best["best"]["epoch"] == 1 + accuracies.index(max(accuracies))
    assert best["best"]["value"] == pytest.approx(max(accuracies), abs=1e-6)
    model = models.build(config["model"], **config["model_overrides"])
    model.load_state_dict(best["model"])
    assert bool(tensorboard_event_files(trained)) == TENSORBOARD
    figures = {p.name for p in (trained / "figures").glob("*.png")}
    assert {"centres.png", "accuracy.png", "contours.png", "attention_q4_4.png"} <= figures


def test_resume_extends_the_run_from_epoch_3_to_5(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    # A best.pt better than any epoch to come (as if a kill had struck between writing best.pt and last.pt):
    # the resumed run must not replace it.
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    best["best"]["value"] = 0.999
    train.checkpoint.save(run / "checkpoints" / "best.pt", best)
    best_bytes = (run / "checkpoints" / "best.pt").read_bytes()
    result = cli("--resume", "--epochs", 5, "--out", run, "--no-figures")
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout and "epoch 4, batch 0 (step 42)" in result.stdout
    assert [int(r["epoch"]) for r in rows(run / "metrics.csv")] == [1, 2, 3, 4, 5]
    assert rows(run / "metrics.csv")[:3] == rows(trained / "metrics.csv")
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 5 and config["out"] == str(run)
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 70
    assert max(float(r["test_acc"]) for r in rows(run / "metrics.csv")) < 0.999
    assert (run / "checkpoints" / "best.pt").read_bytes() == best_bytes


# The trainer with its n-th checkpoint write replaced by an abrupt exit (status 9): a kill at that moment.
KILLED_AT_SAVE = """
import os, sys
from impl import checkpoint, train
calls, write = [0], checkpoint.save
def save(path, state):
    calls[0] += 1
    if calls[0] == int(os.environ["KILL_AT_SAVE"]):
        os._exit(9)
    write(path, state)
checkpoint.save = save
sys.exit(train.main(sys.argv[1:]))
"""


def killed_at_save(n: int, run: Path) -> None:
    args = ["--preset", "quadratic", "--data", "digits", "--epochs", "3", "--out", str(run), "--no-figures"]
    result = subprocess.run([sys.executable, "-c", KILLED_AT_SAVE, *args], capture_output=True, text=True,
                            env={**ENV, "KILL_AT_SAVE": str(n)}, timeout=600)
    assert result.returncode == 9, result.stderr


def test_a_kill_between_an_epochs_two_saves_keeps_its_best(trained, tmp_path):
    accuracies = [float(r["test_acc"]) for r in rows(trained / "metrics.csv")]
    improved = [a > max(accuracies[:e], default=-math.inf) for e, a in enumerate(accuracies)]
    best_epoch = 1 + accuracies.index(max(accuracies))
    saves_before = sum(1 + imp for imp in improved[:best_epoch - 1])
    killed_at_save(saves_before + 2, tmp_path / "run")  # after the first of the best epoch's two saves
    resumed = cli("--resume", "--out", tmp_path / "run", "--no-figures")
    assert resumed.returncode == 0, resumed.stderr
    expected = torch.load(trained / "checkpoints" / "best.pt", weights_only=True)
    actual = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert actual["epoch"] == expected["epoch"] == best_epoch
    assert all(torch.equal(expected["model"][k], actual["model"][k]) for k in expected["model"])


def test_a_run_killed_before_its_first_checkpoint_resumes_from_its_beginning(trained, tmp_path):
    run = tmp_path / "run"
    killed_at_save(1, run)
    assert (run / "config.json").exists() and not (run / "checkpoints" / "last.pt").exists()
    resumed = cli("--resume", "--out", run, "--no-figures")
    assert resumed.returncode == 0, resumed.stderr
    assert "has no checkpoint yet" in resumed.stdout and "starting the run from its beginning" in resumed.stdout
    columns = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")
    assert [[r[c] for c in columns] for r in rows(run / "metrics.csv")] == \
        [[r[c] for c in columns] for r in rows(trained / "metrics.csv")]
    assert rows(run / "centres.csv") == rows(trained / "centres.csv")
    expected, actual = final_weights(trained), final_weights(run)
    assert all(torch.equal(expected[k], actual[k]) for k in expected)


def test_resume_with_an_incompatible_config_is_refused_and_changes_nothing(trained, capsys):
    before = snapshot(trained)
    for change, expected in ((["--lr", "0.5"], "lr: 0.1 -> 0.5"),
                             (["--preset", "learned"], "preset: 'quadratic' -> 'learned'"),
                             (["--model", "tiny_learned"], "model: 'tiny_quadratic' -> 'tiny_learned'"),
                             (["--batch-size", "50"], "batch_size: 100 -> 50")):
        with pytest.raises(SystemExit) as exit_:
            train.main(["--resume", "--out", str(trained), *change])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and str(trained / "config.json") in err and expected in err
    with pytest.raises(SystemExit):
        train.main(["--preset", "quadratic", "--data", "digits", "--out", str(trained)])
    assert "already holds a run" in capsys.readouterr().err
    assert snapshot(trained) == before


def test_checkpoint_of_another_run_is_refused(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    state["config"] = {**state["config"], "model": "tiny_learned", "preset": "learned"}
    torch.save(state, last)
    before = snapshot(run)
    assert train.main(["--resume", "--epochs", "4", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert str(last) in err and "incompatible run" in err and "model: 'tiny_learned' -> 'tiny_quadratic'" in err
    assert snapshot(run) == before


def test_truncated_checkpoint_is_a_clear_error_and_nothing_is_overwritten(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    before = snapshot(run)
    assert train.main(["--resume", "--epochs", "4", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert str(last) in err and "corrupt or truncated" in err
    assert snapshot(run) == before


def test_resume_of_a_finished_run_with_fewer_epochs_is_refused(trained, capsys):
    before = snapshot(trained)
    assert train.main(["--resume", "--epochs", "2", "--out", str(trained)]) == 2
    assert "more than --epochs 2" in capsys.readouterr().err
    assert snapshot(trained) == before


# -- kill -9 in the middle of an epoch, then --resume: bitwise the uninterrupted run ---------------------
def test_sigkill_mid_epoch_then_resume_gives_bitwise_the_same_weights(tmp_path):
    # dropout and augmentation both draw random numbers, so the RNG states must be restored exactly
    args = ["--preset", "quadratic", "--data", "digits", "--epochs", 2, "--batch-size", 20,
            "--checkpoint-every", 5, "--no-figures", *SMALL, "--model-override", "dropout=0.1",
            "--model-override", "attn_dropout=0.1"]
    command = [sys.executable, "-m", "impl.train", *map(str, args)]
    reference = subprocess.Popen([*command, "--out", str(tmp_path / "reference")], env=ENV,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen([*command, "--out", str(tmp_path / "victim")], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "victim" / "checkpoints" / "last.pt"
    try:
        deadline = time.monotonic() + 300
        while True:  # wait for a checkpoint in the middle of the second epoch, then kill -9
            assert victim.poll() is None, "the run ended before a mid-epoch checkpoint of epoch 2 was seen"
            assert time.monotonic() < deadline, "no mid-epoch checkpoint of epoch 2 within 300 s"
            if last.exists():
                position = torch.load(last, weights_only=True)["position"]  # saves are atomic: always whole
                if position["epoch"] == 1 and position["batch"] > 0:
                    victim.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.005)
        victim.wait(timeout=30)
        assert victim.returncode == -signal.SIGKILL
        survived = torch.load(last, weights_only=True)
        assert survived["position"]["epoch"] == 1 and 0 < survived["position"]["batch"] < 71, survived["position"]
        resumed = cli("--resume", "--out", tmp_path / "victim")
        assert resumed.returncode == 0, resumed.stderr
        assert f"batch {survived['position']['batch']} (step {survived['step']})" in resumed.stdout
        assert reference.wait(timeout=600) == 0, reference.stderr.read()
    finally:
        for process in (reference, victim):
            if process.poll() is None:
                process.kill()
    expected, actual = final_weights(tmp_path / "reference"), final_weights(tmp_path / "victim")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), f"{name} differs after kill + resume"
    columns = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")
    assert [[r[c] for c in columns] for r in rows(tmp_path / "victim" / "metrics.csv")] == \
        [[r[c] for c in columns] for r in rows(tmp_path / "reference" / "metrics.csv")]
    assert rows(tmp_path / "victim" / "centres.csv") == rows(tmp_path / "reference" / "centres.csv")
    assert not list((tmp_path / "victim" / "checkpoints").glob(".*.tmp"))


# -- divergence ------------------------------------------------------------------------------------------
def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    # lr 30 overflows at step 7-8 under either GEMM backend, after the checkpoint of step 4; lr 3 sat at the
    # edge (on an AMD CPU without AVX-512 its two epochs ended at a loss of 7e12, finite)
    run = tmp_path / "run"
    result = cli("--preset", "quadratic", "--data", "digits", "--epochs", 2, "--lr", 30, "--checkpoint-every", 4,
                 "--no-figures", *SMALL, "--out", run)
    assert result.returncode == 1, result.stdout + result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "non-finite" in message and "step" in message and str(run / "checkpoints" / "last.pt") in message
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    stopped_at = int(message.split("step ")[1].split(")")[0].split(" ")[0])
    assert 0 < state["step"] < stopped_at and f"(step {state['step']}) is kept" in message
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    epochs_logged = [int(r["epoch"]) for r in rows(run / "metrics.csv")] if (run / "metrics.csv").exists() else []
    assert all(e <= state["epoch"] for e in epochs_logged)


# -- the pruned preset: start from another run, prune its degenerate heads, resume the pruned model -------
def test_pruned_preset_starts_from_a_run_prunes_and_resumes(tmp_path):
    source = tmp_path / "generalized"
    (source / "checkpoints").mkdir(parents=True)
    overrides = {**train.data_overrides("tiny_generalized", "digits"), "dim": 16, "heads": 4, "depth": 1,
                 "mlp_dim": 32}
    torch.manual_seed(0)
    model = models.build("tiny_generalized", **overrides)
    with torch.no_grad():  # head 2 attends along a line: Sigma^-1 = S S^T of rank 1 (condition number inf)
        model.layers[0].attention.encoding.scale[2] = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    config = {"preset": "quadratic-generalized", "model": "tiny_generalized", "model_overrides": overrides,
              "data": "digits", "epochs": 1, "seed": 42}
    (source / "config.json").write_text(json.dumps(config))
    state = {key: {} for key in train.checkpoint.KEYS}
    state.update(format=train.checkpoint.FORMAT, model=model.state_dict(), rng=[], epoch=1, step=14, config=config)
    train.checkpoint.save(source / "checkpoints" / "best.pt", state)

    run = tmp_path / "pruned"
    result = cli("--preset", "quadratic-generalized-pruned", "--init-from", source, "--epochs", 1, "--no-figures",
                 "--out", run)
    assert result.returncode == 0, result.stderr
    saved = json.loads((run / "config.json").read_text())
    assert saved["pruned_heads"] == [["layers.0.attention", [2]]]
    assert (saved["model"], saved["lr"], saved["init_from"]) == ("tiny_generalized", 0.01, str(source))
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"][
        "layers.0.attention.merge.weight"].shape == (16, 3 * 16)
    resumed = cli("--resume", "--epochs", 2, "--out", run, "--no-figures")  # the pruned model is rebuilt
    assert resumed.returncode == 0, resumed.stderr
    assert [int(r["epoch"]) for r in rows(run / "metrics.csv")] == [1, 2]
    rebuilt, _, _ = train.checkpoint.load_run_model(run)
    assert rebuilt.layers[0].attention.heads == 3
