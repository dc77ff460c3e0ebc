"""Figures of a run, drawn from its run directory alone: `python -m impl.figures RUN [RUN ...] [--out DIR]`.

    centres.png              every head's attention centre over training, one panel per layer (the paper's
                             centre plot): each head one colour, its trajectory and its final point, the 3x3
                             kernel's offsets drawn as a grid (quadratic and generalized runs)
    contours.png             the 50% (solid) and 90% (dashed) attention-mass contours of every head around
                             one query pixel, one panel per layer (quadratic and generalized runs)
    attention_q<R>_<C>.png   attention probabilities of every head (columns) of every layer (rows) for the
                             query pixel (R, C) of the token grid, next to a test image (positional runs)
    attention_image<I>.png   the same for content runs, which attend differently on every image
    accuracy.png             train (dashed) and test (solid) accuracy per epoch; with several runs, all of
                             them on one plot

The model is rebuilt with `impl.models.build(config["model"], **config["model_overrides"])` and loaded from
checkpoints/best.pt (or last.pt). Offsets are key minus query, in tokens: rows grow downwards, columns to
the right, as in the image.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from impl import checkpoint  # noqa: E402

DPI = 110
MASS_LEVELS = (0.5, 0.9)


# -- reading a run -----------------------------------------------------------------------------------------
def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def read_config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def run_label(run: Path, config: dict) -> str:
    return f"{run.name} ({config.get('preset')}, {config.get('model')})"


def head_colours(count: int) -> list:
    cmap = plt.get_cmap("tab10" if count <= 10 else "tab20" if count <= 20 else "hsv")
    return [cmap(i if count <= 20 else i / count) for i in range(count)]


def _panel_grid(count: int, columns: int = 3, size: float = 3.2):
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(size * columns + 1.2, size * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:count])


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _kernel_grid(ax, radius: int = 1) -> None:
    """The K x K convolution's offsets (K = 2 radius + 1): cell borders and a dot per offset."""
    edges = [r + 0.5 for r in range(-radius - 1, radius + 1)]
    for edge in edges:
        ax.plot([edges[0], edges[-1]], [edge, edge], color="0.7", lw=0.8, zorder=0)
        ax.plot([edge, edge], [edges[0], edges[-1]], color="0.7", lw=0.8, zorder=0)
    offsets = range(-radius, radius + 1)
    ax.scatter([c for _ in offsets for c in offsets], [r for r in offsets for _ in offsets], s=6, color="0.6",
               zorder=0)


# -- the figures -------------------------------------------------------------------------------------------
def centres_figure(centres: list[dict], out: Path, title: str = "") -> Path | None:
    """The paper's centre plot from centres.csv rows (step, epoch, layer, head, centre_row, centre_col)."""
    if not centres:
        return None
    layers = sorted({int(row["layer"]) for row in centres})
    fig, axes = _panel_grid(len(layers))
    for ax, layer in zip(axes, layers):
        rows = [row for row in centres if int(row["layer"]) == layer]
        heads = sorted({int(row["head"]) for row in rows})
        colours = head_colours(len(heads))
        _kernel_grid(ax)
        extent = 3.0
        for colour, head in zip(colours, heads):
            track = sorted((int(r["step"]), float(r["centre_row"]), float(r["centre_col"]))
                           for r in rows if int(r["head"]) == head)
            ys = [t[1] for t in track]
            xs = [t[2] for t in track]
            ax.plot(xs, ys, color=colour, lw=1.2, alpha=0.7)
            ax.scatter(xs[:1], ys[:1], s=18, facecolors="none", edgecolors=[colour], lw=1)
            ax.scatter(xs[-1:], ys[-1:], s=50, color=colour, edgecolors="black", lw=0.6, zorder=3,
                       label=f"head {head + 1}")
            extent = max(extent, max(map(abs, xs + ys)) + 0.5)
        ax.set_xlim(-extent, extent)
        ax.set_ylim(extent, -extent)  # rows grow downwards, as in the image
        ax.set_aspect("equal")
        ax.set_title(f"layer {layer + 1}")
        ax.set_xlabel("column offset")
        ax.set_ylabel("row offset")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize="small")
    last_epoch = max(float(row["epoch"]) for row in centres)
    fig.suptitle(f"{title}attention centres during training (hollow: start, filled: epoch {last_epoch:g})")
    return _save(fig, out)


