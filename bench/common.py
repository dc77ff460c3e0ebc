"""Seeded, cached builders shared by the asv suites (bench/*.py) and the pytest-benchmark ratios.

Everything a benchmark times is built here, once per process, from fixed seeds: the same layer and input
on every run and every commit. Ids follow the project's: layer paths are spec statement ids where one
exists (`separable-quadratic`, `hard-limit`, `generalized-encoding`) and models are registry names
(`sa_quadratic`, `resnet18`).

The paper's layer shape (issue 5): 400 channels in and out, 9 heads, batch 16 on CPU (100 on CUDA),
16x16 and 32x32 tokens; the attention layer is `conv_to_attention` of the 3x3 convolution it is timed
against (alpha = 4 for the finite-alpha paths, inf for the hard limit).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import math
import os
import resource

import torch
from torch import nn

from impl.allocator import retain_freed_memory
from impl.attention import RelativeSelfAttention, gemm
from impl.convert import conv_to_attention
from impl.subnormals import flushing as subnormals_flushing
from impl.subnormals import flushing_requested, subnormals_flushed

# Every benchmark process keeps freed memory for re-use, as the trainer does (both sides of each
# comparison; ATTENTION_CNN_MALLOC=system measures glibc's defaults instead).
RETAINED_MEMORY = retain_freed_memory()

DEVICES = ("cpu", "cuda")
SIZES = (16, 32)
CHANNELS = 400
HEADS = 9
ALPHA = 4.0
SEED = 0
LAYER_BATCH = {"cpu": 16, "cuda": 100}
# `trained-quadratic`: head h's centre moved by h times this along both axes. Trained, each head's centre
# moves by its own gradient, so the heads' per-axis matrices no longer repeat (no `ProductMerge`): how far
# they moved changes neither the path nor its cost
TRAINED_SHIFT = 1e-3

LAYER_PATHS = (
    "conv",                  # nn.Conv2d(400, 400, 3, padding=1): the baseline
    "separable-quadratic",   # conv_to_attention(conv, alpha=4): separable quadratic heads (fused positional path)
    "fixed-encoding",        # the same with its encoding frozen (the merge alone trained): no probability gradients
    "trained-quadratic",     # the same once training has moved each head's centre: no shared matrices, head by head
    "hard-limit",            # conv_to_attention(conv, alpha=inf): shifts, run as the convolution they are
    "generalized-encoding",  # generalized quadratic heads: one dense (H, N, N) matrix (fused positional path)
    "learned",               # learned relative heads, no content: separable
    "learned-content",       # learned relative + content scores: SDPA with the positional float mask
    "dense-reference",       # the separable-quadratic layer computed plainly: attention_probabilities + einsum
    "content-reference",     # the learned-content layer computed plainly: (B, H, Nq, Nk) scores, softmax, einsums
)


def header(where: str, details: str) -> str:
    """The first line of every command-line table: date, torch, the machine (`where`, the CPU's vendor, its
    widest vector instructions as torch uses them, and the CPU GEMM backend), load, allocator, and whether
    subnormals are flushed (`impl.subnormals`: the training-step commands flush them, as the trainer does)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    malloc = "retained" if RETAINED_MEMORY else "system"
    subnormals = "flushed" if subnormals_flushing() else "kept"
    capability = torch.backends.cpu.get_cpu_capability()
    cpu = f"{gemm.cpu_vendor() or 'cpu'} {capability}, gemm {gemm.current_backend()}"
    return (f"# {datetime.date.today()}  torch {torch.__version__}  {where}  {cpu}  load average {load:.1f}  "
            f"malloc {malloc}  subnormals {subnormals}  {details}")


@contextlib.contextmanager
def intra_op_threads(count: int):
    """torch's intra-op threads set to `count` inside the block, restored after it (the command-line
    tables run inside the test process too)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def training_subnormals(parser: argparse.ArgumentParser) -> contextlib.AbstractContextManager:
    """For the training-step commands: subnormals flushed as the trainer flushes them (`impl.subnormals`),
    a bad $ATTENTION_CNN_SUBNORMALS refused as a usage error before anything runs."""
    try:
        flushing_requested()
    except ValueError as error:
        parser.error(str(error))
    return subnormals_flushed()


def threads() -> int:
    """Intra-op threads for CPU benchmarks: $BENCH_THREADS, else torch's default (all cores)."""
    value = os.environ.get("BENCH_THREADS")
    return int(value) if value else torch.get_num_threads()


def require_device(device: str) -> torch.device:
    """The device, or NotImplementedError (asv reports the case as skipped) when it is not here."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise NotImplementedError("no CUDA device on this machine")
    if device == "cpu":
        torch.set_num_threads(threads())
    return torch.device(device)


def sync(device) -> None:
    """Wait for queued GPU work (inside timed code, so a GPU timing includes it)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# -- layers ------------------------------------------------------------------------------------------
