"""The explorer's data: test images, quantised attention maps and centres of a run, as JSON-ready values.

Map storage, per layer (positional) or per layer and image (content): one greyscale PNG of
(heads * stored queries) rows and (keys + 1) columns; row h * Q + j is head h's attention from stored query
j, as round(255 p / max p) per key plus round(255 max p) in the last column. Content runs store every
query while the maps fit `max_map_bytes`, else the queries of a coarser lattice (every s-th row and column);
a click then snaps to the nearest stored query.
"""

from __future__ import annotations

import base64
import csv
import json
import math
import struct
import zlib
from pathlib import Path
from typing import Sequence

import torch

from .. import analyze

DEFAULT_IMAGES = 12
MAX_MAP_BYTES = 8_000_000   # raw uint8 bytes of all maps together (before PNG compression)
MAX_TRACK_POINTS = 60       # per head, from centres.csv


def png_bytes(pixels: torch.Tensor) -> bytes:
    """A PNG of a uint8 image (H, W) greyscale or (H, W, 3) RGB, written with zlib (no imaging library)."""
    if pixels.dtype != torch.uint8 or pixels.dim() not in (2, 3) or (pixels.dim() == 3 and pixels.shape[2] != 3):
        raise ValueError(f"pixels must be a uint8 tensor (H, W) or (H, W, 3), got {pixels.dtype} {tuple(pixels.shape)}")
    height, width = pixels.shape[:2]
    colour_type = 0 if pixels.dim() == 2 else 2
    rows = pixels.reshape(height, -1).contiguous().numpy()
    raw = b"".join(b"\x00" + rows[r].tobytes() for r in range(height))  # filter type 0 on every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def quantise(probs: torch.Tensor) -> torch.Tensor:
    """(..., Nk) probabilities -> (..., Nk + 1) uint8: the row over its max, then the max itself."""
    peak = probs.amax(-1, keepdim=True)
    shape = (probs / peak.clamp(min=1e-30) * 255).round()
    return torch.cat([shape, (peak * 255).round()], -1).clamp(0, 255).to(torch.uint8)


def display_image(image: torch.Tensor) -> torch.Tensor:
    """(C, H, W) normalised -> uint8 (H, W) or (H, W, 3), stretched to the image's own range."""
    image = image.float()
    image = (image - image.min()) / (image.max() - image.min()).clamp(min=1e-12)
    pixels = (image * 255).round().clamp(0, 255).to(torch.uint8)
    return pixels[0] if pixels.shape[0] == 1 else pixels[:3].permute(1, 2, 0)


def query_stride(heads_total: int, grid: Sequence[int], copies: int, budget: int) -> int:
    """The smallest lattice step s whose stored maps (every s-th query per axis) fit `budget` bytes."""
    keys = math.prod(grid)
    for s in range(1, max(grid) + 1):
        queries = math.prod(math.ceil(n / s) for n in grid)
        if heads_total * copies * queries * (keys + 1) <= budget:
            return s
    return max(grid)


def read_tracks(run: Path) -> dict[tuple[int, int], list[list[float]]]:
    """(layer, head) -> [[row, col], ...] over training from RUN/centres.csv (at most MAX_TRACK_POINTS)."""
    path = run / "centres.csv"
    if not path.is_file():
        return {}
    tracks: dict[tuple[int, int], list[tuple[float, list[float]]]] = {}
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            key = (int(row["layer"]), int(row["head"]))
            point = [float(row["centre_row"]), float(row["centre_col"])]
            tracks.setdefault(key, []).append((float(row["step"]), point))
    out = {}
    for key, points in tracks.items():
        points.sort(key=lambda p: p[0])
        step = max(1, math.ceil(len(points) / MAX_TRACK_POINTS))
        kept = points[::step]
        if kept[-1] is not points[-1]:
            kept.append(points[-1])
        out[key] = [[round(v, 4) for v in p[1]] for p in kept]
    return out


@torch.no_grad()
def build_payload(run_dir: str | Path, *, images: int = DEFAULT_IMAGES, max_map_bytes: int = MAX_MAP_BYTES,
                  which: Sequence[str] = ("best", "last")) -> dict:
    """Everything the page shows, for the run in `run_dir` and its first `images` test images."""
    from ..checkpoint import load_run_model

    run = Path(run_dir)
    model, state, path = load_run_model(run, which=which)
    model = model.float().cpu().eval()
    config = json.loads((run / "config.json").read_text())
    layers = model.attention_layers() if hasattr(model, "attention_layers") else []
    if not layers:
        raise ValueError(f"run_dir {str(run)!r} holds a model without attention layers ({config.get('model')})")
    if any(layer.spatial_dims != 2 for layer in layers):
        raise ValueError("the explorer shows 2-d attention layers only")
    x, labels = analyze.load_images(config, images)
    inputs, logits = analyze.capture_layer_io(model, layers, x, batch_size=len(x))
    inputs = [batch[0] for batch in inputs]  # one batch: (N, C, h, w) per layer
    grid = list(inputs[0].shape[2:])
    tracks = read_tracks(run)

    content_layers = sum(layer.content for layer in layers)
    copies_total = content_layers * len(x) + (len(layers) - content_layers)
    stride = query_stride(max(layer.heads for layer in layers), grid, copies_total, max_map_bytes)
    stored = [list(range(0, n, stride)) for n in grid]
    query_index = torch.tensor([r * grid[1] + c for r in stored[0] for c in stored[1]])

    payload_layers = []
    for index, layer in enumerate(layers):
        layer64 = analyze.float64_copy(layer)
        x64 = inputs[index].double()
        probs = analyze.attention_maps(layer64, x64 if layer.content else x64[:1])  # (1 or N, H, Nq, Nk)
        stats = analyze.MapAccumulator(layer64, grid)
        stats.add(probs, weight=1)
        heads, _ = stats.heads_stats(index)
        stored_probs = probs[:, :, query_index]                                  # (., H, Q, Nk)
        maps = [data_url(png_bytes(quantise(p).reshape(-1, p.shape[-1] + 1))) for p in stored_probs]
        centre = getattr(layer.encoding, "centre", None)
        payload_layers.append(dict(
            index=index, encoding=layer.encoding_name or "content only", content=layer.content,
            heads=layer.heads, maps=maps,
            parameter_centres=None if centre is None else [[round(v, 4) for v in c] for c in centre.tolist()],
            measured_centres=[h.centre for h in heads],
            nearest_mass=[round(h.nearest_mass, 4) for h in heads],
            peak_shift=[h.peak_shift for h in heads],
            peak_mass=[round(h.peak_mass, 4) for h in heads],
            spread=[round(h.spread, 4) for h in heads],
            distance=[round(h.distance, 4) for h in heads],
            tracks=[tracks.get((index, h)) for h in range(layer.heads)]))

    image_payload = []
    for i in range(len(x)):
        image_payload.append(dict(png=data_url(png_bytes(display_image(x[i]))), label=int(labels[i]),
                                  predicted=int(logits[i].argmax())))
    return dict(
        run=run.name, model=config.get("model"), preset=config.get("preset"), data=config.get("data"),
        checkpoint=path.name, epoch=int(state.get("epoch", -1)), grid=grid, image_size=list(x.shape[2:]),
        stride=stride, stored_rows=stored[0], stored_cols=stored[1], images=image_payload, layers=payload_layers)