def _positional_layers(model) -> list:
    layers = model.attention_layers() if hasattr(model, "attention_layers") else []
    return [layer for layer in layers if layer.encoding is not None and not layer.content]


def _token_grid(model) -> tuple[int, int]:
    """(rows, columns) of the token grid the model's attention layers see (image size / downsample)."""
    return tuple(model.grid_size)


@torch.no_grad()
def contours_figure(model, out: Path, title: str = "", query: tuple[int, int] | None = None) -> Path | None:
    """50% and 90% attention-mass contours of each quadratic/generalized head around one query pixel."""
    layers = [layer for layer in _positional_layers(model) if hasattr(layer.encoding, "centre")]
    if not layers:
        return None
    grid = _token_grid(model)
    query = query or (grid[0] // 2, grid[1] // 2)
    fine = 12  # samples per token for smooth contours
    fig, axes = _panel_grid(len(layers))
    for index, (ax, layer) in enumerate(zip(axes, layers)):
        probs = layer.attention_probabilities(grid, torch.float64, torch.device("cpu"))  # (H, Nq, Nk)
        probs = probs[:, query[0] * grid[1] + query[1]]  # (H, Nk)
        # The score at fractional key positions (the quadratic form is defined everywhere) gives smooth
        # contours; the levels are the scores at which the discrete attention reaches the mass levels.
        rows = torch.linspace(-0.5, grid[0] - 0.5, grid[0] * fine, dtype=torch.float64) - query[0]
        cols = torch.linspace(-0.5, grid[1] - 0.5, grid[1] * fine, dtype=torch.float64) - query[1]
        key_rows = torch.arange(grid[0], dtype=torch.float64) - query[0]
        key_cols = torch.arange(grid[1], dtype=torch.float64) - query[1]
        fine_scores = layer.encoding.dense_logits([rows[None], cols[None]])[:, 0]  # (H, fine Nk)
        key_scores = layer.encoding.dense_logits([key_rows[None], key_cols[None]])[:, 0]  # (H, Nk)
        colours = head_colours(layer.heads)
        _kernel_grid(ax)
        for head in range(layer.heads):
            levels = []
            for mass in MASS_LEVELS:
                ordered, order = probs[head].sort(descending=True)
                inside = min(int((ordered.cumsum(0) < mass).sum()) + 1, len(ordered))  # keys to reach `mass`
                levels.append(float(key_scores[head, order[inside - 1]]))
            surface = fine_scores[head].reshape(len(rows), len(cols)).numpy()
            for level, style in sorted(zip(levels, ("-", "--"))):
                if surface.min() < level < surface.max():
                    ax.contour(cols.numpy(), rows.numpy(), surface, levels=[level], colors=[colours[head]],
                               linestyles=style, linewidths=1.2)
            centre = layer.encoding.centre[head].double()
            ax.scatter([float(centre[1])], [float(centre[0])], s=14, color=colours[head], zorder=3)
        ax.scatter([0], [0], marker="x", color="black", s=30, zorder=4)
        ax.set_xlim(cols[0].item(), cols[-1].item())
        ax.set_ylim(rows[-1].item(), rows[0].item())
        ax.set_aspect("equal")
        ax.set_title(f"layer {index + 1}")
        ax.set_xlabel("column offset")
        ax.set_ylabel("row offset")
    fig.suptitle(f"{title}attention mass of each head around the query pixel x (row {query[0]}, column "
                 f"{query[1]}): 50% solid, 90% dashed")
    return _save(fig, out)


def _image_for_display(image: torch.Tensor) -> torch.Tensor:
    """(C, H, W) normalised -> (H, W, C) or (H, W) in [0, 1], stretched per image."""
    image = image.float()
    image = (image - image.min()) / (image.max() - image.min() + 1e-12)
    return image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)


