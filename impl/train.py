"""Train one of the paper's runs: `python -m impl.train --preset NAME [options]`.

    python -m impl.train --preset quadratic --data digits --epochs 3 --out runs/q      # CPU, seconds
    python -m impl.train --preset quadratic --data digits --epochs 5 --out runs/q --resume
    python -m impl.train --preset quadratic --data cifar10 --device cuda --amp --compile --out runs/q
    torchrun --nproc_per_node 4 -m impl.train --preset resnet --device cuda --out runs/r  # DDP, 4 GPUs

The run directory (`--out`) receives, from rank 0 only:

    config.json              the resolved Config below (rewritten when --resume extends `epochs`)
    metrics.csv              epoch,train_loss,train_acc,test_loss,test_acc,lr,images_per_s (one row per epoch)
    centres.csv              step,epoch,layer,head,centre_row,centre_col: every quadratic head's attention
                             centre at step 0, 8 times in the first epoch and after every epoch
    checkpoints/last.pt      everything needed to resume (impl.checkpoint), after every epoch and every
                             --checkpoint-every steps
    checkpoints/best.pt      the same, for the best test accuracy so far (never replaced by a worse one)
    tensorboard/             TensorBoard events (when torch.utils.tensorboard imports)
    figures/*.png            impl.figures, drawn at the end

The loop is one function, `train`, in a fixed order: learning rate from the schedule, forward, loss check,
backward, clip, step, log; at the end of each epoch evaluate, write the metrics row, checkpoint. On the CPU
a run is deterministic: the same seed gives bitwise the same weights, also across a kill and `--resume`
(the sampler's order of an epoch is a function of (seed, epoch) and the resumed run skips the batches
already trained; the RNG states restore the dropout and augmentation draws). That holds for
`--workers 0` (the default); with worker processes the order is still restored but augmentation draws are not.

`--resume` continues from checkpoints/last.pt with the saved config; only the keys in RESUMABLE may change
(more `--epochs`, another device, ...). The schedule is a function of the step and of the run's total steps,
so extending `--epochs` stretches the cosine from the resumed step on (the learning rate rises again after a
finished cosine); resuming with the same `--epochs` continues exactly.

Under `torchrun --nproc_per_node N` the same command trains with DistributedDataParallel: each rank takes
every N-th sample of the epoch's order, so the global batch (`--batch-size`) and its samples are the same as
in a single-process run; for the attention models (LayerNorm) the gradient average is the same up to float
rounding. BatchNorm (the ResNet) normalises each rank's share of the batch, as torch's DDP does, and the
checkpoint holds rank 0's running statistics: a DDP ResNet run is not the single-process one.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import pickle
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from impl import checkpoint, data, models, presets
from impl.allocator import retain_freed_memory
from impl.checkpoint import CheckpointError
from impl.schedule import SCHEDULES, build_schedule
from impl.subnormals import flushing_requested, subnormals_flushed

METRICS_HEADER = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_per_s")
CENTRES_HEADER = ("step", "epoch", "layer", "head", "centre_row", "centre_col")
CENTRE_POINTS_IN_FIRST_EPOCH = 8


# -----------------------------------------------------------------------------------------------------------
# Config
# -----------------------------------------------------------------------------------------------------------
@dataclass
class Config:
    """The resolved configuration of a run (written to config.json; read back by --resume)."""

    # -- what is trained: fixed for the life of a run (--resume refuses to change these) --
    preset: str = "quadratic"
    model: str = "sa_quadratic"              # impl.models name
    model_overrides: dict = field(default_factory=dict)  # build(model, **model_overrides) rebuilds it
    data: str = "cifar10"                    # impl.data name
    augment: bool = True                     # the data set's training augmentation (cifar10: crop + flip)
    seed: int = 42
    init_from: str | None = None             # run directory whose best weights start this run
    pruned_heads: list | None = None         # [[layer, [heads]], ...] removed after loading init_from
    # -- optimisation: fixed as well --
    batch_size: int = 100                    # global batch, split evenly across ranks
    lr: float = 0.1                          # peak learning rate
    momentum: float = 0.9                    # SGD momentum
    weight_decay: float = 1e-4               # not on the parameters in model.no_weight_decay()
    schedule: str = "cosine"                 # "cosine": warm-up then cosine; "step": decay at milestones
    warmup_fraction: float = 0.05            # cosine: share of all steps spent warming up
    milestones: list = field(default_factory=lambda: [80, 150, 250])  # step: 0-based epochs that decay
    gamma: float = 0.1                       # step: factor at each milestone
    grad_clip: float = 0.0                   # max gradient norm; 0 disables clipping
    # -- length: --resume may extend it --
    epochs: int = 300
    # -- how it runs: --resume may change these --
    out: str = "runs/run"
    device: str = "cpu"                      # "cpu" or "cuda" (cuda:LOCAL_RANK under torchrun)
    amp: bool = False                        # bfloat16 autocast
    compile: bool = False                    # torch.compile the model
    workers: int = 0                         # DataLoader worker processes (0: exact resume)
    data_dir: str | None = None              # cifar10 files
    download: bool = False                   # fetch cifar10 when missing
    checkpoint_every: int = 0                # also checkpoint every N steps; 0: at epoch ends only
    world_size: int = 1                      # processes (torchrun); set by the launcher
    figures: bool = True                     # draw impl.figures at the end


# Keys --resume may change; every other key must match the saved run.
RESUMABLE = ("epochs", "out", "device", "amp", "compile", "workers", "data_dir", "download", "checkpoint_every",
             "world_size", "figures")


# -----------------------------------------------------------------------------------------------------------
# Command line
# -----------------------------------------------------------------------------------------------------------
def _number(kind: type, *, zero: bool):
    """An argparse type: an int (kind=int) or a finite float, > 0, or >= 0 when `zero` is allowed."""
    wanted = f"{'an int' if kind is int else 'a finite number'} {'>= 0' if zero else '> 0'}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    return parse


_positive_int, _non_negative_int = _number(int, zero=False), _number(int, zero=True)
SEED_LIMIT = 2**32  # the run adds epochs, steps and ranks to its seed; torch's seeds stop at 2**64


def _seed(text: str) -> int:
    value = _non_negative_int(text)
    if value >= SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be an int in [0, 2**32), got {text!r}")
    return value
_positive_float, _non_negative_float = _number(float, zero=False), _number(float, zero=True)


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m impl.train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train one of the paper's runs (SGD, momentum 0.9, weight decay 1e-4, batch 100, seed 42).",
        epilog="presets:\n" + presets.describe() + "\n\nOn --data digits a preset trains the tiny_* version of "
               "its model; on cifar10 and synthetic the paper's.\nUnder `torchrun --nproc_per_node N` the same "
               "command trains with DistributedDataParallel, --batch-size split across the N processes.")
    parser.add_argument("--preset", choices=list(presets.PRESETS), metavar="NAME",
                        help=f"the run to train, one of: {', '.join(presets.PRESETS)} (see below)")
    parser.add_argument("--data", choices=data.DATASETS, help="data set (default cifar10)")
    parser.add_argument("--model", help="train this impl.models name instead of the preset's")
    parser.add_argument("--epochs", type=_positive_int, help="epochs (default: the preset's)")
    parser.add_argument("--batch-size", type=_positive_int, help="global batch size (default 100)")
    parser.add_argument("--lr", type=_positive_float, help="peak learning rate (default: the preset's)")
    parser.add_argument("--grad-clip", type=_non_negative_float, help="clip the gradient norm (default 0: off)")
    parser.add_argument("--seed", type=_seed, help="random seed in [0, 2**32) (default 42)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default cpu")
    parser.add_argument("--amp", action="store_true", default=None, help="bfloat16 autocast")
    parser.add_argument("--compile", action="store_true", default=None,
                        help="torch.compile the model (for CUDA: on the CPU the eager paths, oneDNN's GEMMs and "
                             "the fused attention merges, train the attention models 2x faster)")
    parser.add_argument("--workers", type=_non_negative_int, help="DataLoader workers (default 0)")
    parser.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                        help="train without the data set's augmentation")
    parser.add_argument("--data-dir", help="cifar10: directory holding cifar-10-batches-py")
    parser.add_argument("--download", action="store_true", default=None, help="cifar10: download if missing")
    parser.add_argument("--out", help="run directory (default runs/PRESET-DATA-seedSEED)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--init-from", metavar="RUN_DIR", help="start from the best weights of this run")
    parser.add_argument("--checkpoint-every", type=_non_negative_int, metavar="STEPS",
                        help="also checkpoint every STEPS optimizer steps (default 0: epoch ends only)")
    # Hidden, for tests and quick experiments.
    parser.add_argument("--model-override", type=_override, action="append", default=[], metavar="KEY=VALUE",
                        help=argparse.SUPPRESS)
    parser.add_argument("--no-figures", action="store_true", help=argparse.SUPPRESS)
    return parser


# Command-line options that set a Config field of the same name when given.
OPTION_FIELDS = ("preset", "data", "augment", "model", "epochs", "batch_size", "lr", "grad_clip", "seed", "device",
                 "amp", "compile", "workers", "data_dir", "download", "init_from", "checkpoint_every")


def resolve_config(args: argparse.Namespace, parser: argparse.ArgumentParser, world_size: int) -> Config:
    """The run's Config: from the preset and the options, or (--resume) from RUN/config.json and the options."""
    given = {name: getattr(args, name) for name in OPTION_FIELDS if getattr(args, name) is not None}
    if args.no_figures:
        given["figures"] = False
    if args.resume:
        return _resumed_config(args, parser, given, world_size)

    if args.preset is None:
        parser.error("--preset is required (unless --resume continues a run)")
    preset = presets.get(args.preset)
    cfg = Config(preset=preset.name, lr=preset.lr, epochs=preset.epochs, batch_size=preset.batch_size,
                 momentum=preset.momentum, weight_decay=preset.weight_decay, schedule=preset.schedule,
                 warmup_fraction=preset.warmup_fraction, milestones=list(preset.milestones),
                 gamma=preset.gamma, world_size=world_size)
    if preset.needs_init and args.init_from is None:
        parser.error(f"--preset {preset.name} starts from a trained run: give --init-from RUN_DIR")
    if args.init_from is not None:
        # The model, its overrides and the data come from the run we start from.
        source = _read_run_config(Path(args.init_from), parser, "--init-from")
        for key in ("model", "data"):
            if key in given and given[key] != source[key]:
                parser.error(f"--{key} {given[key]!r} differs from the --init-from run's {source[key]!r} "
                             f"({Path(args.init_from) / 'config.json'})")
        cfg.model, cfg.data, cfg.model_overrides = source["model"], source["data"], dict(source["model_overrides"])
    for key, value in given.items():
        setattr(cfg, key, value)
    if args.init_from is None and args.model is None:
        cfg.model = preset.model_for(cfg.data)
    if cfg.model not in models.list_models():
        parser.error(f"--model {cfg.model!r}: unknown; models: {', '.join(models.list_models())}")
    if args.init_from is None:
        cfg.model_overrides = data_overrides(cfg.model, cfg.data)
    if args.model_override:
        allowed = models.registry.allowed_overrides(cfg.model)
        for key, value in args.model_override:
            if key not in allowed:
                parser.error(f"--model-override {key}: model {cfg.model!r} takes {', '.join(allowed)}")
            cfg.model_overrides[key] = value
    try:  # check the overrides' values now: building on the meta device allocates nothing
        with torch.device("meta"):
            model = build_model(cfg)
    except (TypeError, ValueError) as error:
        parser.error(f"model {cfg.model} with overrides {cfg.model_overrides}: {error}")
    conflict = data_conflict(model, cfg.data)
    if conflict is not None:  # the model must take the data's images and labels, before anything is written
        keys, problem = conflict
        overridden = [f"{key}={json.dumps(value)}" for key, value in args.model_override if key in keys]
        if overridden:
            parser.error(f"--model-override {', '.join(overridden)} does not fit --data {cfg.data}: {problem}")
        parser.error(f"model {cfg.model} with overrides {cfg.model_overrides} does not fit --data {cfg.data}: "
                     f"{problem}")
    cfg.out = args.out or f"runs/{cfg.preset}-{cfg.data}-seed{cfg.seed}"
    _check_common(cfg, parser)
    files = RunFiles(cfg.out)
    if files.config.exists() or files.last.exists():
        parser.error(f"--out {cfg.out} already holds a run ({files.config}); pass --resume to continue it "
                     f"or choose another --out")
    return cfg


