"""Where a layer's forward + backward spends its time, op by op, against the convolution it replaces.

`python -m bench.profile_layer [--path separable-quadratic] [--size 16] [--threads 1] [--steps 3]
[--by-shape] [--forward-only]`: after a warm-up, torch.profiler records `--steps` forward + backward passes
(with `--forward-only`, forwards in eval mode under no_grad) of the path's layer (`common.LAYER_PATHS`, the
paper's shape) and of the 3x3 `nn.Conv2d`; prints each one's ops by self CPU time per pass, in ms and as a
fraction of the convolution's whole pass, with calls per pass. The profiler itself moves time (on this
project's CPU it once put the convolution's pass at 548 ms against 345 ms unprofiled), so the same passes
are first timed without it, interleaved, and that ratio is printed above the tables: it is the figure to
quote; the tables say where the time goes. The GEMMs are `aten::mkldnn_convolution` (oneDNN: forward, and
the projections where oneDNN is the backend) or `aten::mm` / `aten::addmm_` (BLAS), and
`aten::convolution_backward` (the convolution's weight and input gradients); the small passes are
`aten::bmm` / `aten::baddbmm_`; layout changes are `aten::copy_`.

`--by-shape` lists each op once per set of input shapes instead, and gives the matrix products' rate
(GFLOP/s, from their shapes): which product of which size is slow, e.g. a pass over a grid axis against
the projection's GEMM.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

from torch.profiler import ProfilerActivity, profile

from . import common


# The matrix products and the positions of their two factors among the recorded inputs.
PRODUCT_FACTORS = {"aten::mm": (0, 1), "aten::bmm": (0, 1), "aten::addmm": (1, 2), "aten::addmm_": (1, 2),
                   "aten::baddbmm": (1, 2), "aten::baddbmm_": (1, 2)}


def product_flops(op: str, shapes) -> int | None:
    """FLOPs of one call of a matrix product (2 per multiply-add) from its recorded input shapes: (.., M, K)
    by (.., K, N) gives 2 x (.. x M x K) x N. None for any other op."""
    if op not in PRODUCT_FACTORS:
        return None
    first, second = (shapes[i] if i < len(shapes) else [] for i in PRODUCT_FACTORS[op])
    if len(first) < 2 or len(second) < 2:
        return None
    return 2 * math.prod(first) * second[-1]


def op_times(module, x, steps: int, by_shape: bool = False,
             forward_only: bool = False) -> tuple[float, list[tuple]]:
    """(total ms per pass, [(op, self CPU ms per pass, calls per pass, GFLOP/s or None)] slowest first);
    by_shape: one row per op and set of input shapes, the shapes in the op's name."""
    common.layer_pass(module, x, forward_only)  # warm-up: caches, allocator, oneDNN primitives
    with profile(activities=[ProfilerActivity.CPU], record_shapes=by_shape) as prof:
        for _ in range(steps):
            common.layer_pass(module, x, forward_only)
    ops = []
    for e in prof.key_averages(group_by_input_shape=by_shape):
        if e.self_cpu_time_total <= 0:
            continue
        ms, calls = e.self_cpu_time_total / 1e3 / steps, e.count / steps
        flops = product_flops(e.key, e.input_shapes) if by_shape else None
        rate = None if flops is None else flops * calls / (ms / 1e3) / 1e9
        ops.append((f"{e.key} {e.input_shapes}" if by_shape else e.key, ms, calls, rate))
    ops.sort(key=lambda op: -op[1])
    return sum(op[1] for op in ops), ops


def unprofiled_ms(modules, x, steps: int, forward_only: bool = False) -> list[float]:
    """Median wall-clock ms per pass of each module, rounds interleaved, no profiler."""
    times = [[] for _ in modules]
    for _ in range(steps):
        for module, record in zip(modules, times):
            start = time.perf_counter()
            common.layer_pass(module, x, forward_only)
            record.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_layer", description=__doc__.splitlines()[0])
    parser.add_argument("--path", default="separable-quadratic",
                        help=f"one of {', '.join(common.LAYER_PATHS[1:])} (default: %(default)s)")
    parser.add_argument("--size", type=int, default=16, help="token grid side (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=3, help="profiled passes (default: %(default)s)")
    parser.add_argument("--top", type=int, default=12, help="ops listed per module (default: %(default)s)")
    parser.add_argument("--by-shape", action="store_true",
                        help="one row per op and input shapes, with the matrix products' GFLOP/s")
    parser.add_argument("--forward-only", action="store_true",
                        help="profile the forward alone, in eval mode under no_grad (default: forward + backward)")
    args = parser.parse_args(argv)
    if args.path not in common.LAYER_PATHS or args.path == "conv":
        parser.error(f"--path: {args.path!r} is not one of {', '.join(common.LAYER_PATHS[1:])}")
    if args.size < 3 or args.threads < 1 or args.steps < 1 or args.top < 1:
        parser.error("--size must be >= 3, --threads, --steps and --top >= 1")
    with common.intra_op_threads(args.threads):
        training = not args.forward_only
        x = common.layer_input(args.size, "cpu", requires_grad=training)
        conv, path = (common.layer(p, args.size, "cpu").train(training) for p in ("conv", args.path))
        conv_ms, conv_ops = op_times(conv, x, args.steps, args.by_shape, args.forward_only)
        path_ms, path_ops = op_times(path, x, args.steps, args.by_shape, args.forward_only)
        plain_conv, plain_path = unprofiled_ms((conv, path), x, args.steps, args.forward_only)
    print(common.header(f"threads {args.threads}", f"({args.path} and conv, {args.size}x{args.size} tokens, "
                        f"batch {x.shape[0]}, {common.pass_name(args.forward_only)}, {args.steps} passes each)"))
    print(f"\nunprofiled (wall clock, median): {args.path} {plain_path:.1f} ms = {plain_path / plain_conv:.2f} x "
          f"conv ({plain_conv:.1f} ms)")
    print(f"profiled (sum of self CPU times): {args.path} {path_ms:.1f} ms = {path_ms / conv_ms:.2f} x conv "
          f"({conv_ms:.1f} ms)\n")
    for name, ops in (("conv", conv_ops), (args.path, path_ops)):
        if args.by_shape:
            print(f"| {name}: op [input shapes] | ms | / conv | calls | GFLOP/s |\n|---|---|---|---|---|")
        else:
            print(f"| {name}: op | ms | / conv | calls |\n|---|---|---|---|")
        for op, ms, calls, rate in ops[:args.top]:
            rate_cell = f" {'' if rate is None else f'{rate:.3g}'} |" if args.by_shape else ""
            print(f"| {op} | {ms:.1f} | {ms / conv_ms:.3f} | {calls:g} |{rate_cell}")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
