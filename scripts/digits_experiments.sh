#!/usr/bin/env bash
# The paper's runs, in their tiny_* versions, on scikit-learn's digits (CPU, minutes each), against ResNet18.
#
#   scripts/digits_experiments.sh            # every preset, then figures and the table
#   EPOCHS=3 RUNS=runs/digits-short scripts/digits_experiments.sh
#
# Settings (environment): EPOCHS (30), BATCH (64), SEED (0), RUNS (runs/digits), THREADS (1: the machine
# is shared), PYTHON (.venv/bin/python when present). Every run uses the same epochs and batch size; the
# pruned run starts from the best weights of the generalized run (its degenerate heads removed) and trains
# for EPOCHS more at the preset's lr 0.01. A run whose metrics.csv already has EPOCHS rows is kept (not
# retrained), so the script can be re-run to redraw the figures and the table. Writes:
#   RUNS/PRESET/...          run directories (impl.train's contract) and RUNS/PRESET/wall_s.txt
#   RUNS/figures/            impl.figures of all runs: accuracy.png for all, one subdirectory per run
#   RUNS/table.md            preset, model, params, epochs, best/final test accuracy, images/s, wall time
#   RUNS/test_accuracy.png   test accuracy per epoch of every run, one plot
set -euo pipefail
cd "$(dirname "$0")/.."

EPOCHS=${EPOCHS:-30}
BATCH=${BATCH:-64}
SEED=${SEED:-0}
RUNS=${RUNS:-runs/digits}
THREADS=${THREADS:-1}
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

PRESETS=(quadratic quadratic-generalized quadratic-generalized-pruned many-heads learned learned-content resnet)

finished() {  # run directory has EPOCHS epochs in metrics.csv
    [[ -f "$1/metrics.csv" ]] && [[ $(($(wc -l < "$1/metrics.csv") - 1)) -ge $EPOCHS ]]
}

mkdir -p "$RUNS"
for preset in "${PRESETS[@]}"; do
    out="$RUNS/$preset"
    if finished "$out"; then
        echo "== $preset: $out already has $EPOCHS epochs, kept"
        continue
    fi
    if [[ -e "$out" ]]; then
        echo "== $preset: $out holds an unfinished run; remove it or resume it by hand" >&2
        exit 1
    fi
    extra=()
    if [[ $preset == quadratic-generalized-pruned ]]; then
        extra=(--init-from "$RUNS/quadratic-generalized")
    fi
    cmd=("$PYTHON" -m impl.train --preset "$preset" --data digits --epochs "$EPOCHS" --batch-size "$BATCH"
         --seed "$SEED" --out "$out" "${extra[@]}")
    echo "== ${cmd[*]}"
    start=$(date +%s.%N)
    "${cmd[@]}"
    end=$(date +%s.%N)
    "$PYTHON" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$start" "$end" \
        > "$out/wall_s.txt"
done

runs=()
for preset in "${PRESETS[@]}"; do runs+=("$RUNS/$preset"); done
"$PYTHON" -m impl.figures "${runs[@]}" --out "$RUNS/figures"

"$PYTHON" - "$RUNS/table.md" "${runs[@]}" <<'EOF'
"""The accuracy table of the digits runs, from their run directories."""
import csv
import json
import statistics
import sys
from pathlib import Path

import torch

from impl import models
from impl.models.pruning import match_heads

rows = ["| preset | model | params | epochs | best test acc (epoch) | final test acc | images/s (median) | wall time |",
        "|---|---|---:|---:|---:|---:|---:|---:|"]
for run in map(Path, sys.argv[2:]):
    config = json.loads((run / "config.json").read_text())
    metrics = list(csv.DictReader((run / "metrics.csv").open()))
    model = models.build(config["model"], **config["model_overrides"])
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")["model"]
    match_heads(model, state)  # the pruned run has fewer heads
    params = sum(p.numel() for p in model.parameters())
    best = max(metrics, key=lambda row: float(row["test_acc"]))
    speed = statistics.median(float(row["images_per_s"]) for row in metrics)
    wall = (run / "wall_s.txt").read_text().strip() if (run / "wall_s.txt").exists() else "?"
    rows.append(f"| {config['preset']} | {config['model']} | {params:,} | {len(metrics)} | "
                f"{float(best['test_acc']):.3f} ({best['epoch']}) | {float(metrics[-1]['test_acc']):.3f} | "
                f"{speed:.0f} | {wall} s |")
Path(sys.argv[1]).write_text("\n".join(rows) + "\n")
print("\n".join(rows))

# Test accuracy only, one line per run (impl.figures' accuracy.png also has the train curves).
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6.4, 4.0))
for run in map(Path, sys.argv[2:]):
    config = json.loads((run / "config.json").read_text())
    metrics = list(csv.DictReader((run / "metrics.csv").open()))
    style = "--" if config["model"].endswith("resnet18") else "-"
    ax.plot([int(r["epoch"]) for r in metrics], [float(r["test_acc"]) for r in metrics], style, marker=".",
            label=f"{config['preset']} ({config['model']})")
ax.set(xlabel="epoch", ylabel="test accuracy", ylim=(0, 1),
       title=f"digits, seed {config['seed']}, batch {config['batch_size']}: test accuracy per epoch")
ax.grid(alpha=0.3)
ax.legend(loc="lower right", fontsize=8)
fig.tight_layout()
out = Path(sys.argv[1]).with_name("test_accuracy.png")
fig.savefig(out, dpi=110)
print(out)
EOF
