"""Convolution <-> attention: the constructive proof of Theorem 1 as a converter.

`conv_to_attention(conv)` builds a `RelativeSelfAttention` with one isotropic quadratic head per kernel tap
(Lemma 1 + the quadratic encoding), the convolution's padding as padded tokens, its stride as a query
lattice and its dilation as spread-out centres. At alpha = inf the heads attend one-hot and the layer equals
the convolution up to rounding; at finite alpha it is within `spec.bounds.output_error_bound`.
`attention_to_conv(attn)` reads a convolution back from a layer whose heads are (near) one-hot.
"""

from __future__ import annotations

import copy
import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .attention import (PADDING_MODES, Axis, Geometry, QuadraticEncoding, RelativeSelfAttention, check_alpha,
                        width_of)

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


# -- geometry of a convolution ----------------------------------------------------------------------
def kernel_anchor(kernel: int, dilation: int) -> int:
    """Offset, inside the dilated window, of the tap a query sits on: the centre, rounded down."""
    return dilation * ((kernel - 1) // 2)


def kernel_shifts(kernel: int, dilation: int) -> list[int]:
    """Key - query offsets of the taps along one axis."""
    anchor = kernel_anchor(kernel, dilation)
    return [a * dilation - anchor for a in range(kernel)]


def conv_padding(conv: nn.modules.conv._ConvNd) -> list[tuple[int, int]]:
    """(before, after) padding per spatial axis, resolving 'same' and 'valid' as torch does."""
    if conv.padding == "valid":
        return [(0, 0)] * len(conv.kernel_size)
    if conv.padding == "same":
        totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        return [(t // 2, t - t // 2) for t in totals]
    return [(p, p) for p in conv.padding]


def conv_geometry(conv: nn.modules.conv._ConvNd) -> Geometry:
    axes = []
    for (before, after), k, s, d in zip(conv_padding(conv), conv.kernel_size, conv.stride, conv.dilation):
        anchor = kernel_anchor(k, d)
        axes.append(Axis(pad_before=before, pad_after=after, stride=s,
                         margin_before=anchor, margin_after=d * (k - 1) - anchor))
    return Geometry(tuple(axes), padding_mode=conv.padding_mode)


# -- conv -> attention --------------------------------------------------------------------------------
def check_conv(conv) -> None:
    if isinstance(conv, nn.modules.conv._ConvTransposeNd):
        raise TypeError(f"conv must be nn.Conv1d, nn.Conv2d or nn.Conv3d; transposed convolutions "
                        f"({type(conv).__name__}) are not supported")
    if not isinstance(conv, CONV_TYPES):
        raise TypeError(f"conv must be nn.Conv1d, nn.Conv2d or nn.Conv3d, got {type(conv).__name__}")
    base = next(t for t in CONV_TYPES if isinstance(conv, t))
    # Only the weight and the attributes are read: a subclass computing something else in its forward
    # (weight standardisation, fake quantisation, padding worked out per input) would be converted wrongly.
    if type(conv).forward is not base.forward or type(conv)._conv_forward is not base._conv_forward:
        raise TypeError(f"conv must compute what {base.__name__} computes from its weight and attributes; "
                        f"{type(conv).__name__} overrides forward, so its output is not that")
    if isinstance(conv.weight, nn.parameter.UninitializedParameter):
        raise ValueError("conv is a lazy convolution that has not seen an input yet: run it once first")
    # A convolution edited after construction (weight, bias or groups replaced) must still be one.
    groups = conv.groups
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 \
            or conv.in_channels % groups or conv.out_channels % groups:
        raise ValueError(f"conv.groups must be a positive int dividing in_channels={conv.in_channels} and "
                         f"out_channels={conv.out_channels}, got {groups!r}")
    expected = (conv.out_channels, conv.in_channels // groups, *conv.kernel_size)
    if not isinstance(conv.weight, torch.Tensor) or tuple(conv.weight.shape) != expected:
        shape = tuple(conv.weight.shape) if isinstance(conv.weight, torch.Tensor) else type(conv.weight).__name__
        raise ValueError(f"conv.weight must have shape (out_channels, in_channels / groups, *kernel_size) = "
                         f"{expected}, got {shape}")
    if not conv.weight.is_floating_point():
        raise TypeError(f"conv.weight must be a floating-point tensor, got dtype {conv.weight.dtype}")
    if conv.bias is not None and (not isinstance(conv.bias, torch.Tensor)
                                  or tuple(conv.bias.shape) != (conv.out_channels,)):
        shape = tuple(conv.bias.shape) if isinstance(conv.bias, torch.Tensor) else type(conv.bias).__name__
        raise ValueError(f"conv.bias must be None or have shape (out_channels,) = ({conv.out_channels},), "
                         f"got {shape}")
    if conv.padding_mode not in PADDING_MODES:
        raise ValueError(f"conv.padding_mode must be one of {PADDING_MODES}, got {conv.padding_mode!r}")


def conv_to_attention(conv: nn.modules.conv._ConvNd, alpha: float = math.inf) -> RelativeSelfAttention:
    """The attention layer equal to `conv` (alpha = inf) or within the spec's bound of it (finite alpha).

    One quadratic head per kernel tap, centred on the tap's shift; the merge weight holds the kernel slice
    of each tap (zero across groups); the bias is the conv's. Same dtype, device and requires_grad. To
    train the merge alone, freeze the positions with `layer.encoding.requires_grad_(False)`: its backward
    then skips the probabilities' per-head gradients (about 1.2x the convolution's time on CPU at finite
    alpha, against 1.5x with them; docs/RESULTS.md). A grouped convolution's merge is dense, zero outside
    the groups' blocks: training it fills them in (and it holds `groups` times the conv's weights).
    """
    check_conv(conv)
    alpha = check_alpha(alpha)
    dtype = conv.weight.dtype
    width = None if alpha == math.inf else width_of(alpha, dtype)
    spatial_dims = len(conv.kernel_size)
    taps = list(itertools.product(*(range(k) for k in conv.kernel_size)))
    shifts = [kernel_shifts(k, d) for k, d in zip(conv.kernel_size, conv.dilation)]
    centre = torch.tensor([[shifts[axis][a] for axis, a in enumerate(tap)] for tap in taps], dtype=torch.float64)
    if not torch.equal(centre.to(dtype).double(), centre):
        reach = int(centre.abs().max())
        raise ValueError(f"conv's taps reach offset {reach} (dilation={conv.dilation}), which {dtype} cannot hold "
                         f"exactly as a head centre: convert the convolution in float32 or float64")
    # Any finite alpha builds the layer: the width is set below in the conv's dtype (not rounded through
    # float32, and float64 widths beyond float32's range are allowed).
    layer = RelativeSelfAttention(conv.in_channels, heads=len(taps), out_dim=conv.out_channels,
                                  encoding="quadratic", spatial_dims=spatial_dims,
                                  alpha=math.inf if width is None else 1.0,
                                  bias=conv.bias is not None, geometry=conv_geometry(conv))
    layer.to(device=conv.weight.device, dtype=dtype)
    with torch.no_grad():
        layer.encoding.centre.copy_(centre)
        if width is not None:
            layer.encoding.width.fill_(width)
        layer.merge.weight.copy_(merge_weight(conv.weight, taps, conv.groups))
        if conv.bias is not None:
            layer.merge.bias.copy_(conv.bias)
    layer.requires_grad_(conv.weight.requires_grad)
    if conv.bias is not None:
        layer.merge.bias.requires_grad_(conv.bias.requires_grad)
    return layer


def merge_weight(weight: torch.Tensor, taps: Sequence[tuple[int, ...]], groups: int) -> torch.Tensor:
    """(out, heads * in) merge matrix: head h's block is the kernel slice at tap h, block-diagonal by group."""
    out_channels, in_per_group = weight.shape[:2]
    out_per_group = out_channels // groups
    merged = weight.new_zeros(out_channels, len(taps), groups * in_per_group)
    for h, tap in enumerate(taps):
        for g in range(groups):
            rows = slice(g * out_per_group, (g + 1) * out_per_group)
            cols = slice(g * in_per_group, (g + 1) * in_per_group)
            merged[rows, h, cols] = weight[(rows, slice(None), *tap)]
    return merged.reshape(out_channels, -1)


# -- attention -> conv --------------------------------------------------------------------------------
def distance_from_one_hot(encoding: QuadraticEncoding) -> torch.Tensor:
    """Per head, 1 - p at the key nearest its centre, in the worst case (an unbounded grid of keys).

    Fewer keys (a border) only concentrate the softmax, so this bounds every query of every image.
    """
    if encoding.hard:
        return torch.zeros(encoding.heads, dtype=torch.float64)
    centre = encoding.centre.detach().double().cpu()
    alpha = encoding.alpha.detach().double().cpu()
    reach = int(min(10_000, math.ceil(math.sqrt(60 / max(float(alpha.min()), 1e-12))) + 2))
    keys = torch.arange(-reach, reach + 1, dtype=torch.float64)
    nearest = centre.round()
    p = torch.ones(encoding.heads, dtype=torch.float64)
    for axis in range(encoding.spatial_dims):
        grid = nearest[:, axis, None] + keys  # keys around the nearest integer, per head
        logits = -alpha[:, None] * (grid - centre[:, axis, None]).square()
        p = p * logits.softmax(-1)[:, reach]
    return 1 - p


def check_layer_state(attn: RelativeSelfAttention) -> None:
    """Raise ValueError naming `attn` when its parameters cannot describe a convolution (NaN, shapes)."""
    encoding = attn.encoding
    centre = encoding.centre.detach()
    if not bool(torch.isfinite(centre).all()):
        heads = sorted({int(h) for h in torch.nonzero(~torch.isfinite(centre))[:, 0]})
        raise ValueError(f"attn has non-finite head centres (heads {heads}): no convolution computes it")
    if not encoding.hard:
        alpha = encoding.alpha.detach()
        if not bool(torch.isfinite(alpha).all()):
            heads = [int(h) for h in torch.nonzero(~torch.isfinite(alpha)).flatten()]
            raise ValueError(f"attn has non-finite alpha (heads {heads}): use alpha=math.inf for the hard limit")
    expected = (attn.out_dim, attn.heads * attn.dim)
    if tuple(attn.merge.weight.shape) != expected:
        raise ValueError(f"attn.merge.weight must have shape (out_dim, heads * dim) = {expected}, "
                         f"got {tuple(attn.merge.weight.shape)}")


def attention_to_conv(attn: RelativeSelfAttention, tol: float = 1e-6) -> nn.modules.conv._ConvNd:
    """The convolution a layer of (near) one-hot quadratic heads computes.

    Exact for hard-limit heads. Finite-alpha heads must each be within `tol` of one-hot (1 - p at the
    nearest key, worst case over queries); their centres are rounded to the nearest integer shift.
    """
    if not isinstance(attn, RelativeSelfAttention):
        raise TypeError(f"attn must be a RelativeSelfAttention, got {type(attn).__name__}")
    if not isinstance(attn.encoding, QuadraticEncoding) or attn.content:
        raise ValueError(f"attn must have quadratic heads and no content scores to be a convolution, got "
                         f"encoding={attn.encoding_name}, content={attn.content}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < 1:
        raise ValueError(f"tol must be a float in [0, 1), got {tol!r}")
    check_layer_state(attn)
    if attn.encoding.hard:
        # A hard head midway between two keys averages them (the limit of its softmax): no single tap.
        halfway = ((attn.encoding.centre.detach() % 1) == 0.5).any(1)
        if bool(halfway.any()):
            h = int(halfway.nonzero()[0])
            raise ValueError(f"head {h}'s centre {attn.encoding.centre[h].tolist()} lies midway between two "
                             f"keys: its hard-limit attention averages them, which no convolution tap computes")
    distance = distance_from_one_hot(attn.encoding)
    for h, d in enumerate(distance.tolist()):
        if d > tol:
            raise ValueError(f"head {h} is {d:.3g} from one-hot (1 - p at its nearest key), more than "
                             f"tol={tol}: centre={attn.encoding.centre[h].tolist()}, "
                             f"alpha={float(attn.encoding.alpha[h].detach()):.4g}")
    geometry = attn.geometry
    shifts = attn.encoding.centre.detach().round().abs()
    if geometry.is_identity and bool(shifts.any()):
        # Plain self-attention: a shift leaving the image lands on the border key (the limit of the
        # softmax over the keys present), which is replicate padding.
        reach = [int(shifts[:, axis].max()) for axis in range(attn.spatial_dims)]
        geometry = Geometry(tuple(Axis(pad_before=r, pad_after=r, margin_before=r, margin_after=r)
                                  for r in reach), padding_mode="replicate")
    return _conv_from_heads(attn, geometry)


def _conv_from_heads(attn: RelativeSelfAttention, geometry: Geometry) -> nn.modules.conv._ConvNd:
    shifts = attn.encoding.centre.detach().round().long().cpu()  # (heads, n)
    kernel, dilation = [], []
    for axis, ax in enumerate(geometry.axes):
        extent = ax.margin_before + ax.margin_after
        taps = (shifts[:, axis] + ax.margin_before).tolist()
        if min(taps) < 0 or max(taps) > extent:
            h = next(i for i, t in enumerate(taps) if t < 0 or t > extent)
            raise ValueError(f"head {h}'s shift {shifts[h].tolist()} leaves the window "
                             f"[-{ax.margin_before}, {ax.margin_after}] that the layer's geometry gives axis "
                             f"{axis}: no convolution with this padding and stride computes it")
        d = _dilation(extent, ax.margin_before, taps)
        kernel.append(extent // d + 1)
        dilation.append(d)
    groups = _groups(attn.merge.weight.detach(), attn.heads, attn.dim)
    pads = [(ax.pad_before, ax.pad_after) for ax in geometry.axes]
    same = [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation)]
    if all(b == a for b, a in pads):
        padding = tuple(b for b, _ in pads)
    elif pads == same and all(ax.stride == 1 for ax in geometry.axes):
        padding = "same"
    else:
        raise ValueError(f"the layer's padding {pads} is asymmetric and not 'same': no torch convolution has it")
    conv_type = CONV_TYPES[attn.spatial_dims - 1]
    conv = conv_type(attn.dim, attn.out_dim, tuple(kernel), stride=tuple(ax.stride for ax in geometry.axes),
                     padding=padding, dilation=tuple(dilation), groups=groups,
                     bias=attn.merge.bias is not None, padding_mode=geometry.padding_mode)
    weight = attn.merge.weight.detach()
    conv.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.zero_()
        blocks = weight.reshape(attn.out_dim, attn.heads, attn.dim)
        out_per_group, in_per_group = attn.out_dim // groups, attn.dim // groups
        for h in range(attn.heads):
            tap = tuple(int(shifts[h, axis] + geometry.axes[axis].margin_before) // dilation[axis]
                        for axis in range(attn.spatial_dims))
            for g in range(groups):
                rows = slice(g * out_per_group, (g + 1) * out_per_group)
                cols = slice(g * in_per_group, (g + 1) * in_per_group)
                conv.weight[(rows, slice(None), *tap)] += blocks[rows, h, cols]
        if conv.bias is not None:
            conv.bias.copy_(attn.merge.bias)
    return conv


def _dilation(extent: int, anchor: int, taps: Sequence[int]) -> int:
    """The largest dilation whose grid of taps holds every head and puts the anchor where we put it."""
    if extent == 0:
        return 1
    for d in range(extent, 0, -1):
        if extent % d == 0 and all(t % d == 0 for t in taps) and kernel_anchor(extent // d + 1, d) == anchor:
            return d
    raise ValueError(f"no dilation puts the anchor at {anchor} within a window of extent {extent}")


def _groups(weight: torch.Tensor, heads: int, in_channels: int) -> int:
    """The largest group count for which the merge weight is zero outside its diagonal blocks."""
    out_channels = weight.shape[0]
    blocks = weight.reshape(out_channels, heads, in_channels)
    for g in range(math.gcd(out_channels, in_channels), 1, -1):
        if out_channels % g or in_channels % g:
            continue
        mask = torch.ones(out_channels, in_channels, dtype=torch.bool, device=weight.device)
        op, ip = out_channels // g, in_channels // g
        for i in range(g):
            mask[i * op:(i + 1) * op, i * ip:(i + 1) * ip] = False
        if not blocks[:, :, :][mask[:, None, :].expand_as(blocks)].any():
            return g
    return 1


# -- whole networks -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvertedLayer:
    """One line of a conversion report."""

    name: str
    conv: str
    kernel: tuple[int, ...]
    heads: int
    params_before: int
    params_after: int


@dataclass(frozen=True)
class Conversion:
    model: nn.Module
    layers: tuple[ConvertedLayer, ...]

    def report(self) -> str:
        header = f"{'layer':<32} {'conv':<8} {'kernel':<10} {'heads':>5} {'params before':>14} {'params after':>13}"
        lines = [header, "-" * len(header)]
        for row in self.layers:
            kernel = "x".join(map(str, row.kernel))
            lines.append(f"{row.name:<32} {row.conv:<8} {kernel:<10} {row.heads:>5} {row.params_before:>14,} "
                         f"{row.params_after:>13,}")
        before = sum(r.params_before for r in self.layers)
        after = sum(r.params_after for r in self.layers)
        lines.append(f"{len(self.layers)} convolutions converted; their parameters {before:,} -> {after:,}")
        return "\n".join(lines)


def convert_model(model: nn.Module, alpha: float = math.inf, *, verbose: bool = True) -> Conversion:
    """A copy of `model` with every Conv1d/Conv2d/Conv3d replaced by its attention layer; the rest untouched.

    The original is not modified. Returns the copy and a per-layer report (printed when `verbose`).
    A convolution `conv_to_attention` refuses (a subclass with its own forward, a shift its dtype cannot
    hold) stops the conversion with its error, prefixed by the layer's name; hooks on the convolutions are
    not carried over (a warning names them).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, CONV_TYPES):
        raise TypeError(f"model must contain convolutions, not be one (got {type(model).__name__}): "
                        f"convert a single convolution with conv_to_attention(conv, alpha)")
    alpha = check_alpha(alpha)
    if not isinstance(verbose, bool):
        raise TypeError(f"verbose must be a bool, got {type(verbose).__name__}")
    converted = copy.deepcopy(model)
    rows = []
    # Collect first: replacing children while iterating would skip or revisit some. Every name of a
    # shared (tied) convolution is collected, and all of them get the same attention layer.
    targets = [(name, module) for name, module in converted.named_modules(remove_duplicate=False)
               if isinstance(module, CONV_TYPES)]
    replaced: dict[int, RelativeSelfAttention] = {}
    for name, conv in targets:
        first = id(conv) not in replaced
        if first:
            try:
                replaced[id(conv)] = conv_to_attention(conv, alpha).train(conv.training)
            except (TypeError, ValueError) as error:  # name the layer: the model may hold hundreds
                raise type(error)(f"model.{name}: {error}") from error
            if conv._forward_hooks or conv._forward_pre_hooks:
                warnings.warn(f"model.{name} has forward hooks; its attention layer does not carry them over",
                              stacklevel=2)
        layer = replaced[id(conv)]
        parent_name, _, child = name.rpartition(".")
        setattr(converted.get_submodule(parent_name) if parent_name else converted, child, layer)
        if first:
            rows.append(ConvertedLayer(name, type(conv).__name__, tuple(conv.kernel_size), layer.heads,
                                       sum(p.numel() for p in conv.parameters()),
                                       sum(p.numel() for p in layer.parameters())))
    conversion = Conversion(converted, tuple(rows))
    if verbose:
        print(conversion.report())
    return conversion


def _build_named_model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """Our registry's model, else a torchvision classification model with random weights; and an input shape."""
    from . import models

    if name in models.list_models():
        model = models.build(name)
        size = getattr(model, "image_size", (32, 32))
        return model, (3, *size)
    import torchvision

    # Classification models only: the others (detection, segmentation, video) take other inputs, and some
    # fetch pretrained backbone weights even with weights=None.
    if name not in torchvision.models.list_models(module=torchvision.models):
        known = ", ".join(models.list_models())
        raise ValueError(f"--model must be one of ours ({known}) or a torchvision classification model "
                         f"name, got {name!r}")
    return torchvision.models.get_model(name, weights=None), (3, 224, 224)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m impl.convert",
                                     description="Convert every convolution of a model into attention "
                                                 "and report the logit error (float64, eval mode).")
    parser.add_argument("--model", default="resnet18", help="registry or torchvision model name")
    parser.add_argument("--alpha", default="inf", help="attention width: a positive float or 'inf' (exact)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        alpha = check_alpha(float(args.alpha))
    except (TypeError, ValueError):
        parser.error(f"--alpha must be a positive float or 'inf', got {args.alpha!r}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be a positive int, got {args.batch_size}")
    torch.manual_seed(args.seed)
    try:
        model, shape = _build_named_model(args.model)
    except ValueError as error:
        parser.error(str(error))
    model = model.double().eval()
    conversion = convert_model(model, alpha)
    x = torch.randn(args.batch_size, *shape, dtype=torch.float64)
    with torch.no_grad():
        expected, actual = model(x), conversion.model(x)
    error = float((actual - expected).abs().max() / expected.abs().max())
    print(f"max |logits(attention) - logits(conv)| / max |logits(conv)| = {error:.3e} "
          f"(model={args.model}, alpha={alpha}, float64)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
