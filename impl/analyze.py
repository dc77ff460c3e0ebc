"""How convolutional is a trained attention layer? `python -m impl.analyze RUN_DIR [RUN_DIR ...]`.

The converse of the converter: for every attention layer of a trained run, and every head, on real test
images of the run's data set (offsets are key minus query, in tokens, (row, column)):

    centre          the probability-weighted mean offset sum_k p(q, k) (k - q), averaged over interior
                    queries (content layers: and over the images)
    spread          the attention's standard deviation around that per-query mean, averaged likewise
    shift           the centre rounded to the nearest pixel: the one kernel tap this head would be
    nearest_mass    p(q, q + shift), averaged over interior queries: 1 for a one-hot head
    peak            the offset with the most mean attention (interior queries) and that mass: differs from
                    shift for a head spread over several separate pixels, whose mean falls between them
    distance        ConViT's nonlocality: sum_k p(q, k) ||k - q||, averaged over *all* queries (as ConViT
                    averages), in tokens
    conv_like       peak mass >= 0.5: most of the head's attention sits on one fixed relative pixel, the
                    kernel tap it plays (for a unimodal head the peak is the shift and the two masses agree)

Interior queries are those at least floor(L/4) tokens away from both borders of an axis of L tokens (2 of
8, 4 of 16), where a head centred up to that far away is not cut off by the image's edge.

Per layer, the nearest convolution and what replacing the layer by it costs:

    attention_to_conv   when the layer is quadratic, positional only, and every head is within 1e-3 of
                        one-hot (`impl.convert.attention_to_conv`): the exact conversion
    least-squares KxK   otherwise: the KxK convolution (zero padding, with bias) minimising
                        ||conv(x) - layer(x)||^2 over the layer's inputs x on half of the analysed images
    peak-shift          also reported: every head's whole weight on its peak offset (Lemma 1's construction
                        with the measured taps; edges replicate, the hard limit of a cut-off softmax)

    error_*             ||conv(x) - layer(x)|| / ||layer(x)|| on the *other* half of the images (held out)
    acc_replaced        the model's test accuracy on those images with this one layer replaced by the
                        reported nearest convolution (acc: unchanged model)

Writes RUN_DIR/analysis.json, RUN_DIR/analysis.csv and RUN_DIR/figures/analysis.png and prints the tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention import QuadraticEncoding, RelativeSelfAttention
from .convert import attention_to_conv, distance_from_one_hot

CONV_LIKE_MASS = 0.5   # a head is conv-like when at least this much attention is on its peak offset
ONE_HOT_TOL = 1e-3     # attention_to_conv's tolerance (1 - p at the nearest key, worst case)
DEFAULT_KERNEL = 3
DEFAULT_IMAGES = 512


# -- per-layer attention maps ---------------------------------------------------------------------------
def key_query_offsets(layer: RelativeSelfAttention, spatial_shape: Sequence[int]) -> torch.Tensor:
    """(Nq, Nk, n) offsets key - query (float64) in the layer's padded coordinates."""
    per_axis = layer.axis_offsets(spatial_shape, torch.float64, "cpu")  # [(q_a, k_a)]
    n = len(per_axis)
    grids = []
    for axis, table in enumerate(per_axis):
        shape = [1] * (2 * n)
        shape[axis], shape[n + axis] = table.shape
        grids.append(table.reshape(shape))
    full = [o.shape[0] for o in per_axis] + [o.shape[1] for o in per_axis]
    delta = torch.stack([g.expand(full) for g in grids], -1)  # (*Q, *K, n)
    return delta.reshape(math.prod(full[:n]), math.prod(full[n:]), n)


