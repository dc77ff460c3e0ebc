"""Shared per-axis matrices (`ProductMerge`) against the per-head path (`PositionalMerge`), side by side.

`python -m bench.sharing [--sizes 16,32] [--rounds 5]`: the converted 3x3 convolution of `common` (alpha 4,
forward + backward, batch 16, one thread), timed in thread CPU time in interleaved rounds (each round: conv,
shared, per-head); prints the median ratio to the convolution of each, and its range. The per-head path
is forced by making `product_groups` find no sharing, which is what a layer with distinct heads gets.
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

from impl.attention import positional_merge

from . import common


def _cpu_time(module, x) -> float:
    start = time.thread_time()
    common.forward_backward(module, x)
    return time.thread_time() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sharing", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,32", help="token grid sides (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: %(default)s)")
    args = parser.parse_args(argv)
    with common.intra_op_threads(1):
        _table(args)
    return 0


def _table(args) -> None:
    print(common.header("threads 1", "(batch 16, 400 channels, 9 heads, alpha 4, forward + backward, CPU time)"))
    print("| tokens | conv (ms) | shared / conv | range | per-head / conv | range |\n|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        x = common.layer_input(size, "cpu", requires_grad=True)
        conv, layer = common.layer("conv", size, "cpu"), common.layer("separable-quadratic", size, "cpu")
        shared, per_head, conv_ms = [], [], []
        for _ in range(args.rounds + 1):  # the first round warms up and is dropped
            c = _cpu_time(conv, x)
            s = _cpu_time(layer, x)
            with mock.patch.object(positional_merge, "product_groups", lambda *a: None):
                p = _cpu_time(layer, x)
            shared.append(s / c), per_head.append(p / c), conv_ms.append(1e3 * c)
        shared, per_head, conv_ms = shared[1:], per_head[1:], conv_ms[1:]
        print(f"| {size}x{size} | {statistics.median(conv_ms):.0f} | {statistics.median(shared):.2f} | "
              f"{min(shared):.2f}-{max(shared):.2f} | {statistics.median(per_head):.2f} | "
              f"{min(per_head):.2f}-{max(per_head):.2f} |")


if __name__ == "__main__":
    raise SystemExit(main())
