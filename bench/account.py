"""Where a layer's or a training step's time goes, by wall clock: `python -m bench.account`.

torch.profiler moves time on this project's CPU (it once put the convolution's pass at 548 ms against 345
unprofiled, and made one small batched matmul read 2 ms a call where it takes 0.47), so this accounts
without it: it wraps the functions of the attention path (the fused autograd functions of
`impl.attention`'s `positional_merge`, `product_merge` and `dense_merge`, the helpers they call, and the
dropout masks) with a wall clock, runs the passes, and prints per function and pass: calls, inclusive ms,
exclusive ms (its wrapped callees' time taken out) and that as a fraction of the whole pass. Whatever no
wrapped function covers is one line, "outside".

    python -m bench.account                                   # separable-quadratic, 16x16, vs the conv
    python -m bench.account --layer learned --size 32 --threads 1
    python -m bench.account --model sa_quadratic --batch 16   # one training step (forward, backward, SGD)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from dataclasses import dataclass, field

from impl import dropout
from impl.attention import axis_passes, dense_merge, positional_merge, product_merge

from . import common

# (owner, attribute): what is timed. The autograd functions' forward and backward are looked up on the
# class at every call, so wrapping the class attributes times them; each helper is wrapped in every module
# that calls it by its own name (the same label, summed).
HELPERS = ("project", "project_add", "project_backward", "transposed_matmul", "transposed_matmul_backward", "axis_apply",
           "axis_contract", "_per_image_apply", "channels_last", "fill_bias", "keep_mask")
WRAPPED = (
    (positional_merge.PositionalMerge, "forward"), (positional_merge.PositionalMerge, "backward"),
    (product_merge.ProductMerge, "forward"), (product_merge.ProductMerge, "backward"),
    (dense_merge.DenseMerge, "forward"), (dense_merge.DenseMerge, "backward"),
    (positional_merge._QuerySide, "matrix"), (positional_merge._QuerySide, "add_image_grads"),
    *((module, name) for module in (positional_merge, product_merge, axis_passes, dense_merge, dropout)
      for name in HELPERS if name in vars(module)),
)


@dataclass
class Account:
    """Seconds and calls per label, inclusive and exclusive of wrapped callees."""
    calls: dict = field(default_factory=dict)
    inclusive: dict = field(default_factory=dict)
    exclusive: dict = field(default_factory=dict)
    _callees: list = field(default_factory=list)  # a stack: callee seconds of each open call

    def timed(self, label: str, fn):
        def wrapper(*args, **kwargs):
            self._callees.append(0.0)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                callees = self._callees.pop()
                if self._callees:
                    self._callees[-1] += elapsed
                self.calls[label] = self.calls.get(label, 0) + 1
                self.inclusive[label] = self.inclusive.get(label, 0.0) + elapsed
                self.exclusive[label] = self.exclusive.get(label, 0.0) + elapsed - callees
        return wrapper


def _label(owner, name: str) -> str:
    return f"{owner.__name__.rsplit('.', 1)[-1]}.{name}" if isinstance(owner, type) else name


@contextlib.contextmanager
def accounting():
    """Install the wall-clock wrappers on `WRAPPED` (restored on exit, whatever happens); yields the Account."""
    account = Account()
    originals = [(owner, name, owner.__dict__[name]) for owner, name in WRAPPED]
    try:
        for owner, name, original in originals:
            fn = original.__func__ if isinstance(original, staticmethod) else original
            wrapped = account.timed(_label(owner, name), fn)
            setattr(owner, name, staticmethod(wrapped) if isinstance(original, staticmethod) else wrapped)
        yield account
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def _timed_passes(run, rounds: int) -> list[float]:
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return seconds


def table(account: Account, rounds: int, whole_seconds: float, unit_name: str) -> str:
    """Markdown rows per label, slowest (exclusive) first, per pass; `whole_seconds` is one pass."""
    lines = [f"| function | calls / {unit_name} | inclusive ms | exclusive ms | exclusive / {unit_name} |",
             "|---|---|---|---|---|"]
    for label in sorted(account.exclusive, key=lambda k: -account.exclusive[k]):
        own = account.exclusive[label] / rounds
        lines.append(f"| {label} | {account.calls[label] / rounds:g} | {account.inclusive[label] / rounds * 1e3:.1f} "
                     f"| {own * 1e3:.1f} | {own / whole_seconds:.3f} |")
    outside = whole_seconds - sum(account.exclusive.values()) / rounds
    lines.append(f"| outside | | | {outside * 1e3:.1f} | {outside / whole_seconds:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.account", description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--layer", default=None,
                      help=f"a layer path: one of {', '.join(common.LAYER_PATHS[1:])} (default: separable-quadratic)")
    what.add_argument("--model", default=None, help="a registered model: one training step (e.g. sa_quadratic)")
    parser.add_argument("--size", type=int, default=16, help="layer: token grid side (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=16, help="images (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes after a warm-up (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.model is None and args.layer is None:
        args.layer = "separable-quadratic"
    if args.layer is not None and args.layer not in common.LAYER_PATHS[1:]:
        parser.error(f"--layer: {args.layer!r} is not one of {', '.join(common.LAYER_PATHS[1:])}")
    if args.size < 3 or args.batch < 1 or args.threads < 1 or args.rounds < 1:
        parser.error("--size must be >= 3, --batch, --threads and --rounds >= 1")
    with common.intra_op_threads(args.threads):
        if args.model is not None:
            _model(args)
        else:
            _layer(args)
    return 0


def _layer(args) -> None:
    x = common.layer_input(args.size, "cpu", batch=args.batch, requires_grad=True)
    conv, layer = common.layer("conv", args.size, "cpu"), common.layer(args.layer, args.size, "cpu")
    for module in (conv, layer):  # warm-up: caches, allocator, oneDNN primitives
        common.forward_backward(module, x)
    conv_seconds, layer_seconds = [], []
    with accounting() as account:
        for _ in range(args.rounds):  # interleaved, so that a change of load hits both
            conv_seconds += _timed_passes(lambda: common.forward_backward(conv, x), 1)
            layer_seconds += _timed_passes(lambda: common.forward_backward(layer, x), 1)
    conv_pass, layer_pass = statistics.mean(conv_seconds), statistics.mean(layer_seconds)
    print(common.header(f"cpu  threads {args.threads}", f"({args.layer}, {args.size}x{args.size} tokens, batch "
                        f"{args.batch}, forward + backward, {args.rounds} passes, wall clock)"))
    print(f"\n{args.layer} {layer_pass * 1e3:.1f} ms a pass = {layer_pass / conv_pass:.2f} x conv "
          f"({conv_pass * 1e3:.1f} ms)\n")
    print(table(account, args.rounds, layer_pass, "pass"))


def _model(args) -> None:
    from impl.models import list_models

    if args.model not in list_models():
        raise SystemExit(f"--model: {args.model!r} is not a registered model (python -m impl.models --list)")
    images, labels = common.model_batch("cpu", args.batch)
    net = common.model(args.model, "cpu")
    optimizer = common.sgd(net)
    step = lambda: common.training_step(net, optimizer, images, labels)  # noqa: E731
    step()  # warm-up
    with accounting() as account:
        seconds = _timed_passes(step, args.rounds)
    print(common.header(f"cpu  threads {args.threads}", f"({args.model}, batch {args.batch}, one training step, "
                        f"{args.rounds} steps, wall clock)"))
    print(f"\n{args.model} {statistics.mean(seconds):.3f} s a step\n")
    print(table(account, args.rounds, statistics.mean(seconds), "step"))


if __name__ == "__main__":
    raise SystemExit(main())
