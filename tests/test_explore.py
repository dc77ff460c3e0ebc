"""impl.explore: the page's data equal the layers' attention, and the page works in a real headless browser.

The browser tests drive Debian's chromium through Playwright for Python (Playwright's own browser download is
not used): they click a query pixel, a head, a layer and a test image and check that the map drawn changes
(the canvas's data-map-hash and its pixels) or, for a positional layer and another image, does not. They are
skipped, not failed, where `playwright` or /usr/bin/chromium is missing. Install:

    apt-get install -y chromium
    .venv/bin/pip install -c constraints.txt playwright
"""

from __future__ import annotations

import base64
import io
import json
import sys
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from impl import analyze, checkpoint, explore
from impl.explore.__main__ import main as explore_main
from impl.explore.payload import png_bytes, quantise, query_stride

sys.path.insert(0, str(Path(__file__).parent))
from run_dirs import save_best, start_run  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


DIGITS = dict(in_channels=1, num_classes=10, image_size=[8, 8], downsample=1)
SMALL = dict(dim=16, depth=2, heads=9, mlp_dim=16)
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def make_run(root: Path, name: str, model_name: str, overrides: dict) -> Path:
    """A run directory as impl.train writes it (config.json, checkpoints/best.pt, centres.csv) with an
    untrained model."""
    run, model, config = start_run(root, name, model_name, overrides)
    layers = model.attention_layers()
    if hasattr(layers[0].encoding, "centre"):
        lines = ["step,epoch,layer,head,centre_row,centre_col"]
        for step in range(3):
            for index, layer in enumerate(layers):
                for head, (row, col) in enumerate(layer.encoding.centre.tolist()):
                    lines.append(f"{step},{step},{index},{head},{row * step / 2},{col * step / 2}")
        (run / "centres.csv").write_text("\n".join(lines) + "\n")
    return save_best(run, model, config)


KINDS = {"quadratic": "tiny_quadratic", "generalized": "tiny_generalized", "learned": "tiny_learned",
         "content": "tiny_learned_content"}


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """One explorer page per kind of run: {kind: (run dir, index.html)}."""
    root = tmp_path_factory.mktemp("explore")
    out = {}
    for kind, model_name in KINDS.items():
        run = make_run(root, kind, model_name, DIGITS | SMALL)
        assert explore_main([str(run), "--out", str(root / f"{kind}-page"), "--images", "6"]) == 0
        out[kind] = (run, root / f"{kind}-page" / "index.html")
    return out


def payload_of(page: Path) -> dict:
    text = page.read_text()
    match = re.search(r'<script id="payload" type="application/json">(.*?)</script>', text, re.S)
    return json.loads(match.group(1).replace("<\\/", "</"))


def decode_png(url: str) -> torch.Tensor:
    from PIL import Image

    assert url.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    return torch.from_numpy(np.array(image)).to(torch.uint8)


# -- the data ----------------------------------------------------------------------------------------------------
def test_png_round_trip():
    pytest.importorskip("PIL")
    generator = torch.Generator().manual_seed(0)
    grey = torch.randint(0, 256, (5, 7), generator=generator, dtype=torch.uint8)
    rgb = torch.randint(0, 256, (4, 3, 3), generator=generator, dtype=torch.uint8)
    for pixels in (grey, rgb):
        url = "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode()
        assert torch.equal(decode_png(url), pixels)
    with pytest.raises(ValueError, match="pixels"):
        png_bytes(grey.float())


def test_quantise_keeps_shape_and_peak():
    probs = torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.1, 0.2, 0.3, 0.4]])
    assert quantise(probs).tolist() == [[255, 128, 128, 0, 128], [64, 128, 191, 255, 102]]


@pytest.mark.parametrize("kind", list(KINDS))
def test_stored_maps_are_the_layers_attention(pages, kind):
    """Decoded rows equal p / max p within half a quantisation step, the peaks likewise, for every head and
    query of the first layer (of the first two images for content maps, which differ per image)."""
    pytest.importorskip("PIL")
    run, page = pages[kind]
    payload = payload_of(page)
    assert payload["grid"] == [8, 8] and len(payload["images"]) == 6 and len(payload["layers"]) == 2
    model, _, _ = checkpoint.load_run_model(run)
    config = json.loads((run / "config.json").read_text())
    x, _ = analyze.load_images(config, 6)
    inputs, _ = analyze.capture_layer_io(model, model.attention_layers(), x, 6)
    layer = analyze.float64_copy(model.attention_layers()[0])
    with torch.no_grad():
        probs = analyze.attention_maps(layer, inputs[0][0].double())        # (1 or 6, H, 64, 64)
    stored = payload["layers"][0]["maps"]
    assert len(stored) == (6 if kind == "content" else 1)
    for copy in range(min(2, len(stored))):
        decoded = decode_png(stored[copy]).reshape(9, 64, 65).double()
        expected = probs[copy]
        peak = expected.amax(-1, keepdim=True)
        assert (decoded[..., :64] - 255 * expected / peak).abs().max() <= 0.5 + 1e-6
        assert (decoded[..., 64:] - 255 * peak).abs().max() <= 0.5 + 1e-6
    if kind == "content":
        assert stored[0] != stored[1]
    centres = payload["layers"][0]["parameter_centres"]
    assert (centres is None) == (kind in ("learned", "content"))
    if kind in ("quadratic", "generalized"):
        assert payload["layers"][0]["tracks"][0] is not None