def _attention_grid_figure(maps: torch.Tensor, grid: tuple[int, int], query: tuple[int, int], image, out: Path,
                           title: str) -> Path:
    """maps (layers, heads, Nk) -> one row per layer, one column per head, the image in column 0."""
    layers, heads = maps.shape[:2]
    columns = heads + (image is not None)
    fig, axes = plt.subplots(layers, columns, figsize=(1.25 * columns, 1.3 * layers + 0.6), squeeze=False,
                             layout="constrained")
    for layer in range(layers):
        offset = 0
        if image is not None:
            ax = axes[layer, 0]
            shown = _image_for_display(image)
            ax.imshow(shown.numpy(), cmap="gray" if shown.dim() == 2 else None,
                      extent=(-0.5, grid[1] - 0.5, grid[0] - 0.5, -0.5))
            ax.scatter([query[1]], [query[0]], marker="x", color="red", s=20)
            offset = 1
        for head in range(heads):
            ax = axes[layer, head + offset]
            ax.imshow(maps[layer, head].reshape(grid).numpy(), cmap="viridis", interpolation="nearest")
            ax.scatter([query[1]], [query[0]], marker="x", color="red", s=14)
            if layer == 0:
                ax.set_title(f"head {head + 1}", fontsize="small")
        axes[layer, 0].set_ylabel(f"layer {layer + 1}", fontsize="small")
        for ax in axes[layer]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize="medium")
    return _save(fig, out)


