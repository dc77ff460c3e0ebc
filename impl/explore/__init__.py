"""Attention explorer: one self-contained static HTML page per run (the paper's interactive website).

    python -m impl.explore RUN_DIR --out DIR        # writes DIR/index.html; open it in any browser

Pick a test image, a layer, a head and a query pixel by clicking, and see that head's attention over the
image; beside it, the layer's attention centres (with their training trajectories from centres.csv when the
run has one) and each head's mass on its nearest pixel. Everything is embedded in the page (no server, no
network): the test images and the attention maps as base64 PNGs, the rest as JSON. Positional maps are the
same for every image and stored once; content maps differ per image and are stored per embedded image.

Maps are quantised to uint8 per query: each query's row holds round(255 p_k / max_k p_k) for every key and,
in one extra column, round(255 max_k p_k), so the page can show both the shape and the peak probability.

`payload.build_payload` computes the data, `page.render` writes the page.
"""

from .page import render
from .payload import build_payload, png_bytes

__all__ = ["build_payload", "png_bytes", "render", "write_page"]


def write_page(run_dir, out_dir, **kwargs):
    """Build the payload of `run_dir` and write `out_dir`/index.html; returns its path."""
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "index.html"
    path.write_text(render(build_payload(run_dir, **kwargs)), encoding="utf-8")
    return path
