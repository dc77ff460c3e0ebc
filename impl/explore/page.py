"""The explorer's page: one HTML file with its style, script and data inline (no request leaves the page).

State: image, layer, head and query pixel (token row, column). The main canvas shows the image with the
selected head's attention from the query drawn over it (viridis, opacity growing with the probability
relative to the row's peak) and the query outlined in red; the strip below shows every head of the layer for
the same query; the centre plot shows the layer's attention centres (filled: the encoding's parameter, when it
has one; rings: the measured mean offset over interior queries) and their training tracks. Clicks on the
thumbnails, the layer and head buttons, the main canvas, the strip and the centre plot change the state.

The main canvas carries the state in data attributes (data-image, data-layer, data-head, data-query,
data-map-hash: a hash of the map drawn), and <body data-ready="1"> is set once every map is decoded, so a
test (tests/test_explore.py) can drive the page in a real browser.
"""

from __future__ import annotations

import html
import json

STYLE = """
:root { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; background: #fafafa; }
body { margin: 16px 24px; }
h1 { font-size: 18px; margin: 0 0 4px; }
p.meta, p.help { margin: 2px 0; font-size: 13px; color: #555; }
.bar { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; margin: 8px 0; font-size: 13px; }
.bar .label { width: 56px; color: #555; }
button { font: inherit; font-size: 12px; padding: 3px 9px; border: 1px solid #bbb; border-radius: 4px;
         background: #fff; cursor: pointer; }
button.active { background: #2c728e; border-color: #2c728e; color: #fff; }
canvas.thumb { width: 48px; height: 48px; image-rendering: pixelated; border: 2px solid transparent;
               cursor: pointer; }
canvas.thumb.active { border-color: #d62728; }
.row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
figure { margin: 0; }
figcaption { font-size: 13px; color: #333; margin-top: 4px; max-width: 420px; }
#view { width: 400px; height: 400px; cursor: crosshair; image-rendering: pixelated; background: #000; }
#centres { width: 320px; height: 320px; background: #fff; border: 1px solid #ddd; cursor: pointer; }
#strip { display: flex; flex-wrap: wrap; gap: 8px; margin-top: 12px; }
#strip figure { text-align: center; font-size: 11px; cursor: pointer; }
#strip canvas { width: 84px; height: 84px; image-rendering: pixelated; border: 2px solid transparent; }
#strip figure.active canvas { border-color: #d62728; }
table { border-collapse: collapse; font-size: 12px; margin-top: 8px; }
td, th { padding: 1px 8px; text-align: right; border-bottom: 1px solid #eee; }
tr.active td { background: #fde7e7; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 50%; }
"""

