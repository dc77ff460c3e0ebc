"""FLOP rate of a training step, `sa_quadratic` against `resnet18`, side by side: `python -m bench.flop_rate`.

Issue 5's model target: the paper's attention model reaches at least the FLOP/s of the CIFAR ResNet18 on the
same machine. Each round times one training step (forward, cross-entropy, backward, SGD) of each model on
the same seeded CIFAR-shaped batch, interleaved; FLOPs are FlopCounterMode's count of one forward +
backward (`common.step_flops`, the optimizer update not counted). Prints the median over rounds of
GFLOP/s and images/s per model, and the ratio of the FLOP rates (attention / ResNet) per round.

    python -m bench.flop_rate                       # CPU, batch 16, 2 threads, 3 rounds
    python -m bench.flop_rate --device cuda --batch 100
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from . import common

MODELS = ("sa_quadratic", "resnet18")


def _step_seconds(net, optimizer, images, labels, device) -> float:
    common.sync(device)
    start = time.perf_counter()
    common.training_step(net, optimizer, images, labels)
    common.sync(device)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flop_rate", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=common.DEVICES)
    parser.add_argument("--batch", type=int, default=16, help="images per step (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="CPU intra-op threads (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.rounds < 1 or args.threads < 1:
        parser.error("--batch, --rounds and --threads must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device on this machine")
    with common.training_subnormals(parser), common.intra_op_threads(args.threads):  # as the trainer does
        _table(args)
    return 0


def _table(args) -> None:
    images, labels = common.model_batch(args.device, args.batch)
    nets = {m: common.model(m, args.device) for m in MODELS}
    optimizers = {m: common.sgd(net) for m, net in nets.items()}
    flops = {m: common.step_flops(net, images, labels) for m, net in nets.items()}
    seconds = {m: [] for m in MODELS}
    for m in MODELS:  # warm-up
        _step_seconds(nets[m], optimizers[m], images, labels, args.device)
    for _ in range(args.rounds):
        for m in MODELS:
            seconds[m].append(_step_seconds(nets[m], optimizers[m], images, labels, args.device))
    print(common.header(f"{args.device}  threads {args.threads}", f"batch {args.batch}  rounds {args.rounds}"))
    print("| model | GFLOP per step | step (s, median) | GFLOP/s | images/s |\n|---|---|---|---|---|")
    for m in MODELS:
        step = statistics.median(seconds[m])
        print(f"| {m} | {flops[m] / 1e9:.1f} | {step:.3f} | {flops[m] / step / 1e9:.1f} | {args.batch / step:.1f} |")
    ratios = [(flops[MODELS[0]] / a) / (flops[MODELS[1]] / b) for a, b in zip(seconds[MODELS[0]], seconds[MODELS[1]])]
    print(f"\nFLOP rate {MODELS[0]} / {MODELS[1]}: median {statistics.median(ratios):.2f} "
          f"(rounds {min(ratios):.2f}-{max(ratios):.2f}; target >= 1)")


if __name__ == "__main__":
    raise SystemExit(main())
