"""The verification report: run verify/'s tests in-process, gather the recorded checks, print a table.

One row per spec statement (plus verify's own EXTRA_CHECKS): its reference, its claim in one line,
the symbolic verdict (spec's proof), how many generated examples checked it numerically, the worst
error against its bound, and the verdict. A statement is verified when its proof holds, none of its
numeric checks exceeded its bound, and no test marked with it failed.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

VERIFY_DIR = Path(__file__).resolve().parent


class Collector:
    """pytest plugin: which tests failed, and the statements their `statement` markers name."""

    def __init__(self) -> None:
        self.failed_statements: dict[str, list[str]] = {}
        self.failed_tests: list[str] = []
        self.xfailed: list[str] = []   # known impl bugs: xfail(strict=True) tests that failed as expected
        self.statements_of: dict[str, list[str]] = {}
        self.passed = 0
        self.skipped = 0

    def pytest_collection_modifyitems(self, items):
        self.statements_of = {item.nodeid: [s for marker in item.iter_markers("statement") for s in marker.args]
                              for item in items}

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.failed_tests.append(report.nodeid)
            for statement in self.statements_of.get(report.nodeid, ()):
                self.failed_statements.setdefault(statement, []).append(report.nodeid)
        elif hasattr(report, "wasxfail") and report.skipped:
            self.xfailed.append(report.nodeid)
        elif report.when == "call" and report.passed:
            self.passed += 1
        elif report.skipped:
            self.skipped += 1


@dataclass
class Row:
    id: str
    reference: str
    statement: str
    symbolic: bool | None
    examples: int
    worst_error: float | None
    bound: float | None
    verified: bool

    @property
    def ratio(self) -> float | None:
        if self.worst_error is None or self.bound is None:
            return None
        if self.bound > 0:
            return self.worst_error / self.bound
        return 0.0 if self.worst_error == 0 else math.inf


def build_rows(records, collector: Collector) -> list[Row]:
    import spec
    from verify.assertions import EXTRA_CHECKS

    entries = [(s.id, s.reference, s.statement, s.check()) for s in spec.STATEMENTS]
    entries += [(key, ref, text, None) for key, (ref, text) in EXTRA_CHECKS.items()]
    rows = []
    for key, reference, statement, symbolic in entries:
        mine = [r for r in records if r.statement == key]
        worst = max(mine, key=lambda r: (r.ratio, r.error), default=None)
        numeric_ok = all(r.passed for r in mine) and key not in collector.failed_statements
        # a proof alone is not enough: every statement is also checked numerically (a run that selected
        # no example of it, `-k ...`, leaves it unverified)
        verified = (symbolic is not False) and numeric_ok and bool(mine)
        rows.append(Row(key, reference, statement, symbolic, len(mine),
                        None if worst is None else worst.error, None if worst is None else worst.bound,
                        verified))
    return rows


def _short(text: str, width: int) -> str:
    return textwrap.shorten(text, width, placeholder="...")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def format_table(rows: list[Row]) -> str:
    header = f"{'statement':<25} {'reference':<24} {'claim':<44} {'sympy':<6} {'examples':>8} " \
             f"{'worst error':>11} {'bound':>9} {'ratio':>6}  verdict"
    lines = [header, "-" * len(header)]
    for row in rows:
        symbolic = {True: "ok", False: "FAIL", None: "n/a"}[row.symbolic]
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}" if math.isfinite(row.ratio) else "inf"
        verdict = "verified" if row.verified else "NOT VERIFIED"
        lines.append(f"{row.id:<25} {_short(row.reference, 24):<24} {_short(row.statement, 44):<44} "
                     f"{symbolic:<6} {row.examples:>8} {_num(row.worst_error):>11} {_num(row.bound):>9} "
                     f"{ratio:>6}  {verdict}")
    return "\n".join(lines)


def run(profile: str = "ci", json_path: str | None = None, pytest_args: tuple[str, ...] = ()) -> int:
    """Run the suite under `profile`, print the table, write the JSON; the process's exit code."""
    os.environ["HYPOTHESIS_PROFILE"] = profile
    from verify import assertions

    assertions.RECORDS.clear()
    collector = Collector()
    start = time.perf_counter()
    exit_code = pytest.main([str(VERIFY_DIR), "-q", "-p", "no:cacheprovider", *pytest_args],
                            plugins=[collector])
    elapsed = time.perf_counter() - start
    # an expected failure (a known impl bug, marked xfail strict) is reported, not counted as evidence
    records = [r for r in assertions.RECORDS if r.test not in collector.xfailed]
    rows = build_rows(records, collector)
    verified = exit_code == 0 and all(row.verified for row in rows)
    print()
    print(format_table(rows))
    examples = sum(row.examples for row in rows)
    failed = [row.id for row in rows if not row.verified]
    summary = (f"{'VERIFIED' if verified else 'NOT VERIFIED'}: {sum(r.verified for r in rows)}/{len(rows)} "
               f"statements, {examples} numeric examples, {collector.passed} tests passed, "
               f"{len(collector.failed_tests)} failed, {len(collector.xfailed)} known impl bugs (xfail), "
               f"profile {profile}, {elapsed:.0f} s")
    if failed:
        summary += f"; not verified: {', '.join(failed)}"
    if collector.failed_tests:
        summary += f"; failing tests: {', '.join(collector.failed_tests)}"
    if collector.xfailed:
        summary += f"; known impl bugs: {', '.join(collector.xfailed)}"
    print("worst error: the error at the entry with the largest error/bound ratio over all examples; "
          "bound: that entry's bound")
    print(summary)
    if json_path:
        payload = {"verified": verified, "profile": profile, "examples": examples,
                   "seconds": round(elapsed, 1), "known_impl_bugs": collector.xfailed,
                   "statements": [{k: v for k, v in asdict(row).items()} for row in rows]}
        Path(json_path).write_text(json.dumps(payload, indent=2, allow_nan=False, default=_json_default) + "\n")
    return 0 if verified else 1


def _json_default(value):
    raise TypeError(f"not JSON serialisable: {value!r}")
