"""`torchrun --nproc_per_node 2 -m impl.train ...` (DDP, gloo, CPU) trains the same weights as one process.

Both runs see the same global batches: each rank takes every other sample of the epoch's order, so batch k
of the two ranks together is batch k of the single run (`impl.train.EpochSampler`). Dropout and augmentation
are off, so no random number is drawn during training. What differs is only the order of float32 additions:
the single run sums the per-sample gradients of 50 images in one reduction; the two ranks sum 25 each and
DDP's all-reduce averages the two sums.

Tolerance. Reordering a float32 sum changes it by a few units in the last place (u = 2^-24 relative to the
magnitude of the terms). Over T optimizer steps each step adds such an error to the update, and the next
steps carry it along (SGD with momentum 0.9 and learning rate <= 0.1 over a few dozen steps neither damps nor
blows it up by much); we allow 4 float32 epsilons (eps = 2^-23) per step at the weights' scale:
|w_ddp - w_single| <= 4 eps T max(1, |w|), about 1.3e-5 for T = 28 steps. A real fault (a rank training on
the wrong samples, gradients summed instead of averaged, a missing all-reduce) moves weights by 1e-3 or
more within a step at these learning rates.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from run_dirs import TENSORBOARD, tensorboard_event_files  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ARGS = ["--preset", "quadratic", "--data", "digits", "--epochs", "1", "--batch-size", "50", "--no-augment",
        "--no-figures", "--model-override", "dim=16", "--model-override", "heads=4", "--model-override", "depth=1",
        "--model-override", "mlp_dim=32", "--model-override", "dropout=0", "--model-override", "attn_dropout=0"]
EPS32 = torch.finfo(torch.float32).eps


def test_two_cpu_processes_train_the_weights_of_one(tmp_path):
    single = subprocess.Popen([sys.executable, "-m", "impl.train", *ARGS, "--out", str(tmp_path / "single")],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "impl.train", *ARGS, "--out", str(tmp_path / "ddp")],
                         env=ENV, capture_output=True, text=True, timeout=600)
    single_out = single.communicate(timeout=600)[0]
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    assert single.returncode == 0, single_out
    assert "2 process(es)" in ddp.stdout and "1 process(es)" in single_out
    assert ddp.stdout.count("epoch 1/1:") == 1  # only rank 0 reports (and writes)

    one = torch.load(tmp_path / "single" / "checkpoints" / "last.pt", weights_only=True)
    two = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)
    steps = one["step"]
    assert steps == two["step"] == 1437 // 50 and two["config"]["world_size"] == 2 and len(two["rng"]) == 2
    for name, expected in one["model"].items():
        actual = two["model"][name]
        tolerance = 4 * EPS32 * steps * max(1.0, expected.abs().max().item())
        difference = (actual - expected).abs().max().item()
        assert difference <= tolerance, f"{name}: max |ddp - single| = {difference:.3g} > {tolerance:.3g}"

    with open(tmp_path / "single" / "metrics.csv") as a, open(tmp_path / "ddp" / "metrics.csv") as b:
        rows_one, rows_two = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert len(rows_one) == len(rows_two) == 1
    for column in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
        assert abs(float(rows_one[0][column]) - float(rows_two[0][column])) <= 1e-5, column
    assert len(tensorboard_event_files(tmp_path / "ddp")) == (1 if TENSORBOARD else 0)  # rank 0's only
