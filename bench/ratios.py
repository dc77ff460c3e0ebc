"""Side-by-side ratios to the convolution, the figures docs/RESULTS.md quotes: `python -m bench.ratios`.

Every path of `common.LAYER_PATHS` asked for, forward + backward on the paper's shape (400 channels, 9
heads, batch 16, CPU), timed with torch.utils.benchmark.Timer (blocked_autorange medians) in interleaved
rounds (conv, path, conv, path, ...) so that a change in the machine's load hits both; the ratio of each
round is ours / conv of that round, and the table gives the median ratio over the rounds and its range.
`--cpu-time` adds the same ratio in thread CPU time (time.thread_time, one thread only), which a shared,
loaded machine disturbs far less than wall time.

    python -m bench.ratios                                   # 2 threads, 16x16 and 32x32, 5 rounds
    python -m bench.ratios --threads 1 --cpu-time --paths separable-quadratic,hard-limit
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import torch
from torch.utils.benchmark import Timer

from . import common


def _wall(module, x, min_run_time: float) -> float:
    timer = Timer("f(m, x)", globals=dict(f=common.forward_backward, m=module, x=x),
                  num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def _cpu(module, x, repeats: int = 3) -> float:
    samples = []
    for _ in range(repeats):
        start = time.thread_time()
        common.forward_backward(module, x)
        samples.append(time.thread_time() - start)
    return statistics.median(samples)


def measure(paths, sizes, rounds: int, min_run_time: float, cpu_time: bool) -> list[dict]:
    rows = []
    for size in sizes:
        x = common.layer_input(size, "cpu", requires_grad=True)
        modules = {p: common.layer(p, size, "cpu") for p in ("conv", *paths)}
        for module in modules.values():
            common.forward_backward(module, x)  # warm-up: caches, allocator
        for path in paths:
            wall, cpu, conv_wall = [], [], []
            for _ in range(rounds):
                c = _wall(modules["conv"], x, min_run_time)
                o = _wall(modules[path], x, min_run_time)
                wall.append(o / c)
                conv_wall.append(c)
                if cpu_time:
                    cpu.append(_cpu(modules[path], x) / _cpu(modules["conv"], x))
            rows.append(dict(path=path, size=size, conv_ms=1e3 * statistics.median(conv_wall),
                             ratio=statistics.median(wall), low=min(wall), high=max(wall),
                             cpu_ratio=statistics.median(cpu) if cpu else None))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ratios", description=__doc__.splitlines()[0])
    parser.add_argument("--paths", default="separable-quadratic,hard-limit,learned,dense-reference",
                        help="comma-separated ids of common.LAYER_PATHS (default: %(default)s)")
    parser.add_argument("--sizes", default="16,32", help="token grid sides (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--min-run-time", type=float, default=1.0,
                        help="seconds per Timer.blocked_autorange (default: %(default)s)")
    parser.add_argument("--cpu-time", action="store_true", help="also report thread-CPU-time ratios (needs --threads 1)")
    args = parser.parse_args(argv)
    paths = [p for p in args.paths.split(",") if p]
    for p in paths:
        if p not in common.LAYER_PATHS or p == "conv":
            parser.error(f"--paths: {p!r} is not one of {', '.join(common.LAYER_PATHS[1:])}")
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
    except ValueError:
        parser.error(f"--sizes must be comma-separated ints, got {args.sizes!r}")
    if not sizes or any(s < 3 for s in sizes):
        parser.error(f"--sizes must be ints >= 3, got {args.sizes!r}")
    if args.threads < 1 or args.rounds < 1 or args.min_run_time <= 0:
        parser.error("--threads and --rounds must be >= 1 and --min-run-time > 0")
    if args.cpu_time and args.threads != 1:
        parser.error("--cpu-time measures one thread's CPU time: use it with --threads 1")
    os.environ["BENCH_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {datetime.date.today()}  torch {torch.__version__}  {platform.processor() or platform.machine()}"
          f"  {os.cpu_count()} CPUs  threads {args.threads}  load average {load:.1f}  (batch "
          f"{common.LAYER_BATCH['cpu']}, {common.CHANNELS} channels, {common.HEADS} heads, forward + backward)")
    rows = measure(paths, sizes, args.rounds, args.min_run_time, args.cpu_time)
    header = "| path | tokens | conv (ms, median) | ours / conv (median of rounds) | range |"
    header += " CPU-time ratio |" if args.cpu_time else ""
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for r in rows:
        line = (f"| {r['path']} | {r['size']}x{r['size']} | {r['conv_ms']:.0f} | {r['ratio']:.2f} | "
                f"{r['low']:.2f}-{r['high']:.2f} |")
        if args.cpu_time:
            line += f" {r['cpu_ratio']:.2f} |"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
