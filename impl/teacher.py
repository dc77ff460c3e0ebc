"""The teacher experiment: nine quadratic heads learn to be a 3x3 convolution, and find its nine shifts.

    python -m impl.teacher [--seed S] [--steps N] [--json PATH] [--out DIR] [--quiet]

A random 3x3 convolution (the *teacher*, `impl.data.photos.conv_teacher`) maps crops of real photographs
(`impl.data.photos.photo_crops`) to targets. One `RelativeSelfAttention` layer with 9 isotropic quadratic
heads, centres drawn at random as in the paper (N(0, 2^2) per coordinate) and the teacher's geometry (zero
padding 1, query margins 1: `impl.convert.conv_geometry`), is trained to reproduce the targets. Lemma 1 says
it can do so exactly once its heads sit one on each kernel shift in {-1, 0, 1}^2 with alpha -> inf; here
the heads have to *find* those shifts. Nothing in the training loop reads the teacher's kernel: the loop
sees crops and targets, and the reset rule reads only the layer's own state.

Why a plain recipe fails, and what this recipe does about it
------------------------------------------------------------
Photographs are smooth: neighbouring pixels are strongly correlated. Once the heads are sharp, *any* nine
heads inside the 3x3 window whose mixing of the nine pixels is invertible represent the convolution exactly
(the merge weights undo the mixing), so the plain loss does not prefer the grid: plain Adam parks heads
between pixels (alpha grows, the error still falls below a few %), and a head that wandered off or sits on
a shift already taken stays there. Three changes make the grid the one place to go:

1. **A penalty on the merge weights** (ridge, lam * ||W_merge||_F^2, scaled by the targets' mean square so
   that lam is unit-free). Among the configurations that fit the targets, one head per shift needs the
   smallest merge weights (a head mixing several pixels needs the inverse of the mixing, which is larger),
   so the penalty turns "some invertible mixing" into "one head per pixel". The penalty is held during the
   search and switched off (cosine) before the end so that the final fit is exact.
2. **A floor and a cap on alpha, per head** (alpha = width^2 / 2 is learned; after each step the width is
   projected onto [floor, cap]). During the search (until `search_until` of the run) alpha stays at most
   `alpha_search` and its floor rises linearly from 0 to `alpha_search` over `ramp` of the run counted from
   the head's birth (start or reset): fresh heads look wide, then must commit to a neighbourhood. Then the
   cap is lifted and the floor of every head rises (cosine) to `alpha_end` at `end_at`, where the softmax
   is one-hot to within ~exp(-alpha_end/2) and the layer can match the teacher to well under 1%. A head
   cannot collapse to alpha -> 0 (attending everywhere). A head reset late follows a shorter schedule of
   its own (`young_search`, `young_sharpen`).
3. **Resets** (every `reset_every` steps in [`reset_from`, `reset_until`] of the run). A head is reset when
   it is *dead* (the norm of its block of merge weights is below `dead_ratio` times the largest head's: it
   contributes nothing, e.g. it wandered outside the window and the penalty switched it off), a
   *duplicate* (its centre is within `duplicate_distance` of another head's: of the pair, the one with the
   smaller merge block is reset), or *parked* (older than `parked_age`, still (moved less than
   `parked_still` since the previous check) and more than `parked_distance` per axis from every integer
   offset; only the worst parked head at a time, since its neighbours often move once it is gone).
   Reset = a fresh centre in the largest gap between the other heads (the farthest from them of
   `reset_candidates` uniform points in their bounding box, as k-means re-seeds an empty cluster), the
   paper's initial width (alpha ~ 0.5), a zero merge block (so the fit is not disturbed), its Adam moments
   cleared (first moment 0, second moment the mean over the other heads) and its alpha floor restarted.
   The rule reads only the layer's centres, widths and merge weights, never the teacher.

Optimiser: Adam with one learning rate per parameter group (centres, widths, merge), cosine-decayed from
`decay_from` of the run to `final_lr_fraction` of it (`merge_final_lr_fraction` for the merge weights,
the slowest to fit); mini-batches of `batch` crops drawn with replacement from `train_crops` fixed
training crops; the loss is the mean squared error divided by the targets' mean square. The reported
error is ||attn(x) - conv(x)|| / ||conv(x)|| on `test_crops` held-out crops. The
defaults below are the recipe measured in docs/RESULTS.md ("Teacher experiment").
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from impl.attention import RelativeSelfAttention
from impl.convert import conv_geometry, kernel_shifts
from impl.data.photos import conv_teacher, photo_crops


@dataclass
class TeacherConfig:
    """Everything one run depends on; the defaults are the documented recipe."""

    seed: int = 0
    # data: crops of the photographs; the teacher and the crops are seeded from `seed`
    size: int = 16                  # crop side, pixels
    train_crops: int = 1024         # fixed training crops (mini-batches are drawn from them)
    test_crops: int = 256           # held-out crops for the reported error
    out_channels: int = 8           # teacher's output channels
    # layer: 9 quadratic heads, one per tap of the 3x3 teacher
    centre_std: float = 2.0         # initial centres ~ N(0, centre_std^2) (the paper's init)
    # optimisation
    steps: int = 3000
    batch: int = 128
    lr_centre: float = 0.05
    lr_width: float = 0.02
    lr_merge: float = 0.02
    decay_from: float = 0.85        # cosine decay of every learning rate from this fraction of the run...
    final_lr_fraction: float = 0.2  # ...down to this fraction of it at the end (centres and widths)...
    merge_final_lr_fraction: float = 0.5  # ...and this one (merge weights: the slowest to fit)
    # ridge penalty on the merge weights (unit-free: relative to the targets' mean square), held until
    # `penalty_from` of the run, then cosine to 0 at `penalty_until`
    penalty: float = 1e-2
    penalty_from: float = 0.75
    penalty_until: float = 0.85
    # alpha: the search phase holds every head in [floor, alpha_search], the floor of a head rising from 0
    # to alpha_search over `ramp` of the run after its birth; then the cap is lifted and the floor of every
    # head rises (cosine) to alpha_end while the penalty falls (cosine) to 0
    alpha_search: float = 3.0
    ramp: float = 0.1
    search_until: float = 0.55
    alpha_end: float = 10.0
    end_at: float = 0.7
    young_search: float = 0.1       # a head reset late searches this long (fraction of the run)...
    young_sharpen: float = 0.1      # ...and sharpens over this long, whatever the run's schedule says
    # resets
    reset_every: int = 100
    reset_from: float = 0.1
    reset_until: float = 0.6
    reset_grace: float = 0.1        # heads younger than this (fraction of the run) are never reset
    dead_ratio: float = 0.2
    duplicate_distance: float = 0.5
    parked_distance: float = 0.35   # a head this far (per axis) from every key offset is parked...
    parked_age: float = 0.2         # ...when it is at least this old (fraction of the run)...
    parked_still: float = 0.1       # ...and has moved less than this since the previous check
    reset_candidates: int = 64      # a reset head goes to the emptiest of this many random points...
    strong_ratio: float = 0.5       # ...in the box of the heads whose merge block is this large (of the max)
    # logging
    record_every: int = 10          # centres are recorded every this many steps (the trajectory figure)


def kernel_grid(kernel: int = 3) -> torch.Tensor:
    """The (kernel^2, 2) key - query shifts a `kernel` x `kernel` convolution reads, row-major."""
    shifts = kernel_shifts(kernel, 1)
    return torch.tensor(list(itertools.product(shifts, shifts)), dtype=torch.float32)


def match_heads(centres: torch.Tensor, grid: torch.Tensor) -> dict:
    """Each head's nearest shift, its distance to it, and whether the heads cover the shifts one-to-one."""
    distance = torch.cdist(centres.double(), grid.double())  # (heads, shifts)
    nearest_distance, nearest = distance.min(1)
    matched = len(centres) == len(grid) and len(set(nearest.tolist())) == len(grid)
    return {"nearest_shifts": grid[nearest].tolist(), "distances": nearest_distance.tolist(),
            "max_centre_distance": float(nearest_distance.max()), "matched": bool(matched)}


