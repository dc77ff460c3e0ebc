"""Hypothesis profiles of verify/, selected by the environment variable HYPOTHESIS_PROFILE.

- `ci` (default): derandomized (the same examples on every run, so a failure reproduces by rerunning;
  hypothesis implies database=None with derandomize), no deadline, the failing example's blob printed.
  Its example counts give `python -m pytest verify` over 1,000 generated examples in under 3 minutes on
  2 cores.
- `thorough`: random examples, ten times as many, failing examples saved in hypothesis's example
  database (the default directory, .hypothesis/examples) and replayed first on the next run.

Tests size their own budget with `examples(weight)`: weight x the profile's max_examples.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

CI_EXAMPLES = 75
THOROUGH_EXAMPLES = 750
PROFILES = ("ci", "thorough")
_SUPPRESS = (HealthCheck.too_slow, HealthCheck.data_too_large)

settings.register_profile("ci", max_examples=CI_EXAMPLES, derandomize=True, deadline=None,
                          print_blob=True, suppress_health_check=_SUPPRESS)
settings.register_profile("thorough", max_examples=THOROUGH_EXAMPLES, deadline=None, print_blob=True,
                          suppress_health_check=_SUPPRESS)


def load(name: str | None = None) -> str:
    """Load the profile `name` (default: $HYPOTHESIS_PROFILE, else 'ci'); returns its name."""
    name = name or os.environ.get("HYPOTHESIS_PROFILE") or "ci"
    if name not in PROFILES:
        raise ValueError(f"HYPOTHESIS_PROFILE must be one of {PROFILES}, got {name!r}")
    settings.load_profile(name)
    return name


def examples(weight: float) -> settings:
    """A settings decorator running `weight` times the loaded profile's max_examples (at least 1)."""
    return settings(max_examples=max(1, round(settings.default.max_examples * weight)))
