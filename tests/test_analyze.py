"""impl.analyze: how convolutional a trained attention layer is, checked on layers whose answer is known.

A layer of one-hot quadratic heads on the 3x3 shifts is a convolution: every head conv-like with all its
mass on its shift, zero spread, ConViT's distance equal to the hard limit's (computed here pixel by pixel),
`attention_to_conv` chosen and exact. The least-squares projection recovers a convolution it is fed. Content
maps reproduce the layer's output. The CLI writes analysis.json / .csv / figures/analysis.png.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from impl import analyze, checkpoint, models
from impl.attention import RelativeSelfAttention

sys.path.insert(0, str(Path(__file__).parent))
from run_dirs import save_best, start_run  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


DIGITS = dict(in_channels=1, num_classes=10, image_size=[8, 8], downsample=1)
SMALL = dict(dim=16, depth=2, heads=9, mlp_dim=16)
SHIFTS = [(r, c) for r in (-1, 0, 1) for c in (-1, 0, 1)]


def make_run(root: Path, name: str, model_name: str, overrides: dict, prepare=None) -> Path:
    """A run directory as impl.train writes it (config.json, checkpoints/best.pt) for an untrained model,
    after `prepare(model)` has set whatever weights the test needs."""
    run, model, config = start_run(root, name, model_name, overrides)
    if prepare is not None:
        with torch.no_grad():
            prepare(model)
    return save_best(run, model, config)


def one_hot_first_layer(model) -> None:
    """Layer 1: the nine heads on the 3x3 shifts with alpha = 50 (1 - p < 1e-20): a 3x3 convolution."""
    encoding = model.attention_layers()[0].encoding
    encoding.centre.copy_(torch.tensor(SHIFTS, dtype=torch.float32))
    encoding.width.fill_(10.0)  # alpha = width^2 / 2 = 50


@pytest.fixture(scope="module")
def one_hot_run(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("runs"), "one-hot", "tiny_quadratic", DIGITS | SMALL, one_hot_first_layer)
    analysis = analyze.analyze_run(run, images=64, batch_size=16)
    analyze.write_outputs(analysis)
    return run, analysis


# -- known answers ---------------------------------------------------------------------------------------------
def hard_limit_distance(shift: tuple[int, int], size: int = 8) -> float:
    """ConViT's distance of a one-hot head on an size x size grid without padding: the key is q + shift
    clamped into the grid (the softmax's limit over the keys present), averaged over every query."""
    total = 0.0
    for r, c in itertools.product(range(size), repeat=2):
        kr, kc = min(max(r + shift[0], 0), size - 1), min(max(c + shift[1], 0), size - 1)
        total += math.hypot(kr - r, kc - c)
    return total / size ** 2


def test_one_hot_heads_are_conv_like_and_convert_exactly(one_hot_run):
    _, analysis = one_hot_run
    first = analysis.layers[0]
    assert first.conv_like_heads == 9 and first.nearest_conv == "attention_to_conv" and first.kernel == [3, 3]
    for head, shift in zip(first.head_stats, SHIFTS):
        assert head.shift == list(shift) and head.peak_shift == list(shift)
        assert head.conv_like and head.nearest_mass > 1 - 1e-9 and head.peak_mass == head.nearest_mass
        assert max(abs(c - s) for c, s in zip(head.centre, shift)) < 1e-9
        assert head.spread < 1e-6
        assert head.distance == pytest.approx(hard_limit_distance(shift), abs=1e-9)
    assert first.error < 1e-10 and first.error_peak_shift < 1e-10
    assert first.acc_replaced == first.acc


def test_diffuse_heads_are_not_conv_like(one_hot_run):
    """Layer 2 keeps the paper's init (alpha ~ 0.5): spread out, projected by least squares."""
    _, analysis = one_hot_run
    second = analysis.layers[1]
    assert second.nearest_conv == "least-squares 3x3"
    for head in second.head_stats:
        assert head.conv_like == (head.peak_mass >= analyze.CONV_LIKE_MASS)
        assert 0 < head.nearest_mass <= head.peak_mass < 0.5 and head.spread > 0.5
    assert 0 < second.error_least_squares < 1 and math.isfinite(second.error_peak_shift)


def test_outputs_written(one_hot_run):
    run, analysis = one_hot_run
    saved = json.loads((run / "analysis.json").read_text())
    assert [len(layer["head_stats"]) for layer in saved["layers"]] == [9, 9]
    assert saved["rules"]["conv_like"] == f"peak_mass >= {analyze.CONV_LIKE_MASS}"
    with open(run / "analysis.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 18 and rows[0]["layer_nearest_conv"] == "attention_to_conv"
    figure = run / "figures" / "analysis.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- pieces ----------------------------------------------------------------------------------------------------
def test_least_squares_recovers_a_convolution():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 3, 3, padding=1).double()
    x = torch.randn(12, 4, 6, 7, dtype=torch.float64)
    fit = analyze.LeastSquaresConv(4, 3, 3)
    with torch.no_grad():
        fit.add(x, conv(x))
        found = fit.solve()
        assert analyze.relative_error(found(x), conv(x)) < 1e-8
    assert torch.allclose(found.weight, conv.weight, atol=1e-8) and torch.allclose(found.bias, conv.bias, atol=1e-8)


@pytest.mark.parametrize("encoding, content", [("learned", True), (None, True), ("generalized", False),
                                               ("quadratic", False)])
def test_attention_maps_reproduce_the_layer(encoding, content):
    """layer(x) = merge(sum_k p(q, k) x_k) with analyze's maps, per image for content layers."""
    torch.manual_seed(1)
    extra = dict(grid_size=5) if encoding == "learned" else {}
    layer = RelativeSelfAttention(6, heads=3, encoding=encoding, content=content, **extra).double().eval()
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    with torch.no_grad():
        probs = analyze.attention_maps(layer, x)
        assert probs.shape == ((2 if content else 1), 3, 20, 20)
        averaged = torch.einsum("bhqk,xck->xhcq", probs, x.flatten(2)) if not content else \
            torch.einsum("bhqk,bck->bhcq", probs, x.flatten(2))
        out = layer.merge(averaged.flatten(1, 2).transpose(1, 2)).transpose(1, 2).reshape(2, 6, 5, 4)
        assert (out - layer(x)).abs().max() < 1e-12


def test_interior_queries():
    layer = RelativeSelfAttention(4, heads=1)
    mask = analyze.interior_queries(layer, (8, 16)).reshape(8, 16)
    assert mask.sum() == 4 * 8 and mask[2:6, 4:12].all()


def test_content_run_centres_average_every_image(tmp_path):
    """A content layer's centre is the mean over images and interior queries of sum_k p (k - q)."""
    overrides = DIGITS | dict(dim=16, depth=1, heads=4, mlp_dim=16)
    run = make_run(tmp_path, "content", "tiny_learned_content", overrides)
    analysis = analyze.analyze_run(run, images=32, batch_size=8)
    model, _, _ = checkpoint.load_run_model(run)
    x, _ = analyze.load_images(json.loads((run / "config.json").read_text()), 32)
    inputs, _ = analyze.capture_layer_io(model, [model.attention_layers()[0]], x, 8)
    layer = model.attention_layers()[0].double()
    with torch.no_grad():
        probs = torch.cat([analyze.attention_maps(layer, b.double()) for b in inputs[0]])  # (32, H, 64, 64)
    rows, cols = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()], -1).double()                    # (64, 2)
    delta = coords[None, :, :] - coords[:, None, :]                                         # (q, k, 2)
    interior = ((coords >= 2) & (coords <= 5)).all(-1)
    expected = torch.einsum("bhqk,qkn->bhqn", probs, delta)[:, :, interior].mean((0, 2))   # (H, 2)
    found = torch.tensor([h.centre for h in analysis.layers[0].head_stats], dtype=torch.float64)
    assert torch.allclose(found, expected, atol=1e-5)
    assert analysis.layers[0].content and analysis.layers[0].nearest_conv == "least-squares 3x3"


