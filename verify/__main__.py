"""`python -m verify [--profile ci|thorough] [--json PATH]`: run verify/ and print the report.

Exit status 0 when every statement is verified (sympy proof + numeric checks), 1 otherwise, 2 on bad
arguments or when pytest or hypothesis is missing (`pip install 'attention-cnn[verify]'`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

# what the numeric checks run on, beyond the package's own dependencies (its `verify` extra)
CHECK_PACKAGES = ("pytest", "hypothesis")


def _unwritable(path: Path) -> str | None:
    """Why `path` cannot be written as a file (checked before the minutes of work), or None."""
    if path.is_dir():
        return "is a directory; give a file path"
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, not a directory"
    if not os.access(parent, os.W_OK):
        return f"{parent} is not writable"
    return None


def _missing_packages() -> list[str]:
    missing = []
    for name in CHECK_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m verify",
        description="Check every spec statement symbolically (sympy) and numerically (hypothesis over "
                    "generated convolutions and layers), then print one row per statement.")
    parser.add_argument("--profile", choices=("ci", "thorough"), default="ci",
                        help="hypothesis profile: ci (derandomized, ~1-2 min) or thorough (10x examples)")
    parser.add_argument("--json", metavar="PATH",
                        help="also write {verified, statements: [{id, reference, statement, symbolic, "
                             "examples, worst_error, bound, verified}]} to PATH")
    parser.add_argument("-k", metavar="EXPRESSION", help="only run tests matching this pytest -k expression")
    args = parser.parse_args(argv)
    if args.json is not None:
        problem = _unwritable(Path(args.json))
        if problem:
            parser.error(f"--json {args.json}: {problem}")
    missing = _missing_packages()
    if missing:
        parser.exit(2, f"python -m verify: needs {' and '.join(missing)}, not installed here: "
                       f"pip install 'attention-cnn[verify]' (or {' '.join(missing)})\n")
    from verify import report

    extra = ("-k", args.k) if args.k else ()
    return report.run(args.profile, args.json, extra)


if __name__ == "__main__":
    sys.exit(main())
