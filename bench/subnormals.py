"""What subnormal numbers cost this CPU, and what the layers' probability floor saves: `python -m bench.subnormals`.

Far keys of a quadratic head get probabilities exp(-alpha d^2) among float32's subnormal numbers (below
1.2e-38), and small probabilities times small gradients give subnormal products; on Intel CPUs every
operation with a subnormal operand or result takes a microcode assist (AMD's cores pay little). Times,
side by side in interleaved rounds (medians, ms; 2 threads):
- the mixing pass of a converted 3x3 layer (alpha 4, 16x16 tokens): one row matrix applied to a 1,200-wide
  chunk of 16 images (`axis_passes.axis_apply`), with the plain softmax's matrix and with the layer's
  (`encodings.attention_softmax`, probabilities below eps^2 dropped);
- an attention product of the paper's model (an image's 2,304 x 256 probabilities by a 256 x 400
  gradient): probabilities of 1e-30 (normal) by gradients of 1e-9, whose products are subnormal, against
  the same with the probabilities above the floor's reach (x 1e20).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from impl.attention.encodings import attention_softmax
from impl.attention.axis_passes import axis_apply

from . import common


def _ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.subnormals", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="CPU intra-op threads (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.threads < 1:
        parser.error("--rounds and --threads must be positive")
    with common.intra_op_threads(args.threads):
        _table(args.rounds, args.threads)
    return 0


def _table(rounds: int, threads: int) -> None:
    generator = torch.Generator().manual_seed(common.SEED)
    offsets = torch.arange(18.0)[None, :] - torch.arange(1.0, 17.0)[:, None]   # 16 queries, keys padded by 1
    logits = -common.ALPHA * (offsets - 1) ** 2                                 # a head centred one key right
    plain, floored = logits.softmax(-1)[:, 1:-1].contiguous(), attention_softmax(logits)[:, 1:-1].contiguous()
    tokens = torch.randn(16, 16, 16, 1200, generator=generator)
    small = torch.rand(2304, 256, generator=generator) * 1e-30
    grads = torch.randn(256, 400, generator=generator) * 1e-9
    cases = {
        "mixing pass, plain softmax": lambda: axis_apply(plain, tokens, 0),
        "mixing pass, the layer's probabilities": lambda: axis_apply(floored, tokens, 0),
        "attention product, subnormal products": lambda: small @ grads,
        "attention product, normal products": lambda: (small * 1e20) @ grads,
    }
    tiny = torch.finfo(torch.float32).tiny
    times = {name: [] for name in cases}
    for fn in cases.values():  # warm-up
        fn()
    for _ in range(rounds):
        for name, fn in cases.items():
            times[name].append(_ms(fn))
    print(common.header(f"threads {threads}", f"rounds {rounds}"))
    print(f"subnormal entries: plain softmax {int(((plain > 0) & (plain < tiny)).sum())}, the layer's "
          f"{int(((floored > 0) & (floored < tiny)).sum())} (of {plain.numel()})\n")
    print("| case | ms (median) | range |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f}-{max(values):.2f} |")


if __name__ == "__main__":
    raise SystemExit(main())