def _resumed_config(args, parser, given: dict, world_size: int) -> Config:
    if args.out is None:
        parser.error("--resume needs --out RUN_DIR: the run to continue")
    files = RunFiles(args.out)
    saved = _read_run_config(files.root, parser, "--resume")
    unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(Config)})
    if unknown:
        parser.error(f"--resume: {files.config} has keys this trainer does not know: {unknown}")
    cfg = Config(**saved)
    requested = dict(given)
    if args.model_override:
        requested["model_overrides"] = {**cfg.model_overrides, **dict(args.model_override)}
    mismatches = checkpoint.config_differences({k: saved.get(k) for k in requested}, requested, ignore=RESUMABLE)
    if mismatches:
        parser.error(f"--resume: {files.config} was written by an incompatible run (saved -> requested): "
                     + "; ".join(mismatches) + ". Only " + ", ".join(RESUMABLE) + " may change.")
    for key, value in given.items():
        setattr(cfg, key, value)
    cfg.out, cfg.world_size, cfg.figures = str(args.out), world_size, not args.no_figures
    _check_common(cfg, parser)
    return cfg


def _read_run_config(run: Path, parser, option: str) -> dict:
    path = run / "config.json"
    if not path.is_file():
        parser.error(f"{option}: {path} does not exist: {run} is not a run directory")
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        parser.error(f"{option}: {path} cannot be read: {error}")
    missing = [key for key in ("preset", "model", "model_overrides", "data", "epochs", "seed") if key not in saved]
    if not isinstance(saved, dict) or missing:
        parser.error(f"{option}: {path} is not a run's config (missing {missing})")
    return saved


