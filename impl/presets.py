"""Training presets: the paper's runs (its "training runs" table), one record each.

Every run uses SGD with momentum 0.9, weight decay 1e-4 (none on the parameters a model lists in
`no_weight_decay()`: quadratic centres and widths), batch 100 and seed 42. The attention runs warm up
linearly over the first 5% of steps and then follow a cosine to 0; the ResNet divides its learning rate by 10
at epochs 80, 150 and 250. Both schedules are applied per optimizer step (`impl.schedule`).

A preset names the paper's model and a tiny version of it (`tiny_*`, width 64, 2 layers) that the trainer
uses on the small `digits` data set, so every run can be rehearsed on a CPU in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """One training run of the paper.

    Attributes:
        name: the run's name (the CLI's --preset).
        summary: one line for --help.
        model: the paper's model (impl.models name), used on cifar10 and synthetic data.
        tiny_model: the small model used on digits.
        lr: peak learning rate.
        epochs: epochs of the paper's run.
        schedule: 'cosine' (warm-up then cosine) or 'step' (decay at `milestones`).
        needs_init: the run starts from another run's weights (--init-from) and prunes degenerate heads.
    """

    name: str
    summary: str
    model: str
    tiny_model: str
    lr: float = 0.1
    epochs: int = 300
    batch_size: int = 100
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_fraction: float = 0.05
    milestones: tuple[int, ...] = (80, 150, 250)
    gamma: float = 0.1
    needs_init: bool = False

    def model_for(self, data: str) -> str:
        """The model this preset trains on data set `data`: the tiny one on digits, the paper's otherwise."""
        return self.tiny_model if data == "digits" else self.model


PRESETS: dict[str, Preset] = {preset.name: preset for preset in (
    Preset("quadratic", "9 isotropic quadratic heads per layer, lr 0.1, warm-up + cosine, 300 epochs",
           "sa_quadratic", "tiny_quadratic"),
    Preset("quadratic-generalized", "9 generalized quadratic heads (learned Sigma^-1), lr 0.1, cosine, 300 epochs",
           "sa_generalized", "tiny_generalized"),
    Preset("quadratic-generalized-pruned",
           "a trained generalized run (--init-from RUN), degenerate heads pruned, lr 0.01, cosine, 100 epochs",
           "sa_generalized", "tiny_generalized", lr=0.01, epochs=100, needs_init=True),
    Preset("many-heads", "16 isotropic quadratic heads per layer, lr 0.1, cosine, 300 epochs",
           "sa_many_heads", "tiny_many_heads"),
    Preset("learned", "learned relative row + column embeddings, no content, lr 0.1, cosine, 300 epochs",
           "sa_learned", "tiny_learned"),
    Preset("learned-content", "learned relative embeddings + content scores, lr 0.1, cosine, 300 epochs",
           "sa_learned_content", "tiny_learned_content"),
    Preset("resnet", "the ResNet18 baseline, lr 0.1 divided by 10 at epochs 80/150/250, 300 epochs",
           "resnet18", "tiny_resnet18", schedule="step"),
)}


def get(name: str) -> Preset:
    """The preset called `name`; ValueError listing the presets otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def describe() -> str:
    """One line per preset, for --help."""
    width = max(map(len, PRESETS))
    return "\n".join(f"  {name:<{width}}  {preset.summary}" for name, preset in PRESETS.items())
