# Every target sets itself up: a virtual environment in $(VENV), created if missing, installed from
# pyproject.toml with the tested versions pinned by constraints.txt (so nothing pulls another torch).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

SHELL := /bin/bash
.PHONY: setup test demo verify bench-check bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## The whole test suite: unit tests (tests/) and the numerical proof (verify/), then the benchmarks once.
test: setup
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory bench-check

## The main job: the verification report (every statement of spec/ checked symbolically and numerically),
## then a short training run of the paper's quadratic attention model (tiny version) on the bundled digits.
demo: setup
	$(PY) -m verify
	rm -rf runs/demo
	OMP_NUM_THREADS=1 $(PY) -m impl.train --preset quadratic --data digits --epochs 5 --batch-size 32 --seed 0 --out runs/demo
	@echo "demo: run directory runs/demo (metrics.csv, figures/*.png); redraw with python -m impl.figures runs/demo"

verify: setup
	$(PY) -m verify

## Every asv benchmark once (--quick) on this environment, so a broken benchmark fails the test run.
## --dry-run: nothing is saved, the committed history under bench/results/ is not touched.
## (under a machine name of its own, bench-check, whose machine.json .gitignore keeps out of bench/results/)
## This host is registered under its own name too (asv's default machine, recorded in ~/.asv-machine.json
## only), so that a plain `asv run --environment existing ...` works after this set-up.
bench-check: setup
	$(VENV)/bin/asv machine --yes --machine bench-check >/dev/null
	$(VENV)/bin/asv machine --yes >/dev/null
	set -o pipefail; $(VENV)/bin/asv run --environment existing:$(abspath $(PY)) --machine bench-check --quick \
		--dry-run --show-stderr 2>&1 | tee .asv-check.log
	@! grep -E " failed$$|Traceback" .asv-check.log

ASV_RECORD_HEAD = $(VENV)/bin/asv run --environment existing:$(abspath $(PY)) --set-commit-hash $$(git rev-parse HEAD)

## Record this machine's benchmarks of HEAD into the committed history (bench/results/), then draw the HTML.
## LayerRatio (the issue's layer target) is then recorded again in fresh interpreters: under asv's fork
## server, whose millisecond polling competes for the cores, it reads high on small machines (asv.conf.json).
bench: setup
	$(ASV_RECORD_HEAD)
	$(ASV_RECORD_HEAD) --launch-method spawn --bench LayerRatio
	$(VENV)/bin/asv publish

clean:
	rm -rf $(VENV) .hypothesis .pytest_cache
