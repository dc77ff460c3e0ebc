"""The teacher experiment (impl.teacher) and its data (impl.data.photos).

Quadratic heads trained to imitate a random 3x3 convolution on photo crops must find the nine kernel shifts
one-to-one (Lemma 1's one-to-one map from heads to shifts, reached by training rather than by construction).
The full recipe and its measured table are in docs/RESULTS.md ("Teacher experiment"); here a reduced run
(fewer steps, crops and a smaller batch) must still match one-to-one, and the pieces are checked one by one.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from impl.data.photos import conv_teacher, conv_teacher_dataset, photo_crops, photo_stats
from impl.teacher import (TeacherConfig, build_layer, fresh_centres, heads_to_reset, kernel_grid, main, match_heads,
                          reset_heads, run)

# A reduced recipe: a third of the steps, a quarter of the crops, half the batch. It keeps every phase of
# the recipe (search with resets, sharpening, refit), so it has to find the shifts the same way.
REDUCED = dict(steps=800, train_crops=256, test_crops=64, batch=64)
REDUCED_SEED = 3


@pytest.fixture(scope="module")
def reduced_run():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(TeacherConfig(seed=REDUCED_SEED, **REDUCED))
    finally:
        torch.set_num_threads(threads)


# -- data ------------------------------------------------------------------------------------------------
def test_photo_crops_are_deterministic_and_normalised():
    a = photo_crops(64, 16, seed=5)
    assert a.shape == (64, 3, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, photo_crops(64, 16, seed=5))
    assert not torch.equal(a, photo_crops(64, 16, seed=6))
    raw = photo_crops(64, 16, seed=5, normalise=False)
    assert 0 <= float(raw.min()) and float(raw.max()) <= 1
    mean, std = photo_stats()
    expected = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(a, expected)
    # many crops: per-channel statistics near (0, 1), as the normalisation is the photographs' own
    many = photo_crops(2000, 8, seed=0)
    assert many.mean((0, 2, 3)).abs().max() < 0.1
    assert (many.std((0, 2, 3)) - 1).abs().max() < 0.1


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0, size=8, seed=0), "n must be"),
    (dict(n=4, size=0, seed=0), "size must be"),
    (dict(n=4, size=428, seed=0), "size must be at most 427"),
    (dict(n=4, size=8, seed=1.5), "seed must be an int"),
])
def test_photo_crops_reject_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        photo_crops(**kwargs)


def test_conv_teacher_dataset():
    inputs, targets, teacher = conv_teacher_dataset(8, 12, out_channels=5, seed=2)
    assert teacher.kernel_size == (3, 3) and teacher.padding == (1, 1) and teacher.out_channels == 5
    assert not teacher.weight.requires_grad
    assert inputs.shape == (8, 3, 12, 12) and targets.shape == (8, 5, 12, 12)
    torch.testing.assert_close(targets, teacher(inputs))
    same = conv_teacher(5, seed=2)
    assert torch.equal(same.weight, teacher.weight) and torch.equal(same.bias, teacher.bias)
    assert not torch.equal(conv_teacher(5, seed=3).weight, teacher.weight)
    bound = 1 / math.sqrt(27)
    assert float(teacher.weight.abs().max()) <= bound
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        conv_teacher(5, seed=0, kernel_size=2)


# -- pieces of the recipe ----------------------------------------------------------------------------------
def test_match_heads():
    grid = kernel_grid(3)
    exact = match_heads(grid[torch.randperm(9)], grid)
    assert exact["matched"] and exact["max_centre_distance"] == 0
    near = match_heads(grid + 0.2, grid)
    assert near["matched"] and abs(near["max_centre_distance"] - 0.2 * math.sqrt(2)) < 1e-6
    twice = grid.clone()
    twice[8] = torch.tensor([0.1, -0.1])  # two heads on the shift (0, 0), none on (1, 1)
    assert not match_heads(twice, grid)["matched"]


def _layer_with_heads(centres):
    layer = build_layer(TeacherConfig(), conv_teacher(4, seed=0))
    with torch.no_grad():
        layer.encoding.centre.copy_(torch.tensor(centres, dtype=torch.float32))
    return layer


def test_reset_rule_reads_the_layer_state():
    grid = kernel_grid(3).tolist()
    centres = [list(c) for c in grid]
    centres[8] = [0.1, 0.05]  # duplicate of head 4 (0, 0)
    centres[7] = [0.5, 0.0]   # parked between (0, 0) and (1, 0)
    layer = _layer_with_heads(centres)
    with torch.no_grad():
        blocks = layer.merge.weight.view(layer.out_dim, layer.heads, layer.dim)
        blocks.fill_(1.0)
        blocks[:, 8] = 0.5    # head 8 is the weaker of the duplicated pair
        blocks[:, 2] = 0.01   # head 2 is dead
    everyone = torch.ones(9, dtype=torch.bool)
    reasons = heads_to_reset(layer, 0.2, 0.5, 0.35, everyone, everyone)
    assert reasons == {2: "dead", 7: "parked", 8: "duplicate"}
    # young heads are spared
    young = torch.ones(9, dtype=torch.bool)
    young[[2, 7, 8]] = False
    assert heads_to_reset(layer, 0.2, 0.5, 0.35, young, young) == {}


def test_only_the_worst_parked_head_is_reset():
    centres = kernel_grid(3).tolist()
    centres[1] = [-1.0, 0.45]  # parked, nearly halfway between (-1, 0) and (-1, 1)
    centres[5] = [0.4, 1.0]    # parked, less so
    layer = _layer_with_heads(centres)
    everyone = torch.ones(9, dtype=torch.bool)
    assert heads_to_reset(layer, 0.0, 0.5, 0.35, everyone, everyone) == {1: "parked"}
    still = everyone.clone()
    still[1] = False  # head 1 is still moving: then head 5 is the worst settled one
    assert heads_to_reset(layer, 0.0, 0.5, 0.35, everyone, still) == {5: "parked"}


def test_fresh_centres_fill_the_largest_gap():
    grid = kernel_grid(3)
    centres = grid.clone()
    centres[8] = torch.tensor([0.1, 0.0])  # shift (1, 1) is left empty
    fresh = fresh_centres(centres, [8], 256, torch.Generator().manual_seed(0))
    assert fresh.shape == (1, 2)
    assert float((fresh[0] - grid[8]).norm()) < 0.3


def test_fresh_centres_stay_in_the_box_of_the_strong_heads():
    centres = kernel_grid(3)
    centres[7] = torch.tensor([-3.5, 0.0])  # a weak head drifting away, far above the window
    strong = torch.ones(9, dtype=torch.bool)
    strong[7] = False
    inside = fresh_centres(centres, [8], 256, torch.Generator().manual_seed(0), strong)[0]
    assert bool((inside.abs() <= 1).all()), inside  # in the strong heads' box: the window
    assert float(torch.cdist(inside[None], centres[:8]).min()) > 0.6  # in its gap, not on a head
    # the box of every head would stretch to the drifting one, and the gap found there is outside
    outside = fresh_centres(centres, [8], 256, torch.Generator().manual_seed(0))[0]
    assert float(outside[0]) < -1.5, outside


def test_reset_clears_the_head_and_its_optimizer_state():
    layer = _layer_with_heads(kernel_grid(3).tolist())
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.01)
    layer(photo_crops(2, 8, seed=0)).square().mean().backward()
    optimizer.step()
    before = layer.merge.weight.detach().clone()
    reset_heads(layer, optimizer, [3], TeacherConfig(), torch.Generator().manual_seed(0))
    blocks = layer.merge.weight.detach().view(layer.out_dim, layer.heads, layer.dim)
    assert bool((blocks[:, 3] == 0).all())
    others = [h for h in range(9) if h != 3]
    assert torch.equal(blocks[:, others], before.view(layer.out_dim, layer.heads, layer.dim)[:, others])
    assert abs(float(layer.encoding.alpha[3].detach()) - 0.5) < 0.05  # the paper's initial width
    state = optimizer.state[layer.encoding.centre]
    assert bool((state["exp_avg"][3] == 0).all()) and bool((state["exp_avg_sq"][3] > 0).all())


# -- the experiment ----------------------------------------------------------------------------------------
def test_reduced_run_finds_the_shifts_one_to_one(reduced_run):
    result, trajectory, layer = reduced_run
    assert result["matched"], f"heads did not cover the 9 shifts one-to-one: {result['centres']}"
    assert result["max_centre_distance"] < 0.25, result["centres"]
    assert result["relative_error"] < 0.05
    assert min(result["alphas"]) >= TeacherConfig.alpha_end - 1e-3  # sharpened to the end floor
    assert trajectory.shape == (REDUCED["steps"] // TeacherConfig.record_every + 1, 9, 2)
    # the heads started from the paper's random init, not on the grid
    assert match_heads(trajectory[0], kernel_grid(3))["max_centre_distance"] > 0.5


def test_cli_writes_json_and_figure(tmp_path):
    path = tmp_path / "result.json"
    assert main(["--seed", "1", "--steps", "40", "--json", str(path), "--out", str(tmp_path), "--quiet"]) == 0
    result = json.loads(path.read_text())
    for key in ("seed", "centres", "max_centre_distance", "matched", "relative_error", "resets", "alphas",
                "steps", "seconds"):
        assert key in result, key
    assert result["seed"] == 1 and result["steps"] == 40 and len(result["centres"]) == 9
    assert (tmp_path / "teacher_seed1.png").stat().st_size > 0


@pytest.mark.parametrize("args", [["--steps", "0"], ["--steps", "ten"], ["--seed", "-1"], ["--bogus"]])
def test_cli_rejects_bad_arguments(args):
    with pytest.raises(SystemExit) as info:
        main(args + ["--quiet"])
    assert info.value.code == 2


def test_cli_as_module_rejects_bad_arguments():
    proc = subprocess.run([sys.executable, "-m", "impl.teacher", "--steps", "-3"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--steps" in proc.stderr