def test_page_is_self_contained_and_small(pages):
    for kind, (_, page) in pages.items():
        text = page.read_text()
        assert not re.search(r"https?://|//cdn|@import|<link", text), kind
        assert "default-src 'none'" in text
        assert page.stat().st_size < 1_000_000, (kind, page.stat().st_size)


def test_content_maps_use_a_coarser_lattice_beyond_the_budget(tmp_path, pages):
    pytest.importorskip("PIL")
    run, _ = pages["content"]
    assert query_stride(9, [8, 8], 12, 10**9) == 1
    payload = explore.build_payload(run, images=2, max_map_bytes=2 * 2 * 9 * 16 * 65)
    assert payload["stride"] == 2 and payload["stored_rows"] == [0, 2, 4, 6]
    assert decode_png(payload["layers"][0]["maps"][0]).shape == (9 * 16, 65)


def test_cli_rejects_bad_runs(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        explore_main([str(tmp_path / "missing"), "--out", str(tmp_path / "page")])
    assert exit_info.value.code == 2
    (tmp_path / "file").write_text("not a directory\n")
    with pytest.raises(SystemExit) as exit_info:  # --out below a file: a usage error before any computation
        explore_main([str(make_resnet_run(tmp_path)), "--out", str(tmp_path / "file" / "page")])
    assert exit_info.value.code == 2
    resnet = tmp_path / "resnet"
    with pytest.raises(SystemExit) as exit_info:
        explore_main([str(resnet), "--out", str(tmp_path / "page")])
    assert exit_info.value.code == 2


def make_resnet_run(root: Path) -> Path:
    run, model, config = start_run(root, "resnet", "tiny_resnet18", dict(in_channels=1, num_classes=10,
                                                                         image_size=[8, 8]))
    return save_best(run, model, config)


# -- in a real browser ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).is_file()):
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, page_path: Path):
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    requests, errors = [], []
    page.on("request", lambda request: requests.append(request.url))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(page_path.as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    return page, requests, errors


def view_state(page) -> dict:
    view = page.locator("#view")
    state = {key: view.get_attribute(f"data-{key}") for key in ("image", "layer", "head", "query", "map-hash")}
    state["pixels"] = page.evaluate("document.getElementById('view').toDataURL()")
    return state


def click_token(page, row: int, col: int, grid: int = 8) -> None:
    box = page.locator("#view").bounding_box()
    page.locator("#view").click(position={"x": (col + 0.5) * box["width"] / grid,
                                          "y": (row + 0.5) * box["height"] / grid})


def test_browser_clicks_change_the_map(browser, pages, tmp_path):
    _, page_path = pages["quadratic"]
    page, requests, errors = open_page(browser, page_path)
    start = view_state(page)
    assert start["query"] == "4,4" and start["head"] == "0" and start["layer"] == "0"

    click_token(page, 1, 6)
    moved = view_state(page)
    assert moved["query"] == "1,6"
    assert moved["map-hash"] != start["map-hash"] and moved["pixels"] != start["pixels"]
    page.screenshot(path=str(tmp_path / "explore-quadratic.png"), full_page=True)

    page.locator("#strip figure").nth(2).click()
    head = view_state(page)
    assert head["head"] == "2" and head["map-hash"] != moved["map-hash"]
    assert page.locator("#heads button.active").inner_text() == "3"

    page.locator("#layers button").nth(1).click()
    assert view_state(page)["layer"] == "1"

    # the centre plot selects the head whose centre is clicked (the one farthest from the others)
    centres = torch.tensor(payload_of(page_path)["layers"][1]["parameter_centres"])
    gaps = torch.cdist(centres, centres) + 1e9 * torch.eye(len(centres))
    target = int(gaps.amin(1).argmax())
    x, y = page.evaluate(f"(() => {{ const c = centreGeometry.points[{target}]; "
                         f"return [centreGeometry.X(c[1]), centreGeometry.Y(c[0])]; }})()")
    page.locator("#centres").click(position={"x": x, "y": y})
    assert view_state(page)["head"] == str(target)

    page.locator("canvas.thumb").nth(3).click()
    other_image = view_state(page)
    assert other_image["image"] == "3"
    page.locator("canvas.thumb").nth(0).click()
    assert view_state(page)["map-hash"] == other_image["map-hash"]  # positional: the same map on every image

    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    assert not errors and page.locator("body").get_attribute("data-error") is None, errors
    page.close()


def test_browser_content_maps_differ_per_image(browser, pages, tmp_path):
    _, page_path = pages["content"]
    page, requests, errors = open_page(browser, page_path)
    click_token(page, 2, 3)
    first = view_state(page)
    page.locator("canvas.thumb").nth(4).click()
    second = view_state(page)
    assert second["image"] == "4" and second["query"] == "2,3"
    assert second["map-hash"] != first["map-hash"]
    page.screenshot(path=str(tmp_path / "explore-content.png"), full_page=True)
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    assert not errors, errors
    page.close()
