"""`python -m impl.explore RUN_DIR --out DIR`: write DIR/index.html, the run's attention explorer."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from . import write_page
from .payload import DEFAULT_IMAGES, MAX_MAP_BYTES


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m impl.explore",
                                     description="Write a self-contained HTML page to explore a run's attention maps.")
    parser.add_argument("run", metavar="RUN_DIR", help="a run directory written by impl.train")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory for index.html (created)")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES,
                        help=f"test images embedded in the page (default {DEFAULT_IMAGES})")
    parser.add_argument("--max-map-bytes", type=int, default=MAX_MAP_BYTES,
                        help="budget of the uint8 maps before compression; content runs store a coarser lattice "
                             f"of queries beyond it (default {MAX_MAP_BYTES:,})")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    args = parser.parse_args(argv)
    if not (Path(args.run) / "config.json").is_file():
        parser.error(f"RUN_DIR {args.run!r} is not a run directory (no config.json)")
    if not 1 <= args.images <= 100:
        parser.error(f"--images must be an int in [1, 100], got {args.images}")
    if args.max_map_bytes < 1:
        parser.error(f"--max-map-bytes must be a positive int, got {args.max_map_bytes}")
    try:  # before any computation: a path below a file, or a file, is a usage error
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"--out {args.out!r} cannot be made a directory: {error.strerror or error}")
    which = ("best", "last") if args.checkpoint == "best" else ("last",)
    try:
        path = write_page(args.run, args.out, images=args.images, max_map_bytes=args.max_map_bytes, which=which)
    except ValueError as error:
        parser.error(str(error))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
