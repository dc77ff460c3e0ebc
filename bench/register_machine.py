"""Register a machine recorded under bench/results/ with asv, under its committed description:
`python -m bench.register_machine NAME`, before `asv run --machine NAME`.

asv stamps every result with the description it holds for the machine in ~/.asv-machine.json, and
`asv publish` draws results whose descriptions differ as separate lines. A fresh home directory knows
none of the machines recorded here, and `asv machine --yes` describes a machine anew ("AMD EPYC", the
kernel's version; over what the file held), so a run of an old machine would start a history of its own. This copies
bench/results/NAME/machine.json (edited by hand: the CPU's kind, AVX-512 or not, its L2) into asv's
machine file. A machine not recorded yet: `asv machine --yes --machine NAME`, then edit its machine.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MACHINE_FILE = Path("~/.asv-machine.json").expanduser()  # where asv looks (asv.machine.MachineCollection)
MACHINE_FILE_VERSION = 1                                   # its format's version (asv's api_version)


def committed_description(name: str, results: Path = RESULTS) -> dict:
    """bench/results/NAME/machine.json as asv's machine file holds it (without the file's version)."""
    path = results / name / "machine.json"
    if not path.is_file():
        recorded = sorted(p.parent.name for p in results.glob("*/machine.json"))
        raise ValueError(f"machine {name!r} is not recorded under {results}: the recorded machines are "
                         f"{', '.join(recorded) or 'none'} (a new one: asv machine --yes --machine {name})")
    description = {k: v for k, v in json.loads(path.read_text()).items() if k != "version"}
    if description.get("machine") != name:
        raise ValueError(f"{path} describes machine {description.get('machine')!r}, not {name!r}")
    return description


def register(name: str, results: Path = RESULTS, machine_file: Path = MACHINE_FILE) -> dict:
    """Write NAME's committed description into asv's machine file, beside the machines it holds; returns
    it. (The file is written here, not through asv, which the GPU image lacks until its wheel is carried.)"""
    description = committed_description(name, results)
    held = json.loads(machine_file.read_text()) if machine_file.is_file() else {}
    held[name] = description
    held["version"] = MACHINE_FILE_VERSION
    machine_file.write_text(json.dumps(held, indent=4, sort_keys=True))
    return description


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="a directory of bench/results/ (cpu-2core, cpu-2core-xeon, ...)")
    args = parser.parse_args(argv)
    try:
        description = register(args.name)
    except ValueError as error:
        parser.error(str(error))
    print(f"asv machine {args.name}: {description}")


if __name__ == "__main__":
    main()
