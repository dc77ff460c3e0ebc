#!/usr/bin/env bash
# Benchmark every commit of a range with the existing environment (no network needed): for each commit,
# check it out in a temporary worktree, make that worktree's `impl` the one the environment imports, and
# record `asv run -E existing --set-commit-hash <hash>` under this checkout's bench/results/<machine>/.
#
#   bench/run_commits.sh [RANGE] [extra asv run arguments...]
#   bench/run_commits.sh main~10..main --bench LayerRatio --launch-method spawn   # as `make bench` records it
#   PYTHON=/path/to/python MACHINE=h100 bench/run_commits.sh HEAD~3..HEAD
#
# RANGE defaults to the last 10 commits of main (oldest first). The benchmark code is this checkout's
# bench/ (asv always runs the suites of the working tree); commits that predate an API the suites use
# are reported as failed benchmarks, not as a failed script. MACHINE names the asv machine (default:
# the one `asv machine` stored; create it first with `asv machine --yes --machine NAME`).
set -euo pipefail

ROOT="$(git rev-parse --show-toplevel)"
RANGE="${1:-main~10..main}"
shift || true
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
ASV=("$PYTHON" -m asv)
MACHINE_ARGS=()
if [[ -n "${MACHINE:-}" ]]; then
    MACHINE_ARGS=(--machine "$MACHINE")
fi

mapfile -t COMMITS < <(git -C "$ROOT" rev-list --reverse "$RANGE")
if [[ ${#COMMITS[@]} -eq 0 ]]; then
    echo "error: no commits in range '$RANGE'" >&2
    exit 2
fi

if ! "$PYTHON" -c "import asv, torch" 2>/dev/null; then
    echo "error: $PYTHON cannot import asv and torch; set PYTHON to the environment's interpreter" >&2
    exit 2
fi

WORK="$(mktemp -d)"
cleanup() {
    git -C "$ROOT" worktree remove --force "$WORK/tree" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

status=0
for commit in "${COMMITS[@]}"; do
    echo "== $(git -C "$ROOT" log -1 --format='%h %s' "$commit")"
    git -C "$ROOT" worktree remove --force "$WORK/tree" 2>/dev/null || true
    git -C "$ROOT" worktree add --detach "$WORK/tree" "$commit" >/dev/null
    # The commit's impl/ first on the path (ahead of the editable install of this checkout); the suites,
    # the configuration and the results stay this checkout's. asv drops PYTHONPATH from the benchmarks'
    # environment and puts ASV_PYTHONPATH's entries first on their sys.path instead.
    if ! (cd "$ROOT" && ASV_PYTHONPATH="$WORK/tree${ASV_PYTHONPATH:+:$ASV_PYTHONPATH}" \
          "${ASV[@]}" run --environment "existing:$PYTHON" --set-commit-hash "$commit" \
          "${MACHINE_ARGS[@]}" "$@"); then
        echo "warning: asv run failed for $commit" >&2
        status=1
    fi
done
exit $status