def _check_common(cfg: Config, parser) -> None:
    if cfg.batch_size % cfg.world_size:
        parser.error(f"--batch-size {cfg.batch_size} must be divisible by the number of processes "
                     f"({cfg.world_size})")
    if cfg.data != "cifar10" and (cfg.data_dir is not None or cfg.download):
        parser.error(f"--data-dir and --download apply to --data cifar10 only, not {cfg.data}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here (torch.cuda.is_available() is False); "
                     "use --device cpu")
    if cfg.schedule not in SCHEDULES:
        parser.error(f"schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
    # before the data and the model are built (minutes for the paper's): where the run will be written
    existing = Path(cfg.out).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        parser.error(f"--out {cfg.out}: {existing} is not a writable directory")


def data_conflict(model: nn.Module, data_name: str) -> tuple[tuple[str, ...], str] | None:
    """None if `model` takes data set `data_name`'s images and labels, else (the override keys at fault, what
    is wrong): in_channels must equal the images' channels, num_classes cover the labels, and the images'
    size go through the model (image_size, downsample)."""
    info = data.info(data_name)
    channels = getattr(model, "in_channels", info.channels)
    if channels != info.channels:
        return ("in_channels",), (f"in_channels={channels}, but its images have {info.channels} channel(s); "
                                  f"in_channels must be {info.channels}")
    classes = getattr(model, "num_classes", info.num_classes)
    if classes < info.num_classes:
        return ("num_classes",), (f"num_classes={classes}, but its labels run from 0 to {info.num_classes - 1}; "
                                  f"num_classes must be >= {info.num_classes}")
    if hasattr(model, "check_image_size"):
        try:
            model.check_image_size(info.image_size)
        except ValueError as error:
            return ("image_size", "downsample"), (f"its images are {info.image_size[0]}x{info.image_size[1]}: "
                                                  f"{error}")
    return None


def data_overrides(model_name: str, data_name: str) -> dict:
    """The build() overrides that fit `model_name` to data set `data_name` (channels, classes, size, ...)."""
    info = data.info(data_name)
    fitted = dict(in_channels=info.channels, num_classes=info.num_classes, image_size=list(info.image_size),
                  downsample=info.downsample)
    allowed = models.registry.allowed_overrides(model_name)
    return {key: value for key, value in fitted.items() if key in allowed}


# -----------------------------------------------------------------------------------------------------------
# Pieces the loop uses
# -----------------------------------------------------------------------------------------------------------
@dataclass
class Distributed:
    """This process's place in the job (world_size 1 without torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def distributed_from_environment() -> Distributed:
    """torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them this is a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    return Distributed(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world_size)


class EpochSampler(DistributedSampler):
    """DistributedSampler (shuffled, epoch order seeded by seed + epoch) that can start at a given batch.

    Rank r takes positions r, r + N, r + 2N, ... of the epoch's permutation, so batch k of the ranks together
    is positions [k B, (k + 1) B) of it: the same samples as batch k of a single-process run of batch B.
    """

    def __init__(self, dataset, *, local_batch: int, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.local_batch = local_batch
        self.start = 0

    def set_position(self, epoch: int, batch: int) -> None:
        """Iterate epoch `epoch`'s order from its batch `batch` on."""
        self.set_epoch(epoch)
        self.start = batch * self.local_batch

    def __iter__(self):
        return islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


class RunFiles:
    """Paths of a run directory and the append-only logs in it."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.config = self.root / "config.json"
        self.metrics = self.root / "metrics.csv"
        self.centres = self.root / "centres.csv"
        self.checkpoints = self.root / "checkpoints"
        self.last = self.checkpoints / "last.pt"
        self.best = self.checkpoints / "best.pt"
        self.tensorboard = self.root / "tensorboard"
        self.figures = self.root / "figures"

    def write_config(self, cfg: Config) -> None:
        text = json.dumps(asdict(cfg), indent=2) + "\n"
        checkpoint.atomic_write_bytes(self.config, lambda file: file.write(text.encode()))

    def append(self, path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
        new = not path.exists() or path.stat().st_size == 0
        with open(path, "a", newline="") as file:
            writer = csv.writer(file)
            if new:
                writer.writerow(header)
            writer.writerows(rows)

    def truncate_logs(self, step: int, epochs_done: int) -> None:
        """Drop the log rows written after the checkpoint a resumed run starts from (and torn last lines)."""
        for path, header, keep in ((self.metrics, METRICS_HEADER, lambda row: int(row[0]) <= epochs_done),
                                   (self.centres, CENTRES_HEADER, lambda row: int(row[0]) <= step)):
            if not path.exists():
                continue
            kept = []
            for row in list(csv.reader(path.read_text().splitlines()))[1:]:
                try:
                    if len(row) == len(header) and all(row) and keep(row):
                        kept.append(row)
                except ValueError:  # a line torn by a kill
                    pass
            lines = [",".join(header)] + [",".join(row) for row in kept]
            text = "\n".join(lines) + "\n"
            checkpoint.atomic_write_bytes(path, lambda file: file.write(text.encode()))


def build_model(cfg: Config) -> nn.Module:
    return models.build(cfg.model, **cfg.model_overrides)


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.SGD:
    """SGD with weight decay on every parameter except those named by model.no_weight_decay()."""
    named = dict(model.named_parameters())
    exempt = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    unknown = sorted(exempt - set(named))
    if unknown:
        raise ValueError(f"no_weight_decay() names parameters the model does not have: {unknown}")
    groups = [{"params": [p for n, p in named.items() if n not in exempt], "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in named.items() if n in exempt], "weight_decay": 0.0}]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=cfg.lr, momentum=cfg.momentum)


def attention_centres(model: nn.Module) -> list[tuple[int, int, float, float]]:
    """(layer, head, centre_row, centre_col) of every quadratic / generalized head of a 2-d model."""
    rows = []
    layers = model.attention_layers() if hasattr(model, "attention_layers") else []
    for layer_index, layer in enumerate(layers):
        centre = getattr(layer.encoding, "centre", None)
        if centre is None or centre.shape[-1] != 2:
            continue
        for head, (row, col) in enumerate(centre.detach().float().cpu().tolist()):
            rows.append((layer_index, head, row, col))
    return rows


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, autocast, dist: Distributed):
    """(mean loss, accuracy) over the loader's samples on all ranks together."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, seen
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast:
            logits = model(x)
        totals[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
        totals[1] += (logits.argmax(1) == y).sum()
        totals[2] += y.numel()
    if dist.enabled:
        torch_dist.all_reduce(totals)
    model.train()
    loss_sum, correct, seen = totals.tolist()
    return loss_sum / seen, correct / seen


def gather_rng(dist: Distributed) -> list[dict]:
    """Every rank's RNG states, in rank order (a collective: every rank must call it)."""
    mine = checkpoint.capture_rng()
    if not dist.enabled:
        return [mine]
    everyone = [None] * dist.world_size
    torch_dist.all_gather_object(everyone, mine)
    return everyone


class RunError(Exception):
    """The requested run cannot start (missing data, a batch larger than the data set, ...)."""


class NonFiniteLoss(RuntimeError):
    """Training diverged: a non-finite loss or non-finite weights."""


# -----------------------------------------------------------------------------------------------------------
# Training
# -----------------------------------------------------------------------------------------------------------
def train(cfg: Config, dist: Distributed, *, resume: bool = False) -> None:
    files = RunFiles(cfg.out)
    say = print if dist.main else (lambda *a, **k: None)

    # -- the checkpoint to resume from: read and checked before anything else happens ----------------------
    state = None
    restart = resume and not files.last.is_file()  # killed before its first checkpoint: nothing to keep
    if restart:
        say(f"{cfg.out} has no checkpoint yet ({files.last}): starting the run from its beginning")
        resume = False
    if resume:
        state = checkpoint.load(files.last)
        checkpoint.check_config(state["config"], asdict(cfg), source=files.last, ignore=RESUMABLE)
        done = (state["position"]["epoch"], state["position"]["batch"])
        if done[0] > cfg.epochs or (done[0] == cfg.epochs and done[1]):
            raise CheckpointError(f"{files.last} has trained {done[0]} epochs and {done[1]} batches: more than "
                                  f"--epochs {cfg.epochs}")

    # -- device, seeding, determinism ----------------------------------------------------------------------
    device = torch.device(f"cuda:{dist.local_rank}" if cfg.device == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")  # TF32 matmuls: speed over bitwise reproducibility on GPUs
        torch.backends.cudnn.benchmark = True
    else:
        torch.use_deterministic_algorithms(True, warn_only=True)
    checkpoint.seed_everything(cfg.seed)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.amp else nullcontext()

    # -- data ----------------------------------------------------------------------------------------------
    cifar_files = dict(data_dir=cfg.data_dir, download=cfg.download) if cfg.data == "cifar10" else {}
    try:
        train_set = data.load(cfg.data, "train", augment=cfg.augment, **cifar_files)
        test_set = data.load(cfg.data, "test", augment=False, **cifar_files)
    except (OSError, ValueError) as error:
        raise RunError(f"--data {cfg.data}: {error}") from None
    except (EOFError, pickle.UnpicklingError) as error:  # torchvision names no file
        raise RunError(f"--data {cfg.data}: a data file under --data-dir {cfg.data_dir} is truncated or corrupt "
                       f"({error}): delete it and download it again (--download)") from None
    local_batch = cfg.batch_size // dist.world_size
    steps_per_epoch = len(train_set) // cfg.batch_size  # full global batches only
    if steps_per_epoch == 0:
        raise RunError(f"--batch-size {cfg.batch_size} exceeds the {len(train_set)} training images")
    sampler = EpochSampler(train_set, local_batch=local_batch, num_replicas=dist.world_size, rank=dist.rank,
                           seed=cfg.seed)
    # The loader draws its workers' base seed from `loader_rng`, not from the global RNG the checkpoint holds.
    loader_rng = torch.Generator()
    pin = device.type == "cuda"
    train_loader = DataLoader(train_set, batch_size=local_batch, sampler=sampler, drop_last=True,
                              num_workers=cfg.workers, pin_memory=pin, generator=loader_rng,
                              persistent_workers=False)
    test_shard = Subset(test_set, range(dist.rank, len(test_set), dist.world_size))
    test_loader = DataLoader(test_shard, batch_size=local_batch, num_workers=cfg.workers, pin_memory=pin,
                             generator=torch.Generator())

    # -- model, optimizer, schedule ------------------------------------------------------------------------
    model = build_model(cfg)
    conflict = data_conflict(model, cfg.data)
    if conflict is not None:  # before the run directory is touched
        raise RunError(f"model {cfg.model} with overrides {cfg.model_overrides} does not fit --data {cfg.data}: "
                       f"{conflict[1]}")
    if state is not None:
        checkpoint.load_model_weights(model, state["model"], source=files.last)
    elif cfg.init_from is not None:
        source = RunFiles(cfg.init_from)
        path = source.best if source.best.exists() else source.last
        checkpoint.load_model_weights(model, checkpoint.load(path)["model"], source=path)
        if cfg.pruned_heads is None:
            cfg.pruned_heads = [[name, heads] for name, heads in models.pruning.prune_degenerate_heads(model)]
            say(f"started from {path}; pruned heads (layer, indices): {cfg.pruned_heads}")
    model.to(device)
    optimizer = build_optimizer(model, cfg)  # after loading: pruning replaces parameters
    schedule = build_schedule(cfg.schedule, base_lr=cfg.lr, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs,
                              warmup_fraction=cfg.warmup_fraction, milestones=cfg.milestones, gamma=cfg.gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # bfloat16 needs no loss scaling; kept for fp16

    # -- resume or start -----------------------------------------------------------------------------------
    step, start_epoch, start_batch = 0, 0, 0
    best = {"metric": "test_acc", "value": -math.inf, "epoch": 0}
    progress = {"loss": 0.0, "correct": 0.0, "seen": 0.0, "seconds": 0.0}  # running sums of this epoch
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step = state["step"]
        start_epoch, start_batch = state["position"]["epoch"], state["position"]["batch"]
        progress = dict(state["progress"])
        if files.best.exists():  # the best file on disk, not the value last.pt remembers, is the bar to beat
            best = dict(checkpoint.load(files.best, mmap=True)["best"])
        if len(state["rng"]) == dist.world_size:  # last: building the model above drew from the RNGs
            checkpoint.restore_rng(state["rng"][dist.rank])
        else:
            say(f"warning: {files.last} holds RNG states of {len(state['rng'])} processes, this run has "
                f"{dist.world_size}: dropout and augmentation draws will differ from an uninterrupted run")
            checkpoint.seed_everything(cfg.seed + step + dist.rank)
        say(f"resuming {cfg.out} at epoch {start_epoch + 1}, batch {start_batch} (step {step})")
    elif dist.rank > 0:
        checkpoint.seed_everything(cfg.seed + dist.rank)  # each rank its own dropout / augmentation draws
    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if dist.enabled:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    # -- run directory (rank 0 writes, everyone else only reads) ------------------------------------------
    writer = None
    if dist.main:
        files.checkpoints.mkdir(parents=True, exist_ok=True)
        checkpoint.remove_temporaries(files.checkpoints)  # leftovers of a save a kill interrupted
        files.write_config(cfg)
        if resume or restart:  # a restart keeps none of the rows (the initial centres are written again)
            files.truncate_logs(step if resume else -1, start_epoch)
        writer = _tensorboard(files, purge_step=step if resume or restart else None)
        if step == 0:
            files.append(files.centres, CENTRES_HEADER, [(0, 0.0, *row) for row in attention_centres(raw_model)])
    first_epoch_points = {steps_per_epoch * k // CENTRE_POINTS_IN_FIRST_EPOCH
                          for k in range(1, CENTRE_POINTS_IN_FIRST_EPOCH)} - {0}

    saved_step = step if resume else None

    def diverged(what: str) -> NonFiniteLoss:
        kept = f"the last good checkpoint {files.last} (step {saved_step}) is kept" if saved_step is not None \
            else "no checkpoint had been written"
        return NonFiniteLoss(f"{what}; stopped: {kept}")

    def save(path: Path, epoch: int, batch: int, progress: dict) -> None:
        """Checkpoint: the next batch to train is batch `batch` of epoch `epoch` (a collective call)."""
        nonlocal saved_step
        if not all(bool(torch.isfinite(p).all()) for p in raw_model.parameters()):
            raise diverged(f"non-finite weights after step {step}")
        rng = gather_rng(dist)
        saved_step = step
        if dist.main:
            checkpoint.save(path, {
                "format": checkpoint.FORMAT, "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": schedule.state_dict(), "scaler": scaler.state_dict(), "rng": rng,
                "position": {"epoch": epoch, "batch": batch}, "epoch": epoch, "step": step,
                "config": asdict(cfg), "best": best, "progress": progress})

    # -- the loop ------------------------------------------------------------------------------------------
    say(f"training {cfg.model} on {cfg.data}: {sum(p.numel() for p in raw_model.parameters()):,} parameters, "
        f"{steps_per_epoch} steps/epoch, {cfg.epochs} epochs, {dist.world_size} process(es) on {device}")
    lr = schedule(step)
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_position(epoch, start_batch)
        loader_rng.manual_seed(cfg.seed + epoch)
        model.train()
        bar = tqdm(total=steps_per_epoch, initial=start_batch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   unit="batch", disable=None if dist.main else True, leave=False, dynamic_ncols=True)
        started = time.perf_counter()
        for batch, (x, y) in enumerate(train_loader, start=start_batch):
            if batch >= steps_per_epoch:
                break
            # learning rate of this step
            lr = schedule(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # forward
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast:
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            # loss check, before the step can spoil the weights (all ranks stop together)
            stats = torch.stack([loss.detach() * y.numel(), (logits.argmax(1) == y).sum().float(),
                                 torch.tensor(float(y.numel()), device=device)]).double()
            if dist.enabled:
                torch_dist.all_reduce(stats)
            loss_sum, correct, seen = stats.tolist()
            if not math.isfinite(loss_sum):
                raise diverged(f"non-finite training loss ({loss_sum / seen}) at step {step + 1} (epoch "
                               f"{epoch + 1}, batch {batch + 1})")
            # backward, clip, step
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            # log
            progress["loss"] += loss_sum
            progress["correct"] += correct
            progress["seen"] += seen
            elapsed = progress["seconds"] + time.perf_counter() - started
            bar.update()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{progress['correct'] / progress['seen']:.3f}",
                            img_s=f"{progress['seen'] / max(elapsed, 1e-9):.0f}", lr=f"{lr:.3g}")
            if writer is not None:
                writer.add_scalar("train/loss_step", loss_sum / seen, step)
                writer.add_scalar("train/lr", lr, step)
            if dist.main and epoch == 0 and step in first_epoch_points:
                files.append(files.centres, CENTRES_HEADER,
                             [(step, round(step / steps_per_epoch, 4), *row) for row in attention_centres(raw_model)])
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and batch + 1 < steps_per_epoch:
                save(files.last, epoch, batch + 1, {**progress, "seconds": elapsed})
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = progress["seconds"] + time.perf_counter() - started

        # -- end of epoch: evaluate, log, checkpoint -------------------------------------------------------
        test_loss, test_acc = evaluate(model, test_loader, device, autocast, dist)
        if not math.isfinite(test_loss):
            raise diverged(f"non-finite test loss ({test_loss}) after epoch {epoch + 1} (step {step})")
        row = (epoch + 1, progress["loss"] / progress["seen"], progress["correct"] / progress["seen"], test_loss,
               test_acc, lr, progress["seen"] / max(seconds, 1e-9))
        improved = test_acc > best["value"]
        if improved:
            best = {"metric": "test_acc", "value": test_acc, "epoch": epoch + 1}
        progress = {"loss": 0.0, "correct": 0.0, "seen": 0.0, "seconds": 0.0}
        start_batch = 0
        if dist.main:
            files.append(files.metrics, METRICS_HEADER, [tuple(_fmt(v) for v in row)])
            files.append(files.centres, CENTRES_HEADER,
                         [(step, epoch + 1, *c) for c in attention_centres(raw_model)])
        # best first: a kill between the two saves then leaves last.pt at the previous epoch, whose resumed
        # run re-reaches this epoch's value and finds it in best.pt (last first would lose this best)
        if improved:
            save(files.best, epoch + 1, 0, progress)
        save(files.last, epoch + 1, 0, progress)
        if writer is not None:
            for name, value in zip(METRICS_HEADER[1:], row[1:]):
                writer.add_scalar(f"epoch/{name}", value, epoch + 1)
            writer.flush()
        say(f"epoch {epoch + 1}/{cfg.epochs}: train loss {row[1]:.4f} acc {row[2]:.4f} | test loss {test_loss:.4f} "
            f"acc {test_acc:.4f} | lr {lr:.4g} | {row[6]:.0f} img/s" + (" | best" if improved else ""))

    if writer is not None:
        writer.close()
    if dist.main and cfg.figures:
        from impl import figures
        written = figures.draw_run(cfg.out)
        say(f"figures: {', '.join(str(p) for p in written)}")


def _fmt(value) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def _tensorboard(files: RunFiles, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(files.tensorboard), purge_step=purge_step)


# -----------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    dist = distributed_from_environment()
    cfg = resolve_config(args, parser, dist.world_size)
    if cfg.device == "cpu":
        try:
            retain_freed_memory()  # big activations re-used, not faulted in afresh every step (impl/allocator.py)
            flushing_requested()
        except ValueError as error:  # a bad ATTENTION_CNN_MALLOC or ATTENTION_CNN_SUBNORMALS
            parser.error(str(error))
    if dist.enabled:
        torch_dist.init_process_group("nccl" if cfg.device == "cuda" else "gloo")
        if cfg.device == "cuda":
            torch.cuda.set_device(dist.local_rank)
        torch_dist.barrier()  # every rank has checked the run directory before rank 0 writes to it
    try:
        # on CPU, subnormal gradients flushed to zero: a confident classifier's tiny probabilities otherwise
        # slow whole steps twofold on Intel CPUs (impl/subnormals.py)
        with subnormals_flushed() if cfg.device == "cpu" else nullcontext():
            train(cfg, dist, resume=args.resume)
    except (CheckpointError, RunError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLoss as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    finally:
        if dist.enabled and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
