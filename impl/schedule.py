"""Learning-rate schedules, evaluated per optimizer step.

A schedule is a pure function of the global step: `lr = schedule(step)`. The trainer writes it into the
optimizer before every step, so resuming needs nothing but the step count, and no schedule ever lags an
epoch behind (the reference code stepped its scheduler once per epoch: its first epoch trained with a
learning rate of 0 and its decays landed one epoch early).

- `WarmupCosine`: linear warm-up over the first `warmup_fraction` of all steps, then half a cosine down to 0.
- `StepDecay`: multiply by `gamma` at the first step of each milestone epoch (the ResNet baseline's
  divide-by-10 at epochs 80, 150 and 250), i.e. exactly at the epoch boundary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

SCHEDULES = ("cosine", "step")


def _check_positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_lr(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"base_lr must be a finite positive float, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class WarmupCosine:
    """lr(step) = base_lr * (step + 1) / W for step < W, then base_lr * (1 + cos(pi * t)) / 2, t in [0, 1).

    Args:
        base_lr: the peak learning rate, reached at the last warm-up step.
        total_steps: number of optimizer steps of the whole run.
        warmup_fraction: share of `total_steps` spent warming up (the paper: 5%); W = ceil(fraction * total).
    The first step already trains (lr = base_lr / W, never 0); the last step has a small positive lr.
    """

    base_lr: float
    total_steps: int
    warmup_fraction: float = 0.05

    def __post_init__(self) -> None:
        _check_lr(self.base_lr)
        _check_positive_int("total_steps", self.total_steps)
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")

    @property
    def warmup_steps(self) -> int:
        return math.ceil(self.warmup_fraction * self.total_steps)

    def __call__(self, step: int) -> float:
        warmup = self.warmup_steps
        if step < warmup:
            return self.base_lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, self.total_steps - warmup)
        return self.base_lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    def state_dict(self) -> dict:
        return {"name": "cosine", **asdict(self)}


@dataclass(frozen=True)
class StepDecay:
    """lr(step) = base_lr * gamma^(number of milestones m with step >= m * steps_per_epoch).

    Args:
        base_lr: learning rate before the first milestone.
        steps_per_epoch: optimizer steps per epoch (a decay lands on the first step of its epoch).
        milestones: 0-based epochs whose first step uses the decayed rate (the paper: 80, 150, 250).
        gamma: the factor applied at each milestone.
    """

    base_lr: float
    steps_per_epoch: int
    milestones: tuple[int, ...] = (80, 150, 250)
    gamma: float = 0.1

    def __post_init__(self) -> None:
        _check_lr(self.base_lr)
        _check_positive_int("steps_per_epoch", self.steps_per_epoch)
        object.__setattr__(self, "milestones", tuple(self.milestones))
        if any(not isinstance(m, int) or m < 1 for m in self.milestones) or \
                list(self.milestones) != sorted(set(self.milestones)):
            raise ValueError(f"milestones must be increasing positive epochs, got {self.milestones!r}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma!r}")

    def __call__(self, step: int) -> float:
        passed = sum(step >= m * self.steps_per_epoch for m in self.milestones)
        return self.base_lr * self.gamma ** passed

    def state_dict(self) -> dict:
        return {"name": "step", **asdict(self), "milestones": list(self.milestones)}


def build_schedule(name: str, *, base_lr: float, steps_per_epoch: int, epochs: int,
                   warmup_fraction: float = 0.05, milestones: Sequence[int] = (80, 150, 250),
                   gamma: float = 0.1):
    """The schedule called `name` (one of SCHEDULES) for a run of `epochs` x `steps_per_epoch` steps."""
    if name == "cosine":
        return WarmupCosine(base_lr, _check_positive_int("steps_per_epoch", steps_per_epoch)
                            * _check_positive_int("epochs", epochs), warmup_fraction)
    if name == "step":
        return StepDecay(base_lr, steps_per_epoch, tuple(milestones), gamma)
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")