@torch.no_grad()
def attention_figures(model, out_dir: Path, images: Sequence[torch.Tensor], title: str = "",
                      queries: Sequence[tuple[int, int]] | None = None) -> list[Path]:
    """Attention maps of every head of every layer for chosen query pixels (see the module docstring)."""
    layers = model.attention_layers() if hasattr(model, "attention_layers") else []
    if not layers:
        return []
    grid = _token_grid(model)
    queries = queries or [(grid[0] // 2, grid[1] // 2), (grid[0] // 4, grid[1] // 4)]
    written = []
    if all(layer.encoding is not None and not layer.content for layer in layers):
        heads = max(layer.heads for layer in layers)
        for query in queries:
            maps = torch.zeros(len(layers), heads, grid[0] * grid[1])
            for index, layer in enumerate(layers):
                probs = layer.attention_probabilities(grid, torch.float32, torch.device("cpu"))
                maps[index, :layer.heads] = probs[:, query[0] * grid[1] + query[1]]
            written.append(_attention_grid_figure(
                maps, grid, query, images[0] if images else None, out_dir / f"attention_q{query[0]}_{query[1]}.png",
                f"{title}attention of each head for the query pixel x (row {query[0]}, column {query[1]}); "
                f"positional: the same on every image"))
        return written
    # Content scores: the maps depend on the image; capture each layer's input and recompute its softmax.
    inputs = {}
    hooks = [layer.register_forward_pre_hook(lambda module, args, i=i: inputs.__setitem__(i, args[0]))
             for i, layer in enumerate(layers)]
    try:
        for number, image in enumerate(images):
            model(image[None])
            heads = max(layer.heads for layer in layers)
            query = queries[0]
            maps = torch.zeros(len(layers), heads, grid[0] * grid[1])
            for index, layer in enumerate(layers):
                probs = content_attention(layer, inputs[index])[0]  # (H, Nq, Nk)
                maps[index, :layer.heads] = probs[:, query[0] * grid[1] + query[1]]
            written.append(_attention_grid_figure(
                maps, grid, query, image, out_dir / f"attention_image{number}.png",
                f"{title}attention of each head for the query pixel x (row {query[0]}, column {query[1]}), "
                f"test image {number}"))
    finally:
        for hook in hooks:
            hook.remove()
    return written


def content_attention(layer, x: torch.Tensor) -> torch.Tensor:
    """Attention probabilities (B, H, N, N) of a content layer on its input x (B, C, h, w) (plain geometry)."""
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
    batch, n = tokens.shape[:2]
    queries = layer.query(tokens).reshape(batch, n, layer.heads, layer.content_dim).transpose(1, 2)
    keys = layer.key(tokens).reshape(batch, n, layer.heads, layer.content_dim).transpose(1, 2)
    scores = queries @ keys.transpose(-1, -2) / math.sqrt(layer.content_dim)  # (B, H, N, N)
    if layer.encoding is not None:
        offsets = layer.axis_offsets(tuple(x.shape[2:]), scores.dtype, scores.device)
        scores = scores + layer.encoding.dense_logits(offsets)[None]
    return scores.softmax(-1)


def accuracy_figure(runs: Sequence[Path], out: Path) -> Path | None:
    """Train (dashed) and test (solid) accuracy per epoch of every run, on one plot."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for run, colour in zip(runs, head_colours(len(runs))):
        rows = read_csv(run / "metrics.csv")
        if not rows:
            continue
        label = run_label(run, read_config(run))
        epochs = [int(r["epoch"]) for r in rows]
        ax.plot(epochs, [float(r["test_acc"]) for r in rows], color=colour, lw=1.8, marker="o", ms=3,
                label=f"{label} test")
        ax.plot(epochs, [float(r["train_acc"]) for r in rows], color=colour, lw=1.2, ls="--",
                label=f"{label} train")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("accuracy per epoch")
    return _save(fig, out)


# -- a whole run -------------------------------------------------------------------------------------------
def test_images(config: dict, count: int = 2) -> list[torch.Tensor]:
    """The first `count` test images of the run's data set, or [] where the data cannot be loaded."""
    from impl import data

    kwargs = dict(data_dir=config.get("data_dir")) if config.get("data") == "cifar10" else {}
    try:
        dataset = data.load(config["data"], "test", **kwargs)
        return [dataset[i][0] for i in range(min(count, len(dataset)))]
    except Exception as error:  # missing cifar10 files: the positional maps are still drawn
        print(f"figures: no test images ({type(error).__name__}: {error})", file=sys.stderr)
        return []


def draw_run(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Every figure of one run, from its directory; returns the files written (default RUN/figures/)."""
    run = Path(run_dir)
    out = Path(out) if out is not None else run / "figures"
    config = read_config(run)
    title = f"{run.name}: "
    written = [centres_figure(read_csv(run / "centres.csv"), out / "centres.png", title),
               accuracy_figure([run], out / "accuracy.png")]
    model, state, _ = checkpoint.load_run_model(run)
    model.float().cpu()
    written.append(contours_figure(model, out / "contours.png", title))
    written += attention_figures(model, out, test_images(config), f"{title}epoch {state['epoch']}, ")
    return [path for path in written if path is not None]


def directory_problem(path: Path) -> str | None:
    """None if `path` is a writable directory or can be created as one, else why not."""
    if path.exists():
        if not path.is_dir():
            return f"{path} exists and is not a directory"
        return None if os.access(path, os.W_OK | os.X_OK) else f"{path} is not writable"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{path} cannot be created: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{path} cannot be created: {parent} is not writable"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m impl.figures", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by impl.train")
    parser.add_argument("--out", help="write here (one subdirectory per run, and accuracy.png for all) "
                                      "instead of RUN/figures/")
    args = parser.parse_args(argv)
    runs = [Path(run) for run in args.runs]
    for run in runs:
        if not (run / "config.json").is_file():
            parser.error(f"{run} is not a run directory (no {run / 'config.json'})")
    out = Path(args.out) if args.out else None
    if out is not None:
        targets = [out] + ([out / run.name for run in runs] if len(runs) > 1 else [])
        for target in targets:
            problem = directory_problem(target)
            if problem is not None:
                parser.error(f"--out {args.out}: {problem}")
    try:
        for run in runs:
            target = None if out is None else (out / run.name if len(runs) > 1 else out)
            for path in draw_run(run, target):
                print(path)
    except checkpoint.CheckpointError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    if len(runs) > 1:
        print(accuracy_figure(runs, (out or runs[0] / "figures") / ("accuracy.png" if out else
                                                                     "accuracy_comparison.png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
