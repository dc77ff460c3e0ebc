#!/usr/bin/env bash
# Every GPU measurement issue 5 asks for, in phases that each fit one device call (< 10 minutes on one H100).
# A lease of 15 device minutes (a start of 1-2 minutes included) holds one call of `targets` with time to
# rerun it; longer leases take the full phases, two to a call:
#
#   bash bench/gpu_session.sh targets           # every target once, at most 7 minutes
#   bash bench/gpu_session.sh tests layers      # else, in a first call; then, in a second:
#   bash bench/gpu_session.sh models compiled   # and in a third:
#   bash bench/gpu_session.sh asv
#
# Phases (each writes $OUT/<phase>.txt; $OUT defaults to ./gpu_out):
#   targets the short form, every step under its own time limit (together 400 s): the CUDA device tests
#           (verify/test_devices.py), then the layer ratios in bf16 autocast with peak memory (the converted
#           layer, content + position and its plain math reference), sa_quadratic's and resnet18's images/s
#           in float32 and bf16, sa_quadratic's compiled in bf16 (its compile, untimed, took 45 s on the
#           2-core CPU), and their FLOP rates
#   tests   the test suite with CUDA present (verify/test_devices.py: every kind of layer forward and backward
#           on CUDA, compiled FlexAttention included, against the exact layer; tests/test_dropout.py's CUDA case)
#   layers  bench.ratios on CUDA, batch 100, float32 and bf16 autocast: every layer path against the conv,
#           with peak memory (content-reference: the plain math the fused content kernels are held to)
#   models  bench.throughput (images/s of every paper model, float32 and bf16, projected run times) and
#           bench.flop_rate (sa_quadratic / resnet18 FLOP rate, batch 100)
#   compiled  bench.throughput --compile for sa_quadratic and resnet18 (torch.compile, as `impl.train
#           --compile` trains: issue 5's 4,000 images/s target is for the fastest way to train)
#   asv     the asv suite once on this commit, results under bench/results/$MACHINE/ (copied to
#           $OUT/asv-results.tar); needs asv, which the GPU image lacks: fetch its wheels here first (8 MB,
#           .wheels/ is ignored by git, so name it in the device call's carry); they are installed there into
#           /tmp/asv-site, last on the paths (the image's own packages first):
#             pip download asv -d .wheels --python-version 3.12 --only-binary=:all: \
#               --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64
#
# The machine has no network: python3 is the image's (PyTorch 2.11), with hypothesis, sympy and pytest; the
# repository is not installed there, so it goes on PYTHONPATH, and on ASV_PYTHONPATH for asv (which drops
# PYTHONPATH from its benchmarks' environment).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export ASV_PYTHONPATH="$PWD${ASV_PYTHONPATH:+:$ASV_PYTHONPATH}"
OUT=${OUT:-gpu_out}
MACHINE=${MACHINE:-h100}
PYTHON=${PYTHON:-python3}
[ $# -ge 1 ] || { echo "usage: $0 PHASE... (targets, tests, layers, models, compiled, asv)" >&2; exit 2; }
for phase in "$@"; do
  case "$phase" in targets|tests|layers|models|compiled|asv) ;;
    *) echo "unknown phase $phase (targets, tests, layers, models, compiled, asv)" >&2; exit 2 ;; esac
done
if ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "no CUDA device for $PYTHON: this script records GPU figures (under the asv machine $MACHINE)" >&2; exit 3
fi
mkdir -p "$OUT"
status=0
for phase in "$@"; do
  log="$OUT/$phase.txt"
  { echo "# $(date -u +%FT%TZ)  $(git rev-parse --short HEAD 2>/dev/null)  phase $phase"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } >"$log"
  case "$phase" in
    targets)
      # each step runs whatever the one before it did; the phase's status is the last failure's
      rc=0
      timeout 60 "$PYTHON" -m pytest -q -rfEs -p no:cacheprovider verify/test_devices.py >>"$log" 2>&1 || rc=$?
      timeout 110 "$PYTHON" -m bench.ratios --device cuda --precision bf16-autocast \
        --paths separable-quadratic,learned-content,content-reference --rounds 3 --min-run-time 0.2 \
        >>"$log" 2>&1 || rc=$?
      timeout 45 "$PYTHON" -m bench.throughput --device cuda --models sa_quadratic,resnet18 --rounds 2 \
        --steps 5 >>"$log" 2>&1 || rc=$?
      # the 4,000 images/s target is for the fastest way to train: compiled, bf16 (the compile is untimed)
      timeout 150 "$PYTHON" -m bench.throughput --device cuda --compile --models sa_quadratic \
        --precisions bf16-autocast --rounds 2 --steps 10 >>"$log" 2>&1 || rc=$?
      timeout 35 "$PYTHON" -m bench.flop_rate --device cuda --batch 100 --rounds 2 >>"$log" 2>&1 || rc=$?
      (exit $rc) ;;
    tests)
      # every failure, not the first only (-x): the CUDA cases run nowhere else; one worker per file group
      timeout 540 "$PYTHON" -m pytest -q -rfEs -p no:cacheprovider -n 8 --dist loadgroup tests verify >>"$log" 2>&1 ;;
    layers)
      paths=separable-quadratic,fixed-encoding,hard-limit,learned,learned-content,dense-reference,content-reference
      for precision in float32 bf16-autocast; do
        timeout 270 "$PYTHON" -m bench.ratios --device cuda --precision "$precision" --paths "$paths" \
          --rounds 3 --min-run-time 0.3 >>"$log" 2>&1
      done ;;
    models)
      timeout 420 "$PYTHON" -m bench.throughput --device cuda --rounds 3 --steps 5 >>"$log" 2>&1 &&
        timeout 150 "$PYTHON" -m bench.flop_rate --device cuda --batch 100 --rounds 3 >>"$log" 2>&1 ;;
    compiled)
      timeout 540 "$PYTHON" -m bench.throughput --device cuda --compile --models sa_quadratic,resnet18 \
        --rounds 3 --steps 10 >>"$log" 2>&1 ;;
    asv)
      if ! "$PYTHON" -c "import asv" 2>/dev/null && [ -d .wheels ]; then
        "$PYTHON" -m pip install -q --no-index --find-links .wheels --target /tmp/asv-site asv >>"$log" 2>&1
        export PYTHONPATH="$PYTHONPATH:/tmp/asv-site" ASV_PYTHONPATH="$ASV_PYTHONPATH:/tmp/asv-site"
      fi
      if ! "$PYTHON" -m asv --version >>"$log" 2>&1; then
        echo "asv is not installed: carry its wheel in .wheels/" >>"$log"; false
      else
        if [ -f "bench/results/$MACHINE/machine.json" ]; then  # recorded before: its committed description
          "$PYTHON" -m bench.register_machine "$MACHINE" >>"$log" 2>&1
        else
          "$PYTHON" -m asv machine --yes --machine "$MACHINE" >>"$log" 2>&1
        fi
        timeout 540 "$PYTHON" -m asv run --environment existing:same --quick --machine "$MACHINE" \
          --set-commit-hash "$(git rev-parse HEAD)" >>"$log" 2>&1
        tar -cf "$OUT/asv-results.tar" "bench/results/$MACHINE"
      fi ;;
  esac
  rc=$?
  echo "# phase $phase exit status $rc" >>"$log"
  [ $rc -eq 0 ] || status=$rc
done
exit $status