@pytest.mark.parametrize("model_name", ["tiny_learned", "tiny_generalized", "tiny_resnet18"])
def test_other_runs(tmp_path, model_name):
    overrides = DIGITS | (dict(dim=16, depth=1, heads=4, mlp_dim=16) if model_name != "tiny_resnet18" else {})
    overrides = {k: v for k, v in overrides.items() if k in models.registry.allowed_overrides(model_name)}
    run = make_run(tmp_path, model_name, model_name, overrides)
    analysis = analyze.analyze_run(run, images=32, batch_size=8)
    if model_name == "tiny_resnet18":
        assert analysis.layers == []
        return
    (layer,) = analysis.layers
    assert layer.heads == 4 and len(layer.head_stats) == 4
    for head in layer.head_stats:
        assert 0 <= head.nearest_mass <= 1 and head.distance >= 0 and head.spread >= 0
    assert math.isfinite(layer.error) and 0 <= layer.acc_replaced <= 1


# -- the CLI ---------------------------------------------------------------------------------------------------
def test_cli(one_hot_run, capsys):
    run, _ = one_hot_run
    assert analyze.main([str(run), str(run), "--images", "32", "--no-figure"]) == 0
    out = capsys.readouterr().out
    assert "attention_to_conv" in out and "conv-like" in out and "18/18" not in out
    assert "9/9" in out  # layer 1: every head conv-like


@pytest.mark.parametrize("argv", [["--kernel", "2"], ["--images", "1"], []])
def test_cli_rejects_bad_arguments(one_hot_run, argv, tmp_path):
    run, _ = one_hot_run
    target = [str(run)] if argv else [str(tmp_path / "missing")]
    with pytest.raises(SystemExit) as exit_info:
        analyze.main(target + argv)
    assert exit_info.value.code == 2


def test_module_entry_point(one_hot_run):
    run, _ = one_hot_run
    result = subprocess.run([sys.executable, "-m", "impl.analyze", str(run), "--images", "16", "--no-figure"],
                            capture_output=True, text=True, timeout=300,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "attention_to_conv" in result.stdout
