#!/usr/bin/env bash
# The teacher experiment (impl.teacher) over a range of seeds, then its table.
#
#   scripts/teacher_seeds.sh                    # seeds 0..9 with the default recipe
#   SEEDS="$(seq 10 29)" JOBS=2 scripts/teacher_seeds.sh
#
# Settings (environment): SEEDS ("0 1 ... 9"), JOBS (2 runs at once, one thread each: the machine is
# shared), OUT (runs/teacher), PYTHON (.venv/bin/python when present). Writes OUT/seedS.json and
# OUT/teacher_seedS.png per seed, and OUT/table.md: seed, matched, max centre distance, heads within
# 0.25 px, relative error, resets, seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

SEEDS=${SEEDS:-$(seq 0 9)}
JOBS=${JOBS:-2}
OUT=${OUT:-runs/teacher}
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHON OUT
mkdir -p "$OUT"

# shellcheck disable=SC2086
printf '%s\n' $SEEDS | xargs -P "$JOBS" -I{} sh -c \
    '"$PYTHON" -m impl.teacher --seed {} --json "$OUT/seed{}.json" --out "$OUT" --quiet && echo "seed {} done"'

"$PYTHON" - "$OUT" $SEEDS <<'PY'
import json
import sys
from pathlib import Path

out, seeds = Path(sys.argv[1]), sys.argv[2:]
rows = ["| seed | matched | max centre distance (px) | heads within 0.25 px | relative error | resets | seconds |",
        "|---|---|---|---|---|---|---|"]
results = [json.loads((out / f"seed{s}.json").read_text()) for s in seeds]
for r in results:
    close = sum(d < 0.25 for d in r["distances"])
    rows.append(f"| {r['seed']} | {'yes' if r['matched'] else '**no**'} | {r['max_centre_distance']:.3f} | "
                f"{close}/9 | {100 * r['relative_error']:.2f}% | {r['resets']} | {r['seconds']:.0f} |")
matched = sum(r["matched"] for r in results)
all_close = sum(max(r["distances"]) < 0.25 for r in results)
worst = max(r["relative_error"] for r in results)
rows.append("")
rows.append(f"{matched}/{len(results)} seeds matched one-to-one; {all_close}/{len(results)} with every head "
            f"within 0.25 px; worst relative error {100 * worst:.2f}%.")
table = "\n".join(rows) + "\n"
(out / "table.md").write_text(table)
print(table)
PY
