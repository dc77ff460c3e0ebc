"""impl.allocator: with it, a big tensor allocated again after being freed costs no page faults; without
it (or with ATTENTION_CNN_MALLOC=system) it does. Each case runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from impl.allocator import ENV

# 40 cycles of a 64 MiB tensor (over glibc's largest mmap threshold) allocated, written and freed, with
# small Python objects made in between; the faults of the last 5 cycles are the steady state (retained, the
# heap settles after a few cycles of fragmentation; by glibc's defaults every cycle faults the block in).
PROBE = """
import json, resource, sys, torch
from impl.allocator import retain_freed_memory
took = retain_freed_memory() if sys.argv[1] == "call" else None
for cycle in range(40):
    if cycle == 35:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(16 << 20)
    t.fill_(1.0)
    str(t.data_ptr())
    del t
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
print(json.dumps({"took": took, "faults": faults}))
"""

glibc_linux = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                                 reason="glibc on Linux only")


def _probe(mode: str, env_value: str | None = None) -> dict:
    env = dict(os.environ)
    env.pop(ENV, None)
    if env_value is not None:
        env[ENV] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_linux
def test_a_freed_big_tensor_is_reused_without_page_faults():
    pages = (64 << 20) // 4096
    without = _probe("skip")
    assert without["faults"] > pages // 2, "glibc's defaults should fault a fresh 64 MiB block in"
    retained = _probe("call")
    assert retained["took"] is True
    assert retained["faults"] < pages // 20


@glibc_linux
def test_the_environment_can_keep_glibc_defaults():
    result = _probe("call", "system")
    assert result["took"] is False
    assert result["faults"] > (64 << 20) // 4096 // 2


def test_a_bad_setting_is_a_value_error_naming_the_variable(monkeypatch):
    from impl.allocator import retain_freed_memory

    monkeypatch.setenv(ENV, "jemalloc")
    with pytest.raises(ValueError, match="ATTENTION_CNN_MALLOC must be 'retain' or 'system'"):
        retain_freed_memory()
