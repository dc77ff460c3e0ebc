"""Dropout with a cheap mask on CPU: `dropout` (functional) and `Dropout` (an `nn.Dropout`).

PyTorch's CPU dropout draws its mask with `bernoulli_`, one serial call at about 5 ns an element here
(float mask, then a division and a product): on the paper's model it drew (16, 9, 256, 256) attention masks
in a sixth of the training step, on one thread whatever the thread count (docs/RESULTS.md). The generator
(Mersenne Twister) costs the same for every 32 bits it draws, so this one spends 15 bits an element: it
draws 64-bit words (`random_` on int64: 63 random bits each), clears one bit in every 16 and reads each word
as four 15-bit integers, uniform on [0, 2^15), and keeps an element when its integer reaches
round(p * 2^15): four elements for two 32-bit draws. The mask is applied as a product by its uint8 view
(`as_factor`); the backward keeps only the boolean mask.

The generator is serial (one core however many torch uses), so a large mask is drawn in parts of 2^20
words, each from its own Mersenne Twister seeded by a draw of the given generator, the parts shared among
`torch.get_num_threads()` Python threads (torch releases the GIL while it fills them): the paper's
attention mask at batch 100 is drawn in 20 ms instead of 38 on two cores. The parts and their seeds do
not depend on the thread count, so a seed gives the same mask on any machine.

The keep probability q = 1 - round(p * 2^15) / 2^15 (`keep_probability`) is within 2^-16 of 1 - p (exactly
1 - p when p is a multiple of 2^-15), and kept values are scaled by exactly 1 / q, so that the expectation
is the input exactly (nn.Dropout scales by 1 / (1 - p): for p = 0.1 the two factors differ by 7e-6 of
themselves). Same generator (torch's default, or the one given), so `torch.manual_seed` makes it
reproducible and a checkpoint of the RNG state resumes it.

CUDA tensors take `torch.nn.functional.dropout` (a fused kernel there). Under torch.compile the masks are
the compiler's random 15-bit integers against the same threshold (`keep_mask`): the same keep probability,
drawn by the code the compiler generates (the parts' Python threads do not trace).

`shape`: an output larger than the input, the input broadcast to it with an independent mask per
element (attention probabilities shared by a batch, one mask per image) without materialising the
broadcast input; the gradient is summed back to the input's shape.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import torch
from torch import nn

_BITS = 15  # bits of randomness an element: a 64-bit word of `random_` makes four elements
_FIFTEEN_BIT_PIECES = 0x7FFF7FFF7FFF7FFF  # clears the top bit of each 16-bit piece of a word
PART_WORDS = 1 << 20  # 64-bit words of a mask drawn from one seed (module docstring)
_pools: dict[int, ThreadPoolExecutor] = {}  # by worker count; emptied in a forked child (its threads are gone)
os.register_at_fork(after_in_child=_pools.clear)


def _check_p(p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"p must be a float in [0, 1], got {p!r}")
    return float(p)


def keep_probability(p: float) -> float:
    """The exact probability that `keep_mask(.., p)` keeps an element: 1 - round(p * 2^15) / 2^15."""
    return 1.0 - round(_check_p(p) * (1 << _BITS)) / (1 << _BITS)


def keep_mask(shape: Sequence[int], p: float, device: torch.device | str = "cpu",
              generator: torch.Generator | None = None) -> torch.Tensor:
    """A bool tensor of `shape`, each element True with probability `keep_probability(p)`, independently."""
    p = _check_p(p)
    if torch.compiler.is_compiling():
        # traced (torch.compile): the compiler's own random integers, at the same 15-bit resolution; the
        # part-by-part generators below are Python threads, which it cannot trace
        pieces = torch.randint(0, 1 << _BITS, tuple(shape), device=device, generator=generator, dtype=torch.int16)
        return pieces >= round(p * (1 << _BITS))
    count = math.prod(shape)
    words = _random_words(-(-count // 4), torch.device(device), generator)
    pieces = words.bitwise_and_(_FIFTEEN_BIT_PIECES).view(torch.int16)[:count]
    return (pieces >= round(p * (1 << _BITS))).view(tuple(shape))


def _random_words(count: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """`count` int64 words of 63 random bits: from `generator` itself up to `PART_WORDS` (or off the CPU),
    else in parts of `PART_WORDS`, each from a generator seeded by one draw of `generator`, filled on
    `torch.get_num_threads()` threads."""
    words = torch.empty(count, dtype=torch.int64, device=device)
    if device.type != "cpu" or count <= PART_WORDS:
        return words.random_(generator=generator)
    seeds = torch.empty(-(-count // PART_WORDS), dtype=torch.int64).random_(generator=generator).tolist()

    def fill(part: int) -> None:
        part_generator = torch.Generator()
        part_generator.manual_seed(seeds[part])
        words[part * PART_WORDS:(part + 1) * PART_WORDS].random_(generator=part_generator)

    workers = min(torch.get_num_threads(), len(seeds))
    if workers == 1:
        for part in range(len(seeds)):
            fill(part)
    else:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="dropout-mask")
        for _ in _pools[workers].map(fill, range(len(seeds))):  # re-raises a part's exception
            pass
    return words


def _broadcasts(shape: tuple, target: tuple) -> bool:
    return len(shape) <= len(target) and all(a in (1, b) for a, b in zip(reversed(shape), reversed(target)))


def as_factor(keep: torch.Tensor) -> torch.Tensor:
    """A bool mask as 0/1 factors to multiply by: its uint8 view (no copy). A float tensor times a uint8
    one is a single pass here; times a bool one, torch first copies the mask to float (2.3x the time on
    the attention masks), and `where` 4.6-5.5x (docs/RESULTS.md). While torch.compile traces, the mask
    itself: the compiler fuses its conversion into the product, and torch 2.11's inductor (the GPU
    image's) cannot lower a bool tensor viewed as uint8."""
    if torch.compiler.is_compiling():
        return keep
    return keep.view(torch.uint8)


