"""impl.figures draws every figure of a run from its run directory alone, as valid, non-blank PNGs."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from impl import figures, models

sys.path.insert(0, str(Path(__file__).parent))
from run_dirs import save_best, start_run  # noqa: E402

DIGITS = dict(in_channels=1, num_classes=10, image_size=[8, 8], downsample=1)
SMALL = dict(dim=16, depth=2, heads=4, mlp_dim=16)


def make_run(root: Path, name: str, model_name: str, overrides: dict, epochs: int = 4) -> Path:
    """A run directory as impl.train writes it, with an untrained model and made-up logs."""
    run, model, config = start_run(root, name, model_name, overrides, epochs=epochs)
    with open(run / "metrics.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_per_s"])
        for epoch in range(1, epochs + 1):
            writer.writerow([epoch, 2 / epoch, 1 - 0.8 / epoch, 2.2 / epoch, 1 - 0.9 / epoch, 0.1 / epoch, 1000])
    layers = model.attention_layers()
    if layers and hasattr(layers[0].encoding, "centre"):
        with open(run / "centres.csv", "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["step", "epoch", "layer", "head", "centre_row", "centre_col"])
            for step in range(0, 10 * epochs + 1, 5):  # centres drifting towards the 3x3 kernel's offsets
                for index, layer in enumerate(layers):
                    for head, (row, col) in enumerate(layer.encoding.centre.tolist()):
                        pull = step / (10 * epochs)
                        target = (head // 3 - 1, head % 3 - 1)
                        writer.writerow([step, step / 10, index, head, row + pull * (target[0] - row),
                                         col + pull * (target[1] - col)])
    return save_best(run, model, config, epoch=epochs, step=10 * epochs)


def assert_drawn(path: Path) -> None:
    """A valid PNG with something on it: many colours, not one flat background."""
    assert path.is_file(), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    pixels = matplotlib.image.imread(path)[..., :3]
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100, (path, pixels.shape)
    colours = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    not_white = (pixels < 0.95).any(-1).mean()
    assert len(colours) > 30 and not_white > 0.02, (path, len(colours), not_white)


def test_quadratic_run_gets_centres_contours_attention_maps_and_accuracy(tmp_path):
    run = make_run(tmp_path, "quadratic", "tiny_quadratic", {**DIGITS, **SMALL})
    written = figures.draw_run(run)
    assert {p.name for p in written} == {"centres.png", "accuracy.png", "contours.png", "attention_q4_4.png",
                                         "attention_q2_2.png"}
    for path in written:
        assert path.parent == run / "figures"
        assert_drawn(path)


def test_generalized_and_content_runs(tmp_path):
    generalized = figures.draw_run(make_run(tmp_path, "generalized", "tiny_generalized", {**DIGITS, **SMALL}))
    assert {"contours.png", "centres.png"} <= {p.name for p in generalized}
    content = figures.draw_run(make_run(tmp_path, "content", "tiny_learned_content", {**DIGITS, **SMALL}))
    assert {p.name for p in content} == {"accuracy.png", "attention_image0.png", "attention_image1.png"}
    for path in generalized + content:
        assert_drawn(path)


def test_content_attention_matches_the_layer(tmp_path):
    """The content maps are recomputed outside the layer: check them against the layer's own output."""
    model = models.build("tiny_learned_content", **{**DIGITS, **SMALL}).eval()
    layer = model.attention_layers()[0]
    x = torch.randn(2, 16, 8, 8)
    probs = figures.content_attention(layer, x)  # (B, H, N, N)
    averaged = torch.einsum("bhqk,bck->bhcq", probs, x.flatten(2)).flatten(1, 2)  # (B, H*C, N)
    expected = torch.einsum("oc,bcq->boq", layer.merge.weight, averaged) + layer.merge.bias[None, :, None]
    torch.testing.assert_close(layer(x).flatten(2), expected, rtol=1e-4, atol=1e-5)


def test_cli_redraws_several_runs_and_compares_their_accuracy(tmp_path, capsys):
    runs = [make_run(tmp_path, "quadratic", "tiny_quadratic", {**DIGITS, **SMALL}),
            make_run(tmp_path, "resnet", "tiny_resnet18", dict(in_channels=1, image_size=[8, 8], widths=[4, 4, 4, 4]),
                     epochs=6)]
    out = tmp_path / "figures"
    assert figures.main([str(run) for run in runs] + ["--out", str(out)]) == 0
    assert {p.name for p in (out / "resnet").iterdir()} == {"accuracy.png"}  # no attention in a ResNet
    assert (out / "quadratic" / "centres.png").is_file()
    assert_drawn(out / "accuracy.png")
    assert str(out / "accuracy.png") in capsys.readouterr().out


def test_cli_rejects_a_directory_that_is_not_a_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        figures.main([str(tmp_path)])
    assert exit_.value.code == 2 and "is not a run directory" in capsys.readouterr().err