# -- schedules -----------------------------------------------------------------------------------------
def cosine(t: float, start: float, end: float) -> float:
    """1 before `start`, 0 after `end`, a half cosine in between."""
    if t <= start:
        return 1.0
    if t >= end:
        return 0.0
    return 0.5 * (1 + math.cos(math.pi * (t - start) / (end - start)))


def _alpha_schedule(cfg: TeacherConfig, clock: torch.Tensor, search_until: float, sharpen_until: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(floor, cap) of alpha along one clock (fraction of the run): a floor ramping from 0 to alpha_search
    over `ramp` under the cap alpha_search until `search_until`, then no cap and a floor rising (cosine)
    to alpha_end at `sharpen_until`."""
    rise = ((clock - search_until) / (sharpen_until - search_until)).clamp(0, 1)
    rise = 0.5 * (1 - torch.cos(math.pi * rise))
    floor = torch.where(clock < search_until, cfg.alpha_search * (clock / cfg.ramp).clamp(max=1),
                        cfg.alpha_search + (cfg.alpha_end - cfg.alpha_search) * rise)
    cap = torch.where(clock < search_until, torch.full_like(clock, cfg.alpha_search),
                      torch.full_like(clock, math.inf))
    return floor, cap


def alpha_bounds(cfg: TeacherConfig, step: int, born: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head (floor, cap) of alpha at `step` for heads born (started or reset) at steps `born`.

    The run's schedule (search until `search_until`, sharpen until `end_at`) and, for a head reset late,
    a shorter schedule of its own counted from its reset (search for `young_search`, sharpen over
    `young_sharpen`); the head follows whichever of the two is the looser.
    """
    t = torch.full(born.shape, step / cfg.steps, dtype=torch.float64)
    age = (step - born).double() / cfg.steps
    floor_run, cap_run = _alpha_schedule(cfg, t, cfg.search_until, cfg.end_at)
    floor_own, cap_own = _alpha_schedule(cfg, age, cfg.young_search, cfg.young_search + cfg.young_sharpen)
    return torch.minimum(floor_run, floor_own), torch.maximum(cap_run.minimum(cap_own), floor_run.minimum(floor_own))


# -- resets --------------------------------------------------------------------------------------------
def merge_block_norms(layer: RelativeSelfAttention) -> torch.Tensor:
    """Per head, the Frobenius norm of its block of merge weights (out_dim x dim)."""
    weight = layer.merge.weight.detach()
    return weight.reshape(layer.out_dim, layer.heads, layer.dim).square().sum((0, 2)).sqrt()


def heads_to_reset(layer: RelativeSelfAttention, dead_ratio: float, duplicate_distance: float,
                   parked_distance: float, mature: torch.Tensor, settled: torch.Tensor) -> dict[int, str]:
    """{head: reason}: dead heads, heads parked between key offsets, and the weaker of two coinciding heads.

    Only `mature` heads (a bool per head) are candidates: a freshly reset head has a zero merge block and
    must be given time to grow it. Only `settled` heads (old, and still since the last check) can be
    parked, since a moving head crosses the middle of cells on its way, and only the worst of them is
    reset at a time: the heads around a parked one often move once it is gone.
    """
    norms = merge_block_norms(layer)
    reasons = {h: "dead" for h in range(layer.heads) if mature[h] and norms[h] < dead_ratio * norms.max()}
    centres = layer.encoding.centre.detach()
    off_lattice = (centres - centres.round()).abs().amax(1)  # keys sit at integer offsets
    parked = [h for h in range(layer.heads) if settled[h] and h not in reasons and off_lattice[h] > parked_distance]
    if parked:
        reasons[max(parked, key=lambda h: float(off_lattice[h]))] = "parked"
    distance = torch.cdist(centres, centres)
    for i, j in itertools.combinations(range(layer.heads), 2):
        if i in reasons or j in reasons or distance[i, j] >= duplicate_distance:
            continue
        weaker = i if norms[i] < norms[j] else j
        if mature[weaker]:
            reasons[weaker] = "duplicate"
    return reasons


def fresh_centres(centres: torch.Tensor, heads: list[int], candidates: int, generator: torch.Generator,
                  strong: torch.Tensor | None = None) -> torch.Tensor:
    """New centres for `heads`, each in the largest gap between the other heads.

    Of `candidates` points drawn uniformly in the bounding box of the `strong` heads' centres (a bool per
    head; by default every head not reset), the one farthest from every other head (the reset ones placed
    so far included) is kept: an empty cluster re-seeded at the farthest point, as in k-means. The box is
    the strong heads' because a weak head is often one drifting away: a box stretched to it puts the
    gap, and the fresh head, where it is drifting. Only the layer's own state is read.
    """
    keep = [h for h in range(len(centres)) if h not in heads]
    others = centres[keep]
    anchors = others if strong is None else centres[[h for h in keep if strong[h]] or keep]
    low, high = anchors.amin(0), anchors.amax(0)
    fresh = []
    for _ in heads:
        points = low + (high - low) * torch.rand(candidates, centres.shape[1], generator=generator)
        gap = torch.cdist(points, others).amin(1)
        best = points[gap.argmax()]
        fresh.append(best)
        others = torch.cat([others, best[None]])
    return torch.stack(fresh)


def reset_heads(layer: RelativeSelfAttention, optimizer: torch.optim.Optimizer, heads: list[int],
                cfg: TeacherConfig, generator: torch.Generator) -> None:
    """A fresh centre (`fresh_centres`), the paper's initial width, a zero merge block, and cleared Adam
    moments (first moment 0, second moment the other heads' mean) for `heads`."""
    encoding = layer.encoding
    keep = [h for h in range(layer.heads) if h not in heads]
    columns = torch.zeros(layer.heads, layer.dim, dtype=torch.bool)
    columns[heads] = True
    columns = columns.flatten()  # merge columns are head-major: head h owns [h * dim, (h + 1) * dim)
    with torch.no_grad():
        norms = merge_block_norms(layer)
        strong = norms >= cfg.strong_ratio * norms.max()
        encoding.centre[heads] = fresh_centres(encoding.centre.detach(), heads, cfg.reset_candidates, generator,
                                               strong)
        encoding.width[heads] = 1 + 0.01 * torch.randn(len(heads), generator=generator)
        layer.merge.weight[:, columns] = 0
        for param in (encoding.centre, encoding.width):
            state = optimizer.state.get(param)
            if state:
                state["exp_avg"][heads] = 0
                state["exp_avg_sq"][heads] = state["exp_avg_sq"][keep].mean(0) if keep else 0
        state = optimizer.state.get(layer.merge.weight)
        if state:
            state["exp_avg"][:, columns] = 0
            state["exp_avg_sq"][:, columns] = state["exp_avg_sq"][:, ~columns].mean() if keep else 0


# -- the experiment ------------------------------------------------------------------------------------
def build_layer(cfg: TeacherConfig, teacher: nn.Conv2d) -> RelativeSelfAttention:
    """The student: 9 quadratic heads with the paper's random init (seeded) and the teacher's geometry."""
    heads = teacher.kernel_size[0] * teacher.kernel_size[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return RelativeSelfAttention(teacher.in_channels, heads=heads, out_dim=teacher.out_channels,
                                     encoding="quadratic", centre_std=cfg.centre_std,
                                     geometry=conv_geometry(teacher))


def relative_error(layer: RelativeSelfAttention, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    was_training = layer.training
    layer.eval()
    with torch.no_grad():
        error = float((layer(inputs) - targets).norm() / targets.norm())
    layer.train(was_training)
    return error


def run(cfg: TeacherConfig, *, progress: bool = False) -> tuple[dict, torch.Tensor, RelativeSelfAttention]:
    """Train the student on the teacher: (result dict, centre trajectory (frames, heads, 2), trained layer)."""
    start = time.perf_counter()
    # Data: the teacher and disjoint crop sets (train, held-out), all from the seed.
    teacher = conv_teacher(cfg.out_channels, cfg.seed)
    train_x = photo_crops(cfg.train_crops, cfg.size, 2 * cfg.seed + 1_000_000)
    test_x = photo_crops(cfg.test_crops, cfg.size, 2 * cfg.seed + 1_000_001)
    with torch.no_grad():
        train_y, test_y = teacher(train_x), teacher(test_x)
    target_power = float(train_y.square().mean())

    layer = build_layer(cfg, teacher)
    encoding = layer.encoding
    groups = [{"params": [encoding.centre], "lr": cfg.lr_centre, "name": "centre"},
              {"params": [encoding.width], "lr": cfg.lr_width, "name": "width"},
              {"params": list(layer.merge.parameters()), "lr": cfg.lr_merge, "name": "merge"}]
    optimizer = torch.optim.Adam(groups)
    base_lr = [group["lr"] for group in optimizer.param_groups]
    final_fraction = [cfg.final_lr_fraction, cfg.final_lr_fraction, cfg.merge_final_lr_fraction]
    generator = torch.Generator().manual_seed(cfg.seed)
    born = torch.zeros(layer.heads, dtype=torch.long)
    reset_log: list[dict] = []
    frames = [encoding.centre.detach().clone()]
    last_check = encoding.centre.detach().clone()

    steps = range(cfg.steps)
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc=f"teacher seed {cfg.seed}", leave=False)
    for step in steps:
        t = step / cfg.steps
        # schedule
        decay = cosine(t, cfg.decay_from, 1.0)
        for group, lr, final in zip(optimizer.param_groups, base_lr, final_fraction):
            group["lr"] = lr * (final + (1 - final) * decay)
        lam = cfg.penalty * cosine(t, cfg.penalty_from, cfg.penalty_until)
        # forward, backward, step
        index = torch.randint(cfg.train_crops, (cfg.batch,), generator=generator)
        prediction = layer(train_x[index])
        target = train_y[index]
        loss = (prediction - target).square().mean() / target_power
        if lam:
            loss = loss + lam * layer.merge.weight.square().sum() / (layer.out_dim * target_power)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # projection: floor <= alpha <= cap
        with torch.no_grad():
            floor, cap = alpha_bounds(cfg, step + 1, born)
            width = encoding.width.abs().maximum((2 * floor).sqrt().to(encoding.width.dtype))
            encoding.width.copy_(width.minimum((2 * cap).sqrt().to(encoding.width.dtype)))
        # resets
        if cfg.reset_from <= t <= cfg.reset_until and (step + 1) % cfg.reset_every == 0:
            age = (step + 1 - born).double() / cfg.steps
            moved = (encoding.centre.detach() - last_check).norm(dim=1)
            last_check = encoding.centre.detach().clone()
            settled = (age >= cfg.parked_age) & (moved < cfg.parked_still)
            reasons = heads_to_reset(layer, cfg.dead_ratio, cfg.duplicate_distance, cfg.parked_distance,
                                     age >= cfg.reset_grace, settled)
            if reasons:
                for head, reason in sorted(reasons.items()):
                    reset_log.append({"step": step + 1, "head": head, "reason": reason,
                                      "centre": encoding.centre[head].tolist(),
                                      "alpha": float(encoding.alpha[head].detach())})
                reset_heads(layer, optimizer, sorted(reasons), cfg, generator)
                born[sorted(reasons)] = step + 1
        if (step + 1) % cfg.record_every == 0 or step + 1 == cfg.steps:
            frames.append(encoding.centre.detach().clone())
        if progress and step % 50 == 0:
            steps.set_postfix(loss=f"{loss.item():.3g}", resets=len(reset_log))

    centres = encoding.centre.detach()
    result = {"seed": cfg.seed, "centres": centres.tolist(), "alphas": encoding.alpha.detach().tolist()}
    result.update(match_heads(centres, kernel_grid(teacher.kernel_size[0])))
    result["relative_error"] = relative_error(layer, test_x, test_y)
    result["train_relative_error"] = relative_error(layer, train_x, train_y)
    result["resets"] = len(reset_log)
    result["reset_log"] = reset_log
    result["steps"] = cfg.steps
    result["seconds"] = time.perf_counter() - start
    result["threads"] = torch.get_num_threads()
    result["config"] = asdict(cfg)
    return result, torch.stack(frames), layer


# -- figure --------------------------------------------------------------------------------------------
def plot_trajectories(trajectory: torch.Tensor, result: dict, path: Path) -> None:
    """The heads' centres over training on the 3x3 grid of shifts: one colour per head, final point ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 5.2))
    grid = kernel_grid(3)
    ax.scatter(grid[:, 1], grid[:, 0], s=260, marker="s", facecolors="none", edgecolors="0.55",
               linewidths=1.2, zorder=1, label="kernel shifts")
    colours = plt.get_cmap("tab10")
    for h in range(trajectory.shape[1]):
        path_h = trajectory[:, h]
        # a reset makes the centre jump: break the line there rather than draw the jump
        jumps = (path_h[1:] - path_h[:-1]).norm(dim=1) > 0.75
        segments = torch.tensor_split(path_h, (torch.nonzero(jumps).flatten() + 1).tolist())
        for segment in segments:
            ax.plot(segment[:, 1], segment[:, 0], "-", color=colours(h), lw=1.0, alpha=0.8)
        ax.plot(path_h[0, 1], path_h[0, 0], "o", color=colours(h), ms=3, alpha=0.6)
        ax.plot(path_h[-1, 1], path_h[-1, 0], "o", color=colours(h), ms=8, mec="black", mew=0.8,
                label=f"head {h}")
    ax.set_xlim(-3.5, 3.5)
    ax.set_ylim(3.5, -3.5)  # rows grow downwards, as in the image
    ax.set_aspect("equal")
    ax.set_xlabel("column offset (key - query)")
    ax.set_ylabel("row offset (key - query)")
    ax.grid(alpha=0.25)
    ax.set_title(f"seed {result['seed']}: matched={result['matched']}, max dist "
                 f"{result['max_centre_distance']:.3f}, err {100 * result['relative_error']:.2f}%, "
                 f"resets {result['resets']}", fontsize=8)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- command line --------------------------------------------------------------------------------------
def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative int, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative int, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text!r}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m impl.teacher", description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=_non_negative_int, default=0, help="teacher, crops and init (default 0)")
    parser.add_argument("--steps", type=_positive_int, default=TeacherConfig.steps,
                        help=f"training steps (default {TeacherConfig.steps})")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--out", type=Path, default=Path("runs/teacher"),
                        help="folder for the trajectory figure (default runs/teacher)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    args = parser.parse_args(argv)
    # Checked before minutes of training, not when the results are written.
    if args.json is not None and (args.json.is_dir() or _below_a_file(args.json)):
        parser.error(f"--json {args.json}: must be a file path (not a directory, not below a file)")
    if args.out.exists() and not args.out.is_dir() or _below_a_file(args.out):
        parser.error(f"--out {args.out}: must be a directory path (not a file, not below a file)")
    return args


def _below_a_file(path: Path) -> bool:
    return any(parent.exists() and not parent.is_dir() for parent in path.parents)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = TeacherConfig(seed=args.seed, steps=args.steps)
    result, trajectory, _ = run(cfg, progress=not args.quiet and sys.stderr.isatty())
    figure = args.out / f"teacher_seed{args.seed}.png"
    plot_trajectories(trajectory, result, figure)
    result["figure"] = str(figure)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if not args.quiet:
        print(f"seed {result['seed']}: matched={result['matched']} max_centre_distance="
              f"{result['max_centre_distance']:.4f} relative_error={result['relative_error']:.4%} "
              f"resets={result['resets']} seconds={result['seconds']:.1f}")
        for h, (c, a, d) in enumerate(zip(result["centres"], result["alphas"], result["distances"])):
            print(f"  head {h}: centre=({c[0]:+.3f}, {c[1]:+.3f}) alpha={a:7.2f} distance={d:.3f}")
        print(f"  figure: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