class _MaskedScale(torch.autograd.Function):
    """x * keep * scale, x broadcast to keep's shape; backward g * keep * scale summed back to x's shape.
    A product, as in `nn.Dropout`: a dropped inf or nan gives nan."""

    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        ctx.x_shape = x.shape
        product = torch.mul(x, as_factor(keep))
        if torch.compiler.is_compiling():
            # out of place: under torch 2.11's torch.compile, this Function's output scaled in place came
            # back with a zero gradient (tests/test_dropout.py); eagerly in place, one buffer fewer
            return product * scale
        return product.mul_(scale)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return torch.mul(grad, as_factor(keep)).sum_to_size(ctx.x_shape).mul_(ctx.scale), None, None


def dropout(x: torch.Tensor, p: float, training: bool = True, *, shape: Sequence[int] | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero each element of x (broadcast to `shape` if given) with probability p and scale the others by
    1 / (1 - p); x itself (or its broadcast view) when not training or p == 0. On CPU the probability and
    the factor are `keep_probability(p)`'s (module docstring)."""
    p = _check_p(p)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    out_shape = tuple(x.shape) if shape is None else tuple(shape)
    if shape is not None and not _broadcasts(tuple(x.shape), out_shape):
        raise ValueError(f"shape {out_shape} is not one that x {tuple(x.shape)} broadcasts to")
    if not training or p == 0:
        return x if shape is None else x.expand(out_shape)
    if x.device.type != "cpu" or not x.is_floating_point():
        return nn.functional.dropout(x.expand(out_shape), p, training=True)
    keep = keep_probability(p)
    if keep == 0:  # p = 1, or within 2^-16 of it
        return x.expand(out_shape) * 0
    return _MaskedScale.apply(x, keep_mask(out_shape, p, x.device, generator), 1.0 / keep)


class Dropout(nn.Dropout):
    """`nn.Dropout` (same arguments and repr) with `dropout`'s mask on CPU."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__(_check_p(p), inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)
