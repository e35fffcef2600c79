// 2-D models: samples as points over the modes of the mixture they were trained on (training/data.py's
// ring8, grid25 and gauss2 means, with their σ), an interpolation path, and the point nearest the pointer.

const MIXTURES = {
  ring8: { sigma: 0.01, means: [...Array(8).keys()].map((k) => [Math.cos((2 * Math.PI * k) / 8), Math.sin((2 * Math.PI * k) / 8)]) },
  grid25: { sigma: 0.05, means: [-4, -2, 0, 2, 4].flatMap((x) => [-4, -2, 0, 2, 4].map((y) => [x, y])) },
  gauss2: { sigma: 1.0, means: [[-2, -2], [2, 2]] },
};

const plot = { points: [], path: [], at: -1, modes: null, view: null, provenance: null, start: 0 };

function canvas() {
  return document.getElementById("scatter");
}

// The square the plot shows: the modes and the points, with a margin.
function viewOf(points, modes) {
  const all = [...points, ...(modes ? modes.means : [])];
  let lim = 1;
  for (const [x, y] of all) lim = Math.max(lim, Math.abs(x), Math.abs(y));
  const half = Math.min(lim * 1.15, 50);
  return { half };
}

function toPixel([x, y]) {
  const c = canvas();
  const { half } = plot.view;
  return [((x + half) / (2 * half)) * c.width, ((half - y) / (2 * half)) * c.height];
}

function draw() {
  const c = canvas();
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  g.fillStyle = "#fff";
  g.fillRect(0, 0, c.width, c.height);
  g.strokeStyle = "#d0d7de";
  g.beginPath();
  const [ox, oy] = toPixel([0, 0]);
  g.moveTo(0, oy); g.lineTo(c.width, oy); g.moveTo(ox, 0); g.lineTo(ox, c.height);
  g.stroke();
  if (plot.modes) {
    const r = Math.max(3 * plot.modes.sigma * (c.width / (2 * plot.view.half)), 4); // 3σ: "high quality"
    g.strokeStyle = "#1a7f37";
    for (const m of plot.modes.means) {
      const [px, py] = toPixel(m);
      g.beginPath(); g.arc(px, py, r, 0, 2 * Math.PI); g.stroke();
    }
  }
  g.fillStyle = "rgba(11, 92, 173, 0.55)";
  for (const p of plot.points) {
    const [px, py] = toPixel(p);
    g.fillRect(px - 1.5, py - 1.5, 3, 3);
  }
  if (plot.path.length) {
    g.strokeStyle = "#b45309"; g.lineWidth = 2; g.beginPath();
    plot.path.forEach((p, i) => { const [px, py] = toPixel(p); if (i) g.lineTo(px, py); else g.moveTo(px, py); });
    g.stroke(); g.lineWidth = 1;
    if (plot.at >= 0) {
      const [px, py] = toPixel(plot.path[plot.at]);
      g.fillStyle = "#b45309"; g.beginPath(); g.arc(px, py, 6, 0, 2 * Math.PI); g.fill();
    }
  }
}

function refreshDownloads() {
  document.getElementById("scatter-download").href = canvas().toDataURL("image/png");
  const p = plot.provenance || {};
  const points = JSON.stringify({ ...p, indices: plot.points.map((_, i) => plot.start + i), points: plot.points, path: plot.path });
  document.getElementById("points-download").href = `data:application/json,${encodeURIComponent(points)}`;
  const name = `${p.model}-v${p.version}-seed${p.seed}`;
  document.getElementById("scatter-download").download = `${name}.png`;
  document.getElementById("points-download").download = `${name}.json`;
}

// Samples of `answer` (format json), over the modes of the manifest's training data, if known.
export function showPoints(answer, manifest) {
  const same = plot.provenance && plot.provenance.model === answer.model && plot.provenance.version === answer.version;
  if (!same) { plot.path = []; plot.at = -1; } // a path of this model stays on its new samples
  plot.modes = MIXTURES[manifest.training?.data] ?? null;
  plot.points = answer.data;
  plot.start = answer.indices[0];
  plot.provenance = { model: answer.model, version: answer.version, seed: answer.seed, provider: answer.provider };
  plot.view = viewOf(plot.points, plot.modes);
  const modes = plot.modes ? `, over the ${plot.modes.means.length} modes (circles: 3σ) of ${manifest.training.data}` : "";
  document.getElementById("scatter-caption").textContent =
    `${answer.data.length} samples of ${answer.model} v${answer.version}, seed ${answer.seed}${modes}. Click a point for its provenance.`;
  draw();
  refreshDownloads();
}

export function showPath(points, at) {
  plot.path = points;
  plot.at = at;
  if (plot.view) draw();
}

export function pathAt(at) {
  plot.at = at;
  if (plot.view) draw();
}

// The sample nearest a click: its provenance, as the detail panel shows it.
export function nearest(event) {
  if (!plot.points.length) return null;
  const rect = canvas().getBoundingClientRect();
  const x = ((event.clientX - rect.left) / rect.width) * canvas().width;
  const y = ((event.clientY - rect.top) / rect.height) * canvas().height;
  let best = -1;
  let distance = Infinity;
  plot.points.forEach((p, i) => {
    const [px, py] = toPixel(p);
    const d = (px - x) ** 2 + (py - y) ** 2;
    if (d < distance) { distance = d; best = i; }
  });
  const [a, b] = plot.points[best];
  return { ...plot.provenance, index: plot.start + best, x: a.toFixed(4), y: b.toFixed(4) };
}
