"""`python -m impl.models --list [PATTERN]`: every registered model with its parameters and FLOPs per image.

FLOPs are those of one forward pass in eval mode at the model's default input (batch 1), counted by
`impl.flops.flop_counter` (FlopCounterMode, with the layers' oneDNN GEMMs counted too; a multiply-add
counts 2; matrix products, convolutions and attention kernels only: normalisation, activations and softmax
are not counted).
"""

from __future__ import annotations

import argparse
import sys

import torch

from ..flops import flop_counter
from .registry import build, list_models


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def default_input(model: torch.nn.Module) -> torch.Tensor:
    """A batch of one image of the model's default size."""
    return torch.zeros(1, model.in_channels, *model.image_size)


def flops_per_image(model: torch.nn.Module) -> int:
    """Forward FLOPs of `model` (eval mode, no grad) on one image of its default size."""
    was_training = model.training
    model.eval()
    counter = flop_counter()
    with torch.no_grad(), counter:
        model(default_input(model))
    model.train(was_training)
    return counter.get_total_flops()


def table(names: list[str]) -> str:
    rows = [("model", "params", "GFLOPs/image", "input")]
    for name in names:
        model = build(name)
        shape = "x".join(map(str, (model.in_channels, *model.image_size)))
        rows.append((name, f"{parameter_count(model):,}", f"{flops_per_image(model) / 1e9:.3f}", shape))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m impl.models", description=__doc__.splitlines()[0])
    parser.add_argument("--list", nargs="?", const="*", metavar="PATTERN", dest="pattern",
                        help="list the models matching the fnmatch PATTERN (default: all)")
    args = parser.parse_args(argv)
    if args.pattern is None:
        parser.error("nothing to do: pass --list [PATTERN]")
    names = list_models(args.pattern)
    if not names:
        parser.error(f"--list: no model matches PATTERN {args.pattern!r}; known models: {', '.join(list_models())}")
    torch.manual_seed(0)
    print(table(names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