SCRIPT = r"""
"use strict";
const P = JSON.parse(document.getElementById("payload").textContent);
const [GH, GW] = P.grid;
const NK = GH * GW;
const Q = P.stored_rows.length * P.stored_cols.length;
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"];
const VIRIDIS = [[68, 1, 84], [71, 45, 123], [59, 82, 139], [44, 114, 142], [33, 145, 140],
                 [40, 174, 128], [94, 201, 98], [173, 220, 48], [253, 231, 37]];
const state = { image: 0, layer: 0, head: 0, query: [Math.floor(GH / 2), Math.floor(GW / 2)] };
const maps = [];     // maps[layer][copy] = Uint8Array of (heads * Q) rows x (NK + 1)
const pictures = []; // decoded test images (HTMLImageElement)

function viridis(t) {
  const x = Math.min(Math.max(t, 0), 1) * (VIRIDIS.length - 1);
  const i = Math.min(Math.floor(x), VIRIDIS.length - 2), f = x - i;
  return VIRIDIS[i].map((c, k) => Math.round(c + f * (VIRIDIS[i + 1][k] - c)));
}
function colour(h) { return COLOURS[h % COLOURS.length]; }

async function loadImage(url) {
  const img = new Image();
  img.src = url;
  await img.decode();
  return img;
}
async function decodeMap(url) {
  const img = await loadImage(url);
  const canvas = document.createElement("canvas");
  canvas.width = img.width; canvas.height = img.height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(img, 0, 0);
  const rgba = ctx.getImageData(0, 0, img.width, img.height).data;
  const grey = new Uint8Array(img.width * img.height);
  for (let i = 0; i < grey.length; i++) grey[i] = rgba[4 * i];
  return grey;
}

function storedQuery(query) {
  // the stored query nearest to the clicked one (every query when stride = 1)
  const near = (list, v) => list.reduce((best, x, i) => Math.abs(x - v) < Math.abs(list[best] - v) ? i : best, 0);
  const i = near(P.stored_rows, query[0]), j = near(P.stored_cols, query[1]);
  return { index: i * P.stored_cols.length + j, row: P.stored_rows[i], col: P.stored_cols[j] };
}
function mapRow(layer, image, head, query) {
  const L = P.layers[layer];
  const data = maps[layer][L.content ? image : 0];
  const row = head * Q + storedQuery(query).index;
  const start = row * (NK + 1);
  return { values: data.subarray(start, start + NK), peak: data[start + NK] / 255 };
}
function hash(values) {
  let h = 2166136261;
  for (let i = 0; i < values.length; i++) { h ^= values[i]; h = Math.imul(h, 16777619) >>> 0; }
  return h.toString(16);
}

function drawMap(ctx, size, values, withImage) {
  const cw = size / GW, ch = size / GH;
  if (withImage) {
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(pictures[state.image], 0, 0, size, size);
    ctx.fillStyle = "rgba(0, 0, 0, 0.35)";
    ctx.fillRect(0, 0, size, size);
  } else {
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, size, size);
  }
  for (let k = 0; k < NK; k++) {
    const v = values[k] / 255;
    if (withImage && v === 0) continue;
    const [r, g, b] = viridis(v);
    ctx.fillStyle = withImage ? `rgba(${r}, ${g}, ${b}, ${0.15 + 0.8 * v})` : `rgb(${r}, ${g}, ${b})`;
    ctx.fillRect((k % GW) * cw, Math.floor(k / GW) * ch, Math.ceil(cw), Math.ceil(ch));
  }
  const q = storedQuery(state.query);
  ctx.strokeStyle = "#ff2020"; ctx.lineWidth = Math.max(2, size / 160);
  ctx.strokeRect(q.col * cw + 1, q.row * ch + 1, cw - 2, ch - 2);
}

function drawView() {
  const canvas = document.getElementById("view");
  const ctx = canvas.getContext("2d");
  const { values, peak } = mapRow(state.layer, state.image, state.head, state.query);
  drawMap(ctx, canvas.width, values, true);
  const q = storedQuery(state.query);
  Object.assign(canvas.dataset, { image: state.image, layer: state.layer, head: state.head,
                                  query: `${q.row},${q.col}`, mapHash: hash(values) });
  const L = P.layers[state.layer], img = P.images[state.image];
  document.getElementById("caption").textContent =
    `test image ${state.image} (label ${img.label}, predicted ${img.predicted}) · layer ${state.layer + 1} ` +
    `(${L.encoding}${L.content ? " + content" : ""}) · head ${state.head + 1} · query row ${q.row}, column ` +
    `${q.col} · peak p = ${peak.toFixed(3)}` + (L.content ? "" : " · positional: the same on every image");
}

function drawStrip() {
  const strip = document.getElementById("strip");
  const L = P.layers[state.layer];
  strip.innerHTML = "";
  for (let h = 0; h < L.heads; h++) {
    const fig = document.createElement("figure");
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 8 * Math.max(GW, GH);
    drawMap(canvas.getContext("2d"), canvas.width, mapRow(state.layer, state.image, h, state.query).values, false);
    const cap = document.createElement("figcaption");
    cap.innerHTML = `<span class="swatch" style="background:${colour(h)}"></span> head ${h + 1}`;
    fig.append(canvas, cap);
    fig.dataset.head = h;
    if (h === state.head) fig.classList.add("active");
    fig.addEventListener("click", () => select({ head: h }));
    strip.append(fig);
  }
}

let centreGeometry = null;
function drawCentres() {
  const canvas = document.getElementById("centres");
  const ctx = canvas.getContext("2d");
  const L = P.layers[state.layer];
  const size = canvas.width;
  const points = (L.parameter_centres || L.measured_centres);
  let reach = 2;
  const all = points.concat(L.measured_centres, ...L.tracks.filter((t) => t));
  for (const c of all) reach = Math.max(reach, Math.abs(c[0]) + 0.7, Math.abs(c[1]) + 0.7);
  reach = Math.min(Math.ceil(reach), Math.max(GH, GW));
  const scale = (size - 40) / (2 * reach);
  const X = (col) => size / 2 + col * scale, Y = (row) => size / 2 + row * scale;
  centreGeometry = { X, Y, points };
  ctx.clearRect(0, 0, size, size);
  ctx.strokeStyle = "#ddd"; ctx.lineWidth = 1;
  for (let v = -reach; v <= reach; v++) {
    ctx.beginPath(); ctx.moveTo(X(v), Y(-reach)); ctx.lineTo(X(v), Y(reach)); ctx.stroke();
    ctx.beginPath(); ctx.moveTo(X(-reach), Y(v)); ctx.lineTo(X(reach), Y(v)); ctx.stroke();
  }
  ctx.strokeStyle = "#888"; ctx.setLineDash([4, 3]);
  ctx.strokeRect(X(-1.5), Y(-1.5), 3 * scale, 3 * scale);  // the 3x3 kernel's taps
  ctx.setLineDash([]);
  ctx.fillStyle = "#555"; ctx.font = "11px sans-serif";
  ctx.fillText("column offset →", size - 100, size - 6);
  ctx.save(); ctx.translate(10, 90); ctx.rotate(-Math.PI / 2); ctx.fillText("← row offset", 0, 0); ctx.restore();
  ctx.fillText(`±${reach}`, 4, 12);
  L.tracks.forEach((track, h) => {
    if (!track) return;
    ctx.strokeStyle = colour(h); ctx.globalAlpha = 0.6; ctx.lineWidth = 1.2; ctx.beginPath();
    track.forEach((c, i) => i ? ctx.lineTo(X(c[1]), Y(c[0])) : ctx.moveTo(X(c[1]), Y(c[0])));
    ctx.stroke(); ctx.globalAlpha = 1;
  });
  L.measured_centres.forEach((c, h) => {
    ctx.strokeStyle = colour(h); ctx.lineWidth = 1.5;
    ctx.beginPath(); ctx.arc(X(c[1]), Y(c[0]), 7, 0, 2 * Math.PI); ctx.stroke();
  });
  points.forEach((c, h) => {
    ctx.fillStyle = colour(h);
    ctx.beginPath(); ctx.arc(X(c[1]), Y(c[0]), 5, 0, 2 * Math.PI); ctx.fill();
    if (h === state.head) {
      ctx.strokeStyle = "#000"; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.arc(X(c[1]), Y(c[0]), 9, 0, 2 * Math.PI); ctx.stroke();
    }
  });
  ctx.strokeStyle = "#000"; ctx.lineWidth = 1.5;
  ctx.beginPath(); ctx.moveTo(X(0) - 5, Y(0)); ctx.lineTo(X(0) + 5, Y(0)); ctx.moveTo(X(0), Y(0) - 5);
  ctx.lineTo(X(0), Y(0) + 5); ctx.stroke();

  const rows = ["<tr><th>head</th><th>centre (row, col)</th><th>nearest mass</th><th>peak at</th>" +
                "<th>peak mass</th><th>spread</th><th>distance</th></tr>"];
  L.measured_centres.forEach((c, h) => {
    rows.push(`<tr class="${h === state.head ? "active" : ""}">` +
              `<td><span class="swatch" style="background:${colour(h)}"></span> ${h + 1}</td>` +
              `<td>(${c[0].toFixed(2)}, ${c[1].toFixed(2)})</td><td>${L.nearest_mass[h].toFixed(3)}</td>` +
              `<td>(${L.peak_shift[h].join(", ")})</td><td>${L.peak_mass[h].toFixed(3)}` +
              `${L.peak_mass[h] >= 0.5 ? " *" : ""}</td>` +
              `<td>${L.spread[h].toFixed(2)}</td><td>${L.distance[h].toFixed(2)}</td></tr>`);
  });
  document.getElementById("heads-table").innerHTML = rows.join("");
}

function drawButtons() {
  document.querySelectorAll("#layers button")
    .forEach((b) => b.classList.toggle("active", +b.dataset.layer === state.layer));
  document.querySelectorAll("canvas.thumb")
    .forEach((c) => c.classList.toggle("active", +c.dataset.image === state.image));
  const heads = document.getElementById("heads");
  heads.innerHTML = "";
  for (let h = 0; h < P.layers[state.layer].heads; h++) {
    const b = document.createElement("button");
    b.textContent = h + 1; b.dataset.head = h;
    b.style.borderBottom = `3px solid ${colour(h)}`;
    if (h === state.head) b.classList.add("active");
    b.addEventListener("click", () => select({ head: h }));
    heads.append(b);
  }
}

function select(change) {
  Object.assign(state, change);
  state.head = Math.min(state.head, P.layers[state.layer].heads - 1);
  drawButtons(); drawView(); drawStrip(); drawCentres();
}

function tokenAt(canvas, event) {
  const box = canvas.getBoundingClientRect();
  const col = Math.floor((event.clientX - box.left) / box.width * GW);
  const row = Math.floor((event.clientY - box.top) / box.height * GH);
  return [Math.min(Math.max(row, 0), GH - 1), Math.min(Math.max(col, 0), GW - 1)];
}

async function main() {
  document.getElementById("title").textContent = `${P.run}: ${P.model} on ${P.data}`;
  document.getElementById("meta").textContent =
    `preset ${P.preset} · ${P.checkpoint} (epoch ${P.epoch}) · ${P.grid[0]}×${P.grid[1]} tokens of ` +
    `${P.image_size[0]}×${P.image_size[1]} images · ${P.layers.length} layers` +
    (P.stride > 1 ? ` · content maps stored for every ${P.stride}th query row and column` : "");
  const layerBar = document.getElementById("layers");
  P.layers.forEach((L, i) => {
    const b = document.createElement("button");
    b.textContent = `${i + 1}: ${L.encoding}${L.content ? "+content" : ""}`; b.dataset.layer = i;
    b.addEventListener("click", () => select({ layer: i }));
    layerBar.append(b);
  });
  const thumbs = document.getElementById("images");
  for (let i = 0; i < P.images.length; i++) {
    pictures.push(await loadImage(P.images[i].png));
    const c = document.createElement("canvas");
    c.className = "thumb"; c.dataset.image = i; c.title = `label ${P.images[i].label}`;
    c.width = pictures[i].width; c.height = pictures[i].height;
    c.getContext("2d").drawImage(pictures[i], 0, 0);
    c.addEventListener("click", () => select({ image: i }));
    thumbs.append(c);
  }
  for (const L of P.layers) maps.push(await Promise.all(L.maps.map(decodeMap)));
  const view = document.getElementById("view");
  view.addEventListener("click", (e) => select({ query: tokenAt(view, e) }));
  document.getElementById("centres").addEventListener("click", (e) => {
    if (!centreGeometry) return;
    const box = e.target.getBoundingClientRect();
    const x = (e.clientX - box.left) * e.target.width / box.width;
    const y = (e.clientY - box.top) * e.target.height / box.height;
    let best = -1, dist = 14;
    centreGeometry.points.forEach((c, h) => {
      const d = Math.hypot(centreGeometry.X(c[1]) - x, centreGeometry.Y(c[0]) - y);
      if (d < dist) { dist = d; best = h; }
    });
    if (best >= 0) select({ head: best });
  });
  select({});
  document.body.dataset.ready = "1";
}
main().catch((error) => { document.body.dataset.error = String(error); console.error(error); });
"""

