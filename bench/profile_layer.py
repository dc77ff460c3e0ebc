"""Where a layer's forward + backward spends its time, op by op, against the convolution it replaces.

`python -m bench.profile_layer [--path separable-quadratic] [--size 16] [--threads 1] [--steps 3]`: after a
warm-up, torch.profiler records `--steps` forward + backward passes of the path's layer (`common.LAYER_PATHS`,
the paper's shape) and of the 3x3 `nn.Conv2d`; prints each one's ops by self CPU time per pass, in ms and
as a fraction of the convolution's whole pass, with calls per pass. The profiler itself moves time (on this
project's CPU it once put the convolution's pass at 548 ms against 345 ms unprofiled), so the same passes
are first timed without it, interleaved, and that ratio is printed above the tables: it is the figure to
quote; the tables say where the time goes. The GEMMs are `aten::mkldnn_convolution`
(oneDNN: forward, and the projections) and `aten::convolution_backward` (oneDNN weight and input
gradients); the small passes are `aten::bmm` / `aten::baddbmm_`; layout changes are `aten::copy_`.
"""

from __future__ import annotations

import argparse
import statistics
import time

from torch.profiler import ProfilerActivity, profile

from . import common


def op_times(module, x, steps: int) -> tuple[float, list[tuple[str, float, float]]]:
    """(total ms per pass, [(op, self CPU ms per pass, calls per pass)] slowest first)."""
    common.forward_backward(module, x)  # warm-up: caches, allocator, oneDNN primitives
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            common.forward_backward(module, x)
    ops = [(e.key, e.self_cpu_time_total / 1e3 / steps, e.count / steps) for e in prof.key_averages()
           if e.self_cpu_time_total > 0]
    ops.sort(key=lambda op: -op[1])
    return sum(ms for _, ms, _ in ops), ops


def unprofiled_ms(modules, x, steps: int) -> list[float]:
    """Median wall-clock ms per pass of each module, rounds interleaved, no profiler."""
    times = [[] for _ in modules]
    for _ in range(steps):
        for module, record in zip(modules, times):
            start = time.perf_counter()
            common.forward_backward(module, x)
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
    args = parser.parse_args(argv)
    if args.path not in common.LAYER_PATHS or args.path == "conv":
        parser.error(f"--path: {args.path!r} is not one of {', '.join(common.LAYER_PATHS[1:])}")
    if args.size < 3 or args.threads < 1 or args.steps < 1 or args.top < 1:
        parser.error("--size must be >= 3, --threads, --steps and --top >= 1")
    with common.intra_op_threads(args.threads):
        x = common.layer_input(args.size, "cpu", requires_grad=True)
        conv, path = common.layer("conv", args.size, "cpu"), common.layer(args.path, args.size, "cpu")
        conv_ms, conv_ops = op_times(conv, x, args.steps)
        path_ms, path_ops = op_times(path, x, args.steps)
        plain_conv, plain_path = unprofiled_ms((conv, path), x, args.steps)
    print(common.header(f"threads {args.threads}", f"({args.path} and conv, {args.size}x{args.size} tokens, "
                        f"batch {x.shape[0]}, forward + backward, {args.steps} passes each)"))
    print(f"\nunprofiled (wall clock, median): {args.path} {plain_path:.1f} ms = {plain_path / plain_conv:.2f} x "
          f"conv ({plain_conv:.1f} ms)")
    print(f"profiled (sum of self CPU times): {args.path} {path_ms:.1f} ms = {path_ms / conv_ms:.2f} x conv "
          f"({conv_ms:.1f} ms)\n")
    for name, ops in (("conv", conv_ops), (args.path, path_ops)):
        print(f"| {name}: op | ms | / conv | calls |\n|---|---|---|---|")
        for op, ms, calls in ops[:args.top]:
            print(f"| {op} | {ms:.1f} | {ms / conv_ms:.3f} | {calls:g} |")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