def _seeded(seed: int = SEED) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@functools.lru_cache(maxsize=None)
def base_conv(channels: int) -> nn.Conv2d:
    """The seeded 3x3 convolution every converted layer comes from (CPU, float32)."""
    _seeded()
    return nn.Conv2d(channels, channels, 3, padding=1)


def dense_reference(layer: RelativeSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """The plain computation: dense positional probabilities (H, Nq, Nk) recomputed at every call, every
    head's average of the padded tokens as one einsum, then the merge as a second."""
    probs = layer.attention_probabilities(tuple(x.shape[2:]), x.dtype, x.device)
    tokens = layer.geometry.pad(x).flatten(2)                                     # (B, C, Nk)
    y = torch.einsum("hqk,bck->bhcq", probs, tokens).flatten(1, 2)                # (B, H*C, Nq)
    out = torch.einsum("oc,bcq->boq", layer.merge.weight, y) + layer.merge.bias[:, None]
    return out.reshape(*out.shape[:2], *layer.geometry.output_shape(x.shape[2:]))


def content_reference(layer: RelativeSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Content + positional attention computed plainly, the math the fused kernels (SDPA, FlexAttention)
    replace: the (B, H, Nq, Nk) scores q.k / sqrt(d) + positional logits materialised, a softmax, every
    head's average of the padded tokens as one einsum, the merge as a second."""
    spatial = tuple(x.shape[2:])
    padded = layer.geometry.pad(x)
    queries, keys = layer._queries_keys(padded, spatial)                          # (B, H, Nq | Nk, d)
    scores = queries @ keys.transpose(-1, -2) / math.sqrt(queries.shape[-1])
    positional = layer.positional(spatial, scores.dtype, x.device)
    if positional is not None:
        scores = scores + positional[1]
    y = torch.einsum("bhqk,bck->bhcq", scores.softmax(-1), padded.flatten(2).to(scores.dtype)).flatten(1, 2)
    out = torch.einsum("oc,bcq->boq", layer.merge.weight.to(y.dtype), y) + layer.merge.bias.to(y.dtype)[:, None]
    return out.reshape(*out.shape[:2], *layer.geometry.output_shape(spatial))


class DenseReference(nn.Module):
    """A layer computed by one of the plain formulas above (`dense_reference`, `content_reference`)."""

    def __init__(self, layer: RelativeSelfAttention, formula=dense_reference) -> None:
        super().__init__()
        self.layer = layer
        self.formula = formula

    def forward(self, x):
        return self.formula(self.layer, x)


@functools.lru_cache(maxsize=None)
def _cpu_layer(path: str, size: int, channels: int, heads: int) -> nn.Module:
    if path not in LAYER_PATHS:
        raise ValueError(f"path must be one of {LAYER_PATHS}, got {path!r}")
    conv = base_conv(channels)
    _seeded(SEED + 1)
    if path == "conv":
        return conv
    if path in ("separable-quadratic", "fixed-encoding", "trained-quadratic", "dense-reference"):
        layer = conv_to_attention(conv, alpha=ALPHA)
        layer.encoding.requires_grad_(path != "fixed-encoding")
        if path == "trained-quadratic":  # as after a first optimizer step: each head's centre its own
            with torch.no_grad():
                centre = layer.encoding.centre
                centre += TRAINED_SHIFT * torch.arange(centre.shape[0], dtype=centre.dtype)[:, None]
        return DenseReference(layer) if path == "dense-reference" else layer
    if path == "hard-limit":
        return conv_to_attention(conv, alpha=math.inf)
    if path == "generalized-encoding":
        return RelativeSelfAttention(channels, heads=heads, encoding="generalized")
    layer = RelativeSelfAttention(channels, heads=heads, encoding="learned", grid_size=(size, size),
                                  content=path in ("learned-content", "content-reference"))
    return DenseReference(layer, content_reference) if path == "content-reference" else layer


CPU_SMALL_ONLY = ("generalized-encoding", "learned-content", "dense-reference", "content-reference")
"""Paths whose cost grows with N^2 (dense attention): on CPU the asv layer suite runs them at 16x16 only, to
keep a --quick run of the whole suite short (LayerRatio and test_ratios still time dense-reference at 32x32)."""


def layer(path: str, size: int, device: str, *, channels: int | None = None, heads: int | None = None) -> nn.Module:
    """The module timed for `path` at `size` x `size` tokens, in training mode, on `device`."""
    module = _cpu_layer(path, size, CHANNELS if channels is None else channels, HEADS if heads is None else heads)
    return module.to(require_device(device)).train()


@functools.lru_cache(maxsize=None)
def _cpu_input(batch: int, channels: int, size: int) -> torch.Tensor:
    generator = _seeded(SEED + 2)
    return torch.randn(batch, channels, size, size, generator=generator)


def layer_input(size: int, device: str, *, batch: int | None = None, channels: int | None = None,
                requires_grad: bool = False) -> torch.Tensor:
    """A seeded N(0, 1) input (batch, channels, size, size)."""
    dev = require_device(device)
    batch = LAYER_BATCH[dev.type] if batch is None else batch
    x = _cpu_input(batch, CHANNELS if channels is None else channels, size).to(dev)
    return x.detach().requires_grad_(requires_grad)


def forward_backward(module: nn.Module, x: torch.Tensor) -> None:
    """One forward and backward (loss = sum of the output); gradients are dropped first."""
    for p in module.parameters():
        p.grad = None
    x.grad = None
    module(x).sum().backward()


def pass_name(forward_only: bool) -> str:
    """What `layer_pass` times, for the tables' headers."""
    return "forward (eval, no_grad)" if forward_only else "forward + backward"


def layer_pass(module: nn.Module, x: torch.Tensor, forward_only: bool = False) -> None:
    """The pass the layer benchmarks time: `forward_backward`, or with forward_only the forward alone under
    no_grad (put the module in eval mode first, where the positional probabilities are cached)."""
    if forward_only:
        with torch.no_grad():
            module(x)
    else:
        forward_backward(module, x)


# -- models ------------------------------------------------------------------------------------------
# (run, registered model, epochs): the paper's training runs (../shared/paper.md). The pruned run trains the
# generalized model after pruning its degenerate heads, so its time here (the unpruned model's) is an upper
# bound.
PAPER_RUNS = (
    ("quadratic", "sa_quadratic", 300),
    ("quadratic-generalized", "sa_generalized", 300),
    ("quadratic-generalized-pruned", "sa_generalized", 100),
    ("many-heads", "sa_many_heads", 300),
    ("learned", "sa_learned", 300),
    ("learned + content", "sa_learned_content", 300),
    ("resnet", "resnet18", 300),
)
# every model behind those runs, each once: the asv suite's training steps
MODELS = tuple(dict.fromkeys(m for _, m, _ in PAPER_RUNS))
MODEL_BATCH = {"cpu": 2, "cuda": 100}


@functools.lru_cache(maxsize=None)
def _cpu_model(name: str) -> nn.Module:
    from impl.models import build

    _seeded(SEED + 3)
    return build(name)


def model(name: str, device: str) -> nn.Module:
    """The seeded registered model `name` (the asv suite times `MODELS`), in training mode, on `device`."""
    from impl.models import list_models

    names = list_models()
    if name not in names:
        raise ValueError(f"name must be one of {tuple(names)}, got {name!r}")
    return _cpu_model(name).to(require_device(device)).train()


def model_batch(device: str, batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded CIFAR-shaped batch (images N(0, 1), labels uniform over 10 classes)."""
    dev = require_device(device)
    batch = MODEL_BATCH[dev.type] if batch is None else batch
    generator = _seeded(SEED + 4)
    images = torch.randn(batch, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (batch,), generator=generator)
    return images.to(dev), labels.to(dev)


def training_step(net: nn.Module, optimizer: torch.optim.Optimizer, images, labels) -> None:
    """forward, cross-entropy, backward, SGD step (the trainer's loop without schedule and logging)."""
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(net(images), labels).backward()
    optimizer.step()


def sgd(net: nn.Module) -> torch.optim.Optimizer:
    """The paper's optimiser: SGD, lr 0.1, momentum 0.9, weight decay 1e-4."""
    return torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


def step_flops(net: nn.Module, images, labels) -> int:
    """FLOPs of one training step (forward + backward) as FlopCounterMode counts them with the layers' own
    entry points registered (`impl.flops`; the optimizer update is not counted)."""
    from impl.flops import flop_counter

    net.zero_grad(set_to_none=True)
    with flop_counter() as counter:
        nn.functional.cross_entropy(net(images), labels).backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops()


# -- memory ------------------------------------------------------------------------------------------
def rss_mib() -> float:
    """Resident set size now (MiB), from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """The process's peak resident set size so far (MiB), from resource.getrusage."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory_mib(fn, device: str) -> float:
    """Peak memory that `fn()` adds: on CUDA torch.cuda.max_memory_allocated over the call; on CPU the
    process's peak RSS after the call minus its RSS before (a bound from below when an earlier call in
    this process already set a higher peak: run it in a fresh process, as asv does)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    before = rss_mib()
    fn()
    return max(0.0, peak_rss_mib() - before)
