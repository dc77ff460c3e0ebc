"""Side-by-side ratios to the convolution, the figures docs/RESULTS.md quotes: `python -m bench.ratios`.

Every path of `common.LAYER_PATHS` asked for, forward + backward on the paper's shape (400 channels, 9
heads, batch 16, CPU), or with `--forward-only` the forward alone in eval mode under no_grad (where the
positional probabilities are cached), timed with torch.utils.benchmark.Timer (blocked_autorange medians)
in interleaved rounds (conv, path, conv, path, ...) so that a change in the machine's load hits both; the
ratio of each round is ours / conv of that round, and the table gives the median ratio over the rounds and
its range, and the ratio of the two fastest rounds (each side's minimum over the rounds: on a machine whose
neighbours come and go, what they add is only ever added time, so the minima are the least disturbed).
`--cpu-time` adds the same ratio in thread CPU time (time.thread_time, one thread only), which a shared,
loaded machine disturbs far less than wall time.

    python -m bench.ratios                                   # 2 threads, 16x16 and 32x32, 5 rounds
    python -m bench.ratios --threads 1 --cpu-time --paths separable-quadratic,hard-limit
    python -m bench.ratios --forward-only --paths separable-quadratic --sizes 32
    python -m bench.ratios --device cuda --precision bf16-autocast   # batch 100 (issue 5's GPU targets)

On CUDA the Timer synchronizes the device around every measurement, and the table adds each path's peak
memory over the timed pass (torch.cuda.max_memory_allocated, MiB).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from torch.utils.benchmark import Timer

from . import common
from .layers import PRECISIONS


def _pass(module, x, precision: str, forward_only: bool = False) -> None:
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16-autocast"):
        common.layer_pass(module, x, forward_only)


def _wall(module, x, min_run_time: float, precision: str = "float32", forward_only: bool = False) -> float:
    timer = Timer("f(m, x, p, o)", globals=dict(f=_pass, m=module, x=x, p=precision, o=forward_only),
                  num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def _cpu(module, x, forward_only: bool = False, repeats: int = 3) -> float:
    samples = []
    for _ in range(repeats):
        start = time.thread_time()
        _pass(module, x, "float32", forward_only)
        samples.append(time.thread_time() - start)
    return statistics.median(samples)


def measure(paths, sizes, rounds: int, min_run_time: float, cpu_time: bool, device: str = "cpu",
            precision: str = "float32", forward_only: bool = False) -> list[dict]:
    rows = []
    for size in sizes:
        x = common.layer_input(size, device, requires_grad=not forward_only)
        modules = {p: common.layer(p, size, device).train(not forward_only) for p in ("conv", *paths)}
        peaks = {}
        for p, module in modules.items():  # warm-up (caches, allocator, kernels), then the peak memory
            _pass(module, x, precision, forward_only)
            if device == "cuda":
                peaks[p] = common.peak_memory_mib(lambda: _pass(module, x, precision, forward_only), device)
        for path in paths:
            wall, cpu, conv_wall, ours_wall = [], [], [], []
            for _ in range(rounds):
                c = _wall(modules["conv"], x, min_run_time, precision, forward_only)
                o = _wall(modules[path], x, min_run_time, precision, forward_only)
                wall.append(o / c)
                conv_wall.append(c)
                ours_wall.append(o)
                if cpu_time:
                    cpu.append(_cpu(modules[path], x, forward_only) / _cpu(modules["conv"], x, forward_only))
            rows.append(dict(path=path, size=size, conv_ms=1e3 * statistics.median(conv_wall),
                             ms=1e3 * statistics.median(conv_wall) * statistics.median(wall),
                             ratio=statistics.median(wall), low=min(wall), high=max(wall),
                             fastest_ratio=min(ours_wall) / min(conv_wall),
                             cpu_ratio=statistics.median(cpu) if cpu else None,
                             peak_mib=peaks.get(path), conv_peak_mib=peaks.get("conv")))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ratios", description=__doc__.splitlines()[0])
    parser.add_argument("--paths", default="separable-quadratic,trained-quadratic,hard-limit,learned,dense-reference",
                        help="comma-separated ids of common.LAYER_PATHS (default: %(default)s)")
    parser.add_argument("--sizes", default="16,32", help="token grid sides (default: %(default)s)")
    parser.add_argument("--device", default="cpu", choices=common.DEVICES, help="(default: %(default)s)")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS,
                        help="bf16-autocast on CUDA only (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="CPU intra-op threads (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--min-run-time", type=float, default=1.0,
                        help="seconds per Timer.blocked_autorange (default: %(default)s)")
    parser.add_argument("--cpu-time", action="store_true", help="also report thread-CPU-time ratios (needs --threads 1)")
    parser.add_argument("--forward-only", action="store_true",
                        help="time the forward alone, in eval mode under no_grad (default: forward + backward)")
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
    if args.cpu_time and (args.threads != 1 or args.device != "cpu"):
        parser.error("--cpu-time measures one thread's CPU time: use it with --threads 1 on --device cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device on this machine")
    if args.precision == "bf16-autocast" and args.device != "cuda":
        parser.error("--precision bf16-autocast is measured on --device cuda only")
    os.environ["BENCH_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    where = (torch.cuda.get_device_name() if args.device == "cuda" else
             f"{platform.processor() or platform.machine()}  {os.cpu_count()} CPUs  threads {args.threads}")
    print(common.header(where, f"(batch {common.LAYER_BATCH[args.device]}, {common.CHANNELS} channels, "
                               f"{common.HEADS} heads, {args.precision}, {common.pass_name(args.forward_only)})"))
    rows = measure(paths, sizes, args.rounds, args.min_run_time, args.cpu_time, args.device, args.precision,
                   args.forward_only)
    header = "| path | tokens | conv (ms, median) | ours / conv (median of rounds) | range | fastest / fastest |"
    header += " CPU-time ratio |" if args.cpu_time else ""
    header += " ours (ms) | peak MiB (ours / conv) |" if args.device == "cuda" else ""
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for r in rows:
        line = (f"| {r['path']} | {r['size']}x{r['size']} | {r['conv_ms']:.2f} | {r['ratio']:.2f} | "
                f"{r['low']:.2f}-{r['high']:.2f} | {r['fastest_ratio']:.2f} |")
        if args.cpu_time:
            line += f" {r['cpu_ratio']:.2f} |"
        if args.device == "cuda":
            line += f" {r['ms']:.2f} | {r['peak_mib']:.0f} / {r['conv_peak_mib']:.0f} |"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