BODY = """
<h1 id="title"></h1>
<p class="meta" id="meta"></p>
<p class="help">Click a test image, a layer, a head (button, strip or centre plot) and a query pixel on the large
image. Offsets are key minus query; rows grow downwards. Colour: attention relative to the query's peak.</p>
<div class="bar"><span class="label">images</span><span id="images"></span></div>
<div class="bar"><span class="label">layer</span><span id="layers"></span></div>
<div class="bar"><span class="label">head</span><span id="heads"></span></div>
<div class="row">
  <figure><canvas id="view" width="480" height="480"></canvas><figcaption id="caption"></figcaption></figure>
  <figure><canvas id="centres" width="320" height="320"></canvas>
    <figcaption>Attention centres of this layer: filled, the encoding's centre parameter (quadratic and
    generalized heads; the measured centre otherwise); rings, the measured mean offset over interior queries
    (and test images, for content heads); lines, the centre during training; dashed box, the 3&times;3
    kernel's taps. Table: interior queries; * conv-like (peak mass &ge; 0.5, as in impl.analyze).</figcaption>
    <table id="heads-table"></table></figure>
</div>
<div id="strip"></div>
"""


def render(payload: dict) -> str:
    """The page for `payload` (impl.explore.payload.build_payload) as one HTML string."""
    data = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")
    title = html.escape(f"attention explorer: {payload.get('run')}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            f"style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\n"
            f"<style>{STYLE}</style>\n</head>\n<body>\n{BODY}\n"
            f"<script id=\"payload\" type=\"application/json\">{data}</script>\n"
            f"<script>{SCRIPT}</script>\n</body>\n</html>\n")
