"""The README works as written: its Python examples run, and every command it shows names a make target the
Makefile has, a script the repository has, or a module entry point whose `--help` lists each flag used
(bench/README.md's `python -m` commands too)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FENCED = re.compile(r"```(\w*)\n(.*?)```", re.S)  # (language, code) of each fenced block
BLOCKS = FENCED.findall(README)
# the shell blocks, but the Layout section's tree
COMMAND_BLOCKS = [block for section in re.split(r"^## ", README, flags=re.M)
                  if not section.startswith("Layout")
                  for lang, block in FENCED.findall(section) if lang in ("", "sh")]

# Every module's --help in one interpreter (torch imported once): {module: help text, or the error}
_HELP_TEXTS = """
import contextlib, io, json, runpy, sys
texts = {}
for module in sys.argv[1:]:
    out = io.StringIO()
    sys.argv = [module, "--help"]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        texts[module] = "error: no exit after --help"
    except SystemExit as done:
        texts[module] = out.getvalue() if done.code in (0, None) else f"error: exit status {done.code}"
    except Exception as error:
        texts[module] = f"error: {error!r}"
sys.stdout = sys.__stdout__
print(json.dumps(texts))
"""


def _commands() -> list[str]:
    """The README's shell lines, comments dropped, and the `python -m` commands quoted in both READMEs."""
    lines = [line.split("#")[0].strip() for block in COMMAND_BLOCKS for line in block.splitlines()]
    quoted = re.findall(r"`(python -m [^`]+)`", README + (ROOT / "bench" / "README.md").read_text())
    return [line for line in lines if line] + quoted


def _module_and_flags(command: str) -> tuple[str, list[str]] | None:
    """('impl.train', ['--preset', ...]) for `python -m impl.train --preset ...` (torchrun too)."""
    match = re.search(r"(?:^python|^torchrun\b.*?)\s+-m\s+([\w.]+)(.*)", command)
    if match is None:
        return None
    return match.group(1), re.findall(r"--[\w-]+", match.group(2))


def test_python_examples_run():
    examples = [code for lang, code in BLOCKS if lang == "python"]
    assert examples, "the README has no Python example"
    for code in examples:
        exec(compile(code, "README.md", "exec"), {})


def test_every_command_names_something_that_exists():
    commands = _commands()
    makefile = (ROOT / "Makefile").read_text()
    uses: dict[str, set[str]] = {}
    for command in commands:
        if command.startswith("make "):
            for target in command.split()[1:]:
                assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"no make target {target!r}"
        elif command.startswith("scripts/"):
            script = ROOT / command.split()[0]
            assert script.is_file() and os.access(script, os.X_OK), f"{script} missing or not executable"
        else:
            parsed = _module_and_flags(command)
            assert parsed is not None, f"a README command this test cannot check: {command!r}"
            uses.setdefault(parsed[0], set()).update(parsed[1])
    assert {"impl.train", "verify"} <= set(uses), "the README's entry points were not found"
    # --benchmark-only is pytest-benchmark's: where it is absent (the GPU image) pytest cannot list it
    if importlib.util.find_spec("pytest_benchmark") is None:
        uses.pop("pytest", None)
    done = subprocess.run([sys.executable, "-c", _HELP_TEXTS, *sorted(uses)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    texts = json.loads(done.stdout.strip().splitlines()[-1])
    for module, flags in uses.items():
        assert not texts[module].startswith("error:"), f"python -m {module} --help: {texts[module]}"
        missing = [flag for flag in flags if not re.search(rf"{re.escape(flag)}\b", texts[module])]
        assert not missing, f"python -m {module} --help does not list {missing}"
