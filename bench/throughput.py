"""Training throughput of every model of the paper's runs, and the projected wall time of each run.

`python -m bench.throughput --device cuda [--batch 100] [--precisions float32,bf16-autocast]`: for every
model behind a run of the paper (`common.PAPER_RUNS`, ../shared/paper.md), one training step (forward,
cross-entropy, backward, SGD with the paper's settings) on a seeded CIFAR-shaped batch, timed over `--steps`
steps after a warm-up, in interleaved rounds (every model and precision once per round, so a change in the
machine's load hits all of them); prints the median images/s of each model and precision, then each run's
projected wall time: epochs x 50,000 CIFAR-10 training images / images/s (data loading and evaluation not
included). Issue 5's GPU target: `sa_quadratic` >= 4,000 images/s in bf16 autocast on one H100.

    python -m bench.throughput --device cuda                 # batch 100, float32 and bf16 autocast
    python -m bench.throughput --threads 2 --batch 16        # CPU, float32
    python -m bench.throughput --device cuda --compile --models sa_quadratic,resnet18   # torch.compile'd

`--compile` times each model through `torch.compile` (inductor; each model and precision compiles in the
warm-up, not timed), as `python -m impl.train --compile` trains it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from . import common
from .layers import PRECISIONS

CIFAR10_TRAIN_IMAGES = 50_000


def steps_per_second(net, optimizer, images, labels, precision: str, steps: int) -> float:
    """Training steps per second over `steps` steps (the device synchronised before and after)."""
    device = images.device

    def step():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16-autocast"):
            common.training_step(net, optimizer, images, labels)

    common.sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    common.sync(device)
    return steps / (time.perf_counter() - start)


def measure(models, precisions, device: str, batch: int, rounds: int, steps: int,
            compile_backend: str | None = None) -> dict:
    """{(model, precision): [images/s per round]}, rounds interleaved over models and precisions; with
    `compile_backend`, each model through torch.compile(backend=compile_backend)."""
    images, labels = common.model_batch(device, batch)
    nets = {m: common.model(m, device) for m in models}
    optimizers = {m: common.sgd(net) for m, net in nets.items()}
    if compile_backend is not None:
        nets = {m: torch.compile(net, backend=compile_backend) for m, net in nets.items()}
    for m in models:  # warm-up: kernels, allocator, autotuning
        for p in precisions:
            steps_per_second(nets[m], optimizers[m], images, labels, p, 1)
    rates = {(m, p): [] for m in models for p in precisions}
    for _ in range(rounds):
        for m in models:
            for p in precisions:
                rates[m, p].append(batch * steps_per_second(nets[m], optimizers[m], images, labels, p, steps))
    return rates


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=common.DEVICES, help="(default: %(default)s)")
    parser.add_argument("--batch", type=int, default=None,
                        help=f"images per step (default: {common.MODEL_BATCH['cuda']} on CUDA, "
                             f"{common.MODEL_BATCH['cpu']} on CPU)")
    parser.add_argument("--precisions", default=None,
                        help="comma-separated, of float32 and bf16-autocast (CUDA only) (default: both on "
                             "CUDA, float32 on CPU)")
    parser.add_argument("--models", default=None,
                        help="comma-separated registered names (default: every model of common.PAPER_RUNS)")
    parser.add_argument("--threads", type=int, default=2, help="CPU intra-op threads (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round (default: %(default)s)")
    parser.add_argument("--compile", action="store_true", help="time the models through torch.compile (inductor)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device on this machine")
    batch = common.MODEL_BATCH[args.device] if args.batch is None else args.batch
    precisions = (PRECISIONS if args.device == "cuda" else ("float32",)) if args.precisions is None \
        else tuple(p for p in args.precisions.split(",") if p)
    for p in precisions:
        if p not in PRECISIONS:
            parser.error(f"--precisions: {p!r} is not one of {', '.join(PRECISIONS)}")
        if p == "bf16-autocast" and args.device != "cuda":
            parser.error("--precisions: bf16-autocast is measured on --device cuda only")
    run_models = list(common.MODELS)
    models = run_models if args.models is None else [m for m in args.models.split(",") if m]
    for m in models:
        if m not in run_models:
            parser.error(f"--models: {m!r} is not one of {', '.join(run_models)}")
    if batch < 1 or args.threads < 1 or args.rounds < 1 or args.steps < 1 or not precisions or not models:
        parser.error("--batch, --threads, --rounds and --steps must be >= 1; --models and --precisions non-empty")
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, threads {args.threads}"
    mode = "  torch.compile (inductor)" if args.compile else ""
    with common.training_subnormals(parser), common.intra_op_threads(args.threads):  # as the trainer does
        rates = measure(models, precisions, args.device, batch, args.rounds, args.steps,
                        "inductor" if args.compile else None)
        header = common.header(where, f"batch {batch}  rounds {args.rounds} x {args.steps} steps{mode}")
    print(header)
    print("| model | precision | images/s (median) | range |\n|---|---|---|---|")
    for (m, p), values in rates.items():
        print(f"| {m} | {p} | {statistics.median(values):.1f} | {min(values):.1f}-{max(values):.1f} |")
    print("\n| run | model | epochs | " + " | ".join(f"hours ({p})" for p in precisions) + " |")
    print("|---|---|---|" + "---|" * len(precisions))
    for run, m, epochs in common.PAPER_RUNS:
        if m in models:
            hours = [epochs * CIFAR10_TRAIN_IMAGES / statistics.median(rates[m, p]) / 3600 for p in precisions]
            print(f"| {run} | {m} | {epochs} | " + " | ".join(f"{h:.2f}" for h in hours) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