def attention_maps(layer: RelativeSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Attention probabilities of `layer` on input x (B, C, *grid): (1, H, Nq, Nk) for a positional layer
    (the same for every image), (B, H, Nq, Nk) for a content layer. Computed in x's dtype, eval semantics
    (no dropout)."""
    spatial = tuple(x.shape[2:])
    if not layer.content:
        return layer.attention_probabilities(spatial, x.dtype, x.device)[None]
    padded = layer.geometry.pad(x)
    tokens = padded.flatten(2).transpose(1, 2)  # (B, Nk, C)
    index = [torch.tensor(axis.query_positions(n), device=x.device)
             for axis, n in zip(layer.geometry.axes, spatial)]
    query_tokens = padded[(slice(None), slice(None), *torch.meshgrid(*index, indexing="ij"))]
    query_tokens = query_tokens.flatten(2).transpose(1, 2)  # (B, Nq, C)
    batch, d = x.shape[0], layer.content_dim
    queries = layer.query(query_tokens).reshape(batch, -1, layer.heads, d).transpose(1, 2)  # (B, H, Nq, d)
    keys = layer.key(tokens).reshape(batch, -1, layer.heads, d).transpose(1, 2)             # (B, H, Nk, d)
    scores = queries @ keys.transpose(-1, -2) / math.sqrt(d)
    if layer.encoding is not None:
        offsets = layer.axis_offsets(spatial, x.dtype, x.device)
        scores = scores + layer.encoding.dense_logits(offsets)[None]
    return scores.softmax(-1)


def interior_queries(layer: RelativeSelfAttention, spatial_shape: Sequence[int]) -> torch.Tensor:
    """(Nq,) bool: queries at least floor(L/4) tokens from both borders of every axis (input coordinates)."""
    masks = []
    for axis, length in zip(layer.geometry.axes, spatial_shape):
        margin = length // 4
        position = torch.tensor(list(axis.query_positions(length))) - axis.pad_before  # input coordinates
        masks.append((position >= margin) & (position <= length - 1 - margin))
    mask = masks[0]
    for m in masks[1:]:
        mask = (mask[:, None] & m[None, :]).flatten()
    return mask


# -- statistics ----------------------------------------------------------------------------------------------
@dataclass
class HeadStats:
    layer: int
    head: int
    centre: list[float]
    spread: float
    shift: list[int]
    nearest_mass: float
    distance: float
    conv_like: bool
    peak_shift: list[int] = field(default_factory=list)
    peak_mass: float = float("nan")
    alpha: float | None = None  # quadratic heads: the width alpha = s^2 / 2 of the encoding



@dataclass
class LayerStats:
    layer: int
    encoding: str
    content: bool
    heads: int
    conv_like_heads: int
    mean_nearest_mass: float
    mean_peak_mass: float
    mean_distance: float
    nearest_conv: str
    kernel: list[int]
    error: float
    error_peak_shift: float
    error_least_squares: float
    acc: float
    acc_replaced: float
    head_stats: list[HeadStats] = field(default_factory=list)
    offset_low: list[int] = field(default_factory=list)  # the offset of offset_maps[:, 0, 0]
    offset_maps: torch.Tensor | None = None  # (H, *window) mean attention per offset, interior queries


class MapAccumulator:
    """Running sums over batches of attention maps, for one layer."""

    def __init__(self, layer: RelativeSelfAttention, spatial_shape: Sequence[int]) -> None:
        self.delta = key_query_offsets(layer, spatial_shape)                 # (Nq, Nk, n)
        self.interior = interior_queries(layer, spatial_shape)              # (Nq,)
        self.low = self.delta.flatten(0, 1).amin(0).long()                  # smallest offset per axis
        self.window = (self.delta.flatten(0, 1).amax(0).long() - self.low + 1).tolist()
        bins = self.delta.long() - self.low                                 # (Nq, Nk, n)
        flat = torch.zeros(bins.shape[:2], dtype=torch.long)
        for axis, size in enumerate(self.window):
            flat = flat * size + bins[..., axis]
        self.bins = flat[self.interior]                                     # (Nqi, Nk)
        self.heads = layer.heads
        self.count_interior = 0.0
        self.count_all = 0.0
        self.centre = torch.zeros(layer.heads, self.delta.shape[-1], dtype=torch.float64)
        self.spread = torch.zeros(layer.heads, dtype=torch.float64)
        self.distance = torch.zeros(layer.heads, dtype=torch.float64)
        self.offset_sum = torch.zeros(layer.heads, math.prod(self.window), dtype=torch.float64)

    def add(self, probs: torch.Tensor, weight: int) -> None:
        """probs (b, H, Nq, Nk) float64 counting as `weight` images each (positional maps: b = 1)."""
        probs = probs.double().cpu()
        delta = self.delta
        norm = delta.square().sum(-1)                                       # (Nq, Nk)
        mean = torch.einsum("bhqk,qkn->bhqn", probs, delta)                 # per-query centre
        second = torch.einsum("bhqk,qk->bhq", probs, norm)
        std = (second - mean.square().sum(-1)).clamp(min=0).sqrt()         # (b, H, Nq)
        dist = torch.einsum("bhqk,qk->bhq", probs, norm.sqrt())
        inner = self.interior
        self.centre += weight * mean[:, :, inner].sum((0, 2))
        self.spread += weight * std[:, :, inner].sum((0, 2))
        self.distance += weight * dist.sum((0, 2))
        self.count_interior += weight * probs.shape[0] * int(inner.sum())
        self.count_all += weight * probs.shape[0] * probs.shape[2]
        interior_probs = probs[:, :, inner]                                 # (b, H, Nqi, Nk)
        index = self.bins[None, None].expand_as(interior_probs).flatten(2)
        sums = torch.zeros(*interior_probs.shape[:2], self.offset_sum.shape[1], dtype=torch.float64)
        sums.scatter_add_(2, index, interior_probs.flatten(2))
        self.offset_sum += weight * sums.sum(0)

    def heads_stats(self, layer_index: int) -> tuple[list[HeadStats], torch.Tensor]:
        if not self.count_interior:
            raise ValueError("no interior query: the token grid is too small to analyse")
        centre = self.centre / self.count_interior
        spread = self.spread / self.count_interior
        distance = self.distance / self.count_all
        offset_maps = (self.offset_sum / self.count_interior).reshape(self.heads, *self.window)
        stats = []
        for h in range(self.heads):
            shift = centre[h].round().long()
            index = tuple(int(s - lo) for s, lo in zip(shift, self.low))
            inside = all(0 <= i < n for i, n in zip(index, self.window))
            mass = float(offset_maps[(h, *index)]) if inside else 0.0
            peak = int(offset_maps[h].flatten().argmax())
            peak_index = torch.unravel_index(torch.tensor(peak), tuple(self.window))
            peak_mass = float(offset_maps[h].flatten()[peak])
            stats.append(HeadStats(layer_index, h, [round(float(c), 6) for c in centre[h]], float(spread[h]),
                                   [int(s) for s in shift], mass, float(distance[h]), peak_mass >= CONV_LIKE_MASS,
                                   [int(i) + int(lo) for i, lo in zip(peak_index, self.low)], peak_mass))
        return stats, offset_maps


# -- nearest convolutions -----------------------------------------------------------------------------------
def peak_shift_conv(layer: RelativeSelfAttention, shifts: Sequence[Sequence[int]]) -> nn.Module:
    """The convolution of a hard-limit copy of `layer` whose heads sit on `shifts` (Lemma 1)."""
    hard = RelativeSelfAttention(layer.dim, heads=layer.heads, out_dim=layer.out_dim, encoding="quadratic",
                                 spatial_dims=layer.spatial_dims, alpha=math.inf,
                                 bias=layer.merge.bias is not None, geometry=layer.geometry)
    hard.to(dtype=layer.merge.weight.dtype, device=layer.merge.weight.device)
    with torch.no_grad():
        hard.encoding.centre.copy_(torch.tensor(shifts, dtype=hard.encoding.centre.dtype))
        hard.merge.load_state_dict(layer.merge.state_dict())
    return attention_to_conv(hard)


class LeastSquaresConv:
    """Accumulates the normal equations of the KxK convolution (zero padding, bias) best matching a layer."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int) -> None:
        self.kernel = kernel
        n = in_channels * kernel * kernel + 1
        self.gram = torch.zeros(n, n, dtype=torch.float64)
        self.rhs = torch.zeros(n, out_channels, dtype=torch.float64)
        self.in_channels, self.out_channels = in_channels, out_channels

    def _design(self, x: torch.Tensor) -> torch.Tensor:
        patches = F.unfold(x.double(), self.kernel, padding=self.kernel // 2)  # (B, C K K, N)
        ones = torch.ones(patches.shape[0], 1, patches.shape[2], dtype=torch.float64, device=x.device)
        return torch.cat([patches, ones], 1).transpose(1, 2).flatten(0, 1)   # (B N, C K K + 1)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        design = self._design(x).cpu()
        target = y.double().flatten(2).transpose(1, 2).flatten(0, 1).cpu()  # (B N, O)
        self.gram += design.T @ design
        self.rhs += design.T @ target

    def solve(self) -> nn.Conv2d:
        n = self.gram.shape[0]
        ridge = 1e-9 * float(self.gram.diagonal().mean()) + 1e-300
        solution = torch.linalg.solve(self.gram + ridge * torch.eye(n, dtype=torch.float64), self.rhs)
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel, padding=self.kernel // 2).double()
        with torch.no_grad():
            conv.weight.copy_(solution[:-1].T.reshape(self.out_channels, self.in_channels, self.kernel, self.kernel))
            conv.bias.copy_(solution[-1])
        return conv


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float((approx.double() - exact.double()).norm() / exact.double().norm().clamp(min=1e-300))


# -- a run --------------------------------------------------------------------------------------------------
@dataclass
class RunAnalysis:
    run: str
    model: str
    data: str
    checkpoint: str
    epoch: int
    images: int
    kernel: int
    rules: dict
    layers: list[LayerStats]

    def to_json(self) -> dict:
        out = asdict(self)
        for layer, stats in zip(out["layers"], self.layers):
            layer.pop("offset_maps", None)
            layer["offset_maps"] = [[[round(v, 5) for v in row] for row in head]
                                    for head in stats.offset_maps.tolist()] if stats.offset_maps is not None else None
        return _strict_json(out)


def _strict_json(value):
    """Replace the floats JSON cannot hold: NaN (not computed) -> None, +-inf -> "inf" / "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {key: _strict_json(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def load_images(config: dict, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` test images and labels of the run's data set (no augmentation)."""
    from . import data

    kwargs = dict(data_dir=config.get("data_dir")) if config.get("data") == "cifar10" else {}
    dataset = data.load(config["data"], "test", augment=False, **kwargs)
    count = min(count, len(dataset))
    images, labels = zip(*(dataset[i] for i in range(count)))
    return torch.stack(images), torch.tensor(labels)


@torch.no_grad()
def capture_layer_io(model: nn.Module, layers: Sequence[nn.Module], images: torch.Tensor,
                     batch_size: int) -> tuple[list[list[torch.Tensor]], torch.Tensor]:
    """Per layer, its inputs batch by batch (as the model feeds them), and the model's logits."""
    inputs: list[list[torch.Tensor]] = [[] for _ in layers]
    hooks = [layer.register_forward_pre_hook(lambda module, args, i=i: inputs[i].append(args[0].detach().clone()))
             for i, layer in enumerate(layers)]
    logits = []
    try:
        for start in range(0, len(images), batch_size):
            logits.append(model(images[start:start + batch_size]))
    finally:
        for hook in hooks:
            hook.remove()
    return inputs, torch.cat(logits)


@torch.no_grad()
def accuracy_with(model: nn.Module, layer: nn.Module | None, replacement: nn.Module | None,
                  images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    """Accuracy of `model` on the images, with `layer`'s output replaced by `replacement(input)`."""
    hook = None
    if layer is not None:
        def swap(module, args, output):
            return replacement(args[0].to(next(replacement.parameters()).dtype)).to(output.dtype)
        hook = layer.register_forward_hook(swap)
    try:
        correct = 0
        for start in range(0, len(images), batch_size):
            logits = model(images[start:start + batch_size])
            correct += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
    finally:
        if hook is not None:
            hook.remove()
    return correct / max(1, len(images))


@torch.no_grad()
def analyze_layer(index: int, layer: RelativeSelfAttention, batches: Sequence[torch.Tensor], held_out: Sequence[bool],
                  kernel: int) -> tuple[LayerStats, nn.Module]:
    """Statistics and nearest convolution of one layer from its input batches (`held_out[i]`: batch i is
    used for the errors, the others for the least-squares fit)."""
    if layer.spatial_dims != 2:
        raise ValueError(f"layer {index} attends over {layer.spatial_dims}-d grids; analyze handles 2-d layers")
    layer64 = float64_copy(layer)
    spatial = tuple(batches[0].shape[2:])
    maps = MapAccumulator(layer64, spatial)
    if not layer.content:
        maps.add(attention_maps(layer64, batches[0][:1].double()), weight=1)
    fit = LeastSquaresConv(layer.dim, layer.out_dim, kernel)
    outputs = []
    for x, is_held_out in zip(batches, held_out):
        x = x.double()
        if layer.content:
            maps.add(attention_maps(layer64, x), weight=1)
        y = layer64(x)
        outputs.append(y)
        if not is_held_out and layer.geometry.is_identity:  # same query grid as key grid: a 'same' conv
            fit.add(x, y)
    head_stats, offset_maps = maps.heads_stats(index)
    if isinstance(layer.encoding, QuadraticEncoding):
        for h, alpha in zip(head_stats, layer64.encoding.alpha.tolist()):
            h.alpha = alpha

    exact = None
    if isinstance(layer.encoding, QuadraticEncoding) and not layer.content:
        if float(distance_from_one_hot(layer64.encoding).max()) <= ONE_HOT_TOL:
            exact = attention_to_conv(layer64, tol=ONE_HOT_TOL)
    shift_conv = peak_shift_conv(layer64, [h.peak_shift for h in head_stats])
    least_squares = fit.solve() if layer.geometry.is_identity and not all(held_out) else None

    def held_out_error(conv) -> float:
        if conv is None:
            return float("nan")
        pairs = [(conv(x.double()), y) for x, y, h in zip(batches, outputs, held_out) if h]
        num = sum(float((a - b).square().sum()) for a, b in pairs)
        den = sum(float(b.square().sum()) for _, b in pairs)
        return math.sqrt(num / max(den, 1e-300))

    error_shift, error_ls = held_out_error(shift_conv), held_out_error(least_squares)
    if exact is not None:
        chosen, name, error = exact, "attention_to_conv", held_out_error(exact)
    elif least_squares is not None:
        chosen, name, error = least_squares, f"least-squares {kernel}x{kernel}", error_ls
    else:
        chosen, name, error = shift_conv, "peak-shift", error_shift
    stats = LayerStats(
        layer=index, encoding=layer.encoding_name or "none", content=layer.content, heads=layer.heads,
        conv_like_heads=sum(h.conv_like for h in head_stats),
        mean_nearest_mass=sum(h.nearest_mass for h in head_stats) / layer.heads,
        mean_peak_mass=sum(h.peak_mass for h in head_stats) / layer.heads,
        mean_distance=sum(h.distance for h in head_stats) / layer.heads,
        nearest_conv=name, kernel=list(chosen.kernel_size), error=error, error_peak_shift=error_shift,
        error_least_squares=error_ls, acc=float("nan"), acc_replaced=float("nan"), head_stats=head_stats,
        offset_low=maps.low.tolist(), offset_maps=offset_maps)
    return stats, chosen


def float64_copy(layer: RelativeSelfAttention) -> RelativeSelfAttention:
    import copy

    twin = copy.deepcopy(layer).double().cpu().eval()
    twin._cache = None
    return twin


def analyze_run(run_dir: str | Path, *, images: int = DEFAULT_IMAGES, kernel: int = DEFAULT_KERNEL,
                batch_size: int = 64, which: Sequence[str] = ("best", "last")) -> RunAnalysis:
    """Analyse every attention layer of the run in `run_dir` on its first `images` test images."""
    from .checkpoint import load_run_model

    run = Path(run_dir)
    model, state, path = load_run_model(run, which=which)
    model = model.float().cpu().eval()
    config = json.loads((run / "config.json").read_text())
    layers = model.attention_layers() if hasattr(model, "attention_layers") else []
    x, labels = load_images(config, images)
    batch_size = min(batch_size, math.ceil(len(x) / 2))  # at least two batches: fit and held out
    inputs, _ = capture_layer_io(model, layers, x, batch_size)
    held_out = [i % 2 == 1 for i in range(math.ceil(len(x) / batch_size))]  # alternate batches
    mask = torch.tensor([held_out[i // batch_size] for i in range(len(x))])
    eval_images, eval_labels = x[mask], labels[mask]
    results = []
    base = accuracy_with(model, None, None, eval_images, eval_labels, batch_size)
    for index, layer in enumerate(layers):
        stats, conv = analyze_layer(index, layer, inputs[index], held_out, kernel)
        stats.acc = base
        stats.acc_replaced = accuracy_with(model, layer, conv, eval_images, eval_labels, batch_size)
        results.append(stats)
    rules = dict(conv_like=f"peak_mass >= {CONV_LIKE_MASS}", one_hot_tol=ONE_HOT_TOL,
                 interior="queries >= floor(L/4) tokens from both borders of each axis",
                 distance="mean over all queries of sum_k p(q,k) ||k - q|| (tokens)",
                 errors="||conv(x) - layer(x)|| / ||layer(x)|| on held-out test images")
    return RunAnalysis(str(run), config.get("model", "?"), config.get("data", "?"), str(path),
                       int(state.get("epoch", -1)), len(x), kernel, rules, results)


# -- output -------------------------------------------------------------------------------------------------
LAYER_COLUMNS = ("layer", "encoding", "conv-like", "nearest mass", "peak mass", "distance", "nearest conv",
                 "error", "err peak-shift", "err LS", "acc", "acc replaced")


def layer_table(analysis: RunAnalysis) -> str:
    rows = [LAYER_COLUMNS]
    for s in analysis.layers:
        kind = s.encoding + (" + content" if s.content else "")
        rows.append((str(s.layer + 1), kind, f"{s.conv_like_heads}/{s.heads}", f"{s.mean_nearest_mass:.3f}",
                     f"{s.mean_peak_mass:.3f}", f"{s.mean_distance:.2f}", s.nearest_conv, f"{s.error:.3g}",
                     f"{s.error_peak_shift:.3g}",
                     f"{s.error_least_squares:.3g}", f"{s.acc:.3f}", f"{s.acc_replaced:.3f}"))
    return _format(rows)


def head_table(analysis: RunAnalysis) -> str:
    rows = [("layer", "head", "centre (row, col)", "spread", "shift", "nearest mass", "peak at", "peak mass",
             "distance", "conv-like", "alpha")]
    for s in analysis.layers:
        for h in s.head_stats:
            rows.append((str(h.layer + 1), str(h.head + 1), f"({h.centre[0]:+.2f}, {h.centre[1]:+.2f})",
                         f"{h.spread:.2f}", f"({h.shift[0]:+d}, {h.shift[1]:+d})", f"{h.nearest_mass:.3f}",
                         f"({h.peak_shift[0]:+d}, {h.peak_shift[1]:+d})", f"{h.peak_mass:.3f}", f"{h.distance:.2f}",
                         "yes" if h.conv_like else "no", "" if h.alpha is None else f"{h.alpha:.3g}"))
    return _format(rows)


def _format(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_csv(analysis: RunAnalysis, path: Path) -> None:
    fields = ("layer", "head", "encoding", "content", "centre_row", "centre_col", "spread", "shift_row", "shift_col",
              "nearest_mass", "peak_row", "peak_col", "peak_mass", "distance", "conv_like", "alpha",
              "layer_nearest_conv", "layer_kernel", "layer_error",
              "layer_error_peak_shift", "layer_error_least_squares", "layer_acc", "layer_acc_replaced")
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(fields)
        for s in analysis.layers:
            for h in s.head_stats:
                writer.writerow((s.layer, h.head, s.encoding, s.content, f"{h.centre[0]:.6g}", f"{h.centre[1]:.6g}",
                                 f"{h.spread:.6g}", h.shift[0], h.shift[1], f"{h.nearest_mass:.6g}",
                                 h.peak_shift[0], h.peak_shift[1], f"{h.peak_mass:.6g}", f"{h.distance:.6g}",
                                 int(h.conv_like), "" if h.alpha is None else f"{h.alpha:.6g}", s.nearest_conv, "x".join(map(str, s.kernel)),
                                 f"{s.error:.6g}", f"{s.error_peak_shift:.6g}", f"{s.error_least_squares:.6g}",
                                 f"{s.acc:.6g}", f"{s.acc_replaced:.6g}"))


def draw_figure(analysis: RunAnalysis, path: Path, radius: int | None = None) -> Path:
    """Per layer, each head's mean attention over offsets (interior queries; one bright pixel = conv-like)
    within +-radius, and a scatter of every head's peak mass against its mean distance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = analysis.layers
    heads = max((s.heads for s in layers), default=1)
    if radius is None:  # the whole window of offsets, up to +-7
        radius = min(7, max((max(-lo for lo in s.offset_low) for s in layers), default=3))
    fig = plt.figure(figsize=(1.15 * heads + 4.8, 1.25 * max(1, len(layers)) + 1.2), layout="constrained")
    grid = fig.add_gridspec(max(1, len(layers)), heads + 3)
    norm = matplotlib.colors.PowerNorm(0.5, vmin=0, vmax=1)  # square-root scale: diffuse heads stay visible
    image = None
    for row, s in enumerate(layers):
        crops = offset_crop(s.offset_maps, s.offset_low, radius)
        for h in range(s.heads):
            ax = fig.add_subplot(grid[row, h])
            image = ax.imshow(crops[h].numpy(), cmap="viridis", norm=norm, interpolation="nearest",
                      extent=(-radius - 0.5, radius + 0.5, radius + 0.5, -radius - 0.5))
            ax.scatter([0], [0], marker="+", color="white", s=12, lw=0.6)
            stats = s.head_stats[h]
            ax.set_title(f"{stats.peak_mass:.2f}" + (" *" if stats.conv_like else ""), fontsize=7,
                         color="black" if stats.conv_like else "0.45")
            ax.set_xticks([])
            ax.set_yticks([])
            if h == 0:
                ax.set_ylabel(f"layer {s.layer + 1}\n{s.error:.2g}", fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=fig.axes, location="left", shrink=0.8, pad=0.01, label="mean attention")
    ax = fig.add_subplot(grid[:, heads:])
    colours = plt.get_cmap("tab10")
    for s in layers:
        ax.scatter([h.distance for h in s.head_stats], [h.peak_mass for h in s.head_stats], s=22,
                   color=colours(s.layer % 10), label=f"layer {s.layer + 1}", edgecolors="black", lw=0.4)
    ax.axhline(CONV_LIKE_MASS, color="0.5", ls="--", lw=0.8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("mean attention distance (tokens)")
    ax.set_ylabel("mass on the peak offset")
    ax.grid(alpha=0.3)
    if layers:
        ax.legend(fontsize="small")
    fig.suptitle(f"{Path(analysis.run).name}: mean attention of each head over offsets (+-{radius}, interior "
                 f"queries; title: mass on its peak offset, * conv-like; left: layer, error of its nearest conv)",
                 fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def offset_crop(maps: torch.Tensor, low: Sequence[int], radius: int) -> torch.Tensor:
    """(H, 2 radius + 1, 2 radius + 1): maps (H, *window) whose [0, 0] is offset `low`, re-centred on the
    zero offset, zero where the window has no such offset."""
    out = torch.zeros(maps.shape[0], 2 * radius + 1, 2 * radius + 1, dtype=maps.dtype)
    for r in range(-radius, radius + 1):
        for c in range(-radius, radius + 1):
            i, j = r - low[0], c - low[1]
            if 0 <= i < maps.shape[1] and 0 <= j < maps.shape[2]:
                out[:, r + radius, c + radius] = maps[:, i, j]
    return out


def write_outputs(analysis: RunAnalysis, *, figure: bool = True) -> list[Path]:
    run = Path(analysis.run)
    written = [run / "analysis.json", run / "analysis.csv"]
    (run / "analysis.json").write_text(json.dumps(analysis.to_json(), indent=2, allow_nan=False) + "\n")
    write_csv(analysis, run / "analysis.csv")
    if figure and analysis.layers:
        written.append(draw_figure(analysis, run / "figures" / "analysis.png"))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m impl.analyze",
                                     description="How convolutional is each attention layer of a trained run?")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by impl.train")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES,
                        help=f"test images to analyse (default {DEFAULT_IMAGES}; half fit, half held out)")
    parser.add_argument("--kernel", type=int, default=DEFAULT_KERNEL,
                        help=f"side of the least-squares convolution (odd, default {DEFAULT_KERNEL})")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="which checkpoint (default best, else last)")
    parser.add_argument("--no-figure", action="store_true", help="skip figures/analysis.png")
    args = parser.parse_args(argv)
    if args.images < 2:
        parser.error(f"--images must be an int >= 2, got {args.images}")
    if args.kernel < 1 or args.kernel % 2 == 0:
        parser.error(f"--kernel must be a positive odd int, got {args.kernel}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be a positive int, got {args.batch_size}")
    for run in args.runs:
        if not (Path(run) / "config.json").is_file():
            parser.error(f"RUN_DIR {run!r} is not a run directory (no config.json)")
    which = ("best", "last") if args.checkpoint == "best" else ("last",)
    torch.manual_seed(0)
    summaries = []
    for run in args.runs:
        analysis = analyze_run(run, images=args.images, kernel=args.kernel, batch_size=args.batch_size,
                               which=which)
        print(f"\n== {run}: {analysis.model} on {analysis.data}, {Path(analysis.checkpoint).name} (epoch "
              f"{analysis.epoch}), {analysis.images} test images")
        if not analysis.layers:
            print("no attention layers")
        else:
            print(layer_table(analysis))
            print()
            print(head_table(analysis))
        written = write_outputs(analysis, figure=not args.no_figure)
        print("wrote " + ", ".join(map(str, written)))
        heads = [h for s in analysis.layers for h in s.head_stats]
        summaries.append((run, sum(h.conv_like for h in heads), len(heads),
                          sum(h.distance for h in heads) / max(1, len(heads))))
    if len(summaries) > 1:
        print("\nrun: conv-like heads, mean attention distance")
        for run, conv_like, total, distance in summaries:
            print(f"  {run}: {conv_like}/{total}, {distance:.2f} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
