// The playground: model and version picker, samples on open, and the panels that follow the chosen model.

import { apiKey, clearErrors, guarded, json, setApiKey } from "./api.js";
import * as data from "./data.js";
import * as edit from "./edit.js";
import * as interp from "./interp.js";
import * as jobs from "./jobs.js";
import { nearest, showPoints } from "./scatter.js";
import { $, fillClasses, number } from "./form.js";
import { showDetail, tilesOf } from "./tiles.js";

let models = [];
let asked = 0; // /generate requests sent: only the latest one's answer is shown
let pending = null; // the body of the latest one, until it is answered

// The chosen model version: { name, version, manifest, info } (info: its entry in GET /models).
function current() {
  const model = models.find((m) => m.name === $("model").value);
  if (!model) return null;
  const info = model.versions.find((v) => String(v.version) === $("version").value) ?? model.versions[0];
  return { name: model.name, version: info.version, manifest: info.manifest, info };
}

function classNames() {
  return current()?.manifest?.class_names ?? [];
}

function versionText(v) {
  const gates = v.quality ? (v.quality.passed ? "gates passed" : "gates failed") : "no gates";
  const provider = v.provider ? v.provider.replace("ExecutionProvider", "") : "";
  return `v${v.version}${v.default ? " (default)" : ""} · ${v.status} · ${provider} · ${gates}`;
}

function infoTable(title, rows) {
  const table = document.createElement("table");
  table.createCaption().textContent = title;
  for (const cells of rows) {
    const tr = table.insertRow();
    cells.forEach((cell, i) => {
      const td = document.createElement(i ? "td" : "th");
      if (cell instanceof Node) td.append(cell); else td.textContent = cell;
      tr.append(td);
    });
  }
  return table;
}

function showInfo() {
  const { info, manifest } = current();
  const facts = [
    ["status", info.reason ? `${info.status}: ${info.reason}` : info.status],
    ["provider", info.provider ?? "-"],
    ["kind", manifest ? `${manifest.kind}, output ${manifest.output_shape.join("×")}, z ${manifest.z_dim}` : "-"],
    ["trained", manifest ? `${manifest.training.preset} on ${manifest.training.data}, ${manifest.training.steps} steps` : "-"],
    ["editing", info.editing.available ? `yes (encoder on ${info.editing.provider})` : `no: ${info.editing.reason}`],
  ];
  const parts = [infoTable("Version", facts)];
  if (info.quality) {
    const all = info.quality.metrics;
    const shown = (v) => String(+v.toFixed(4));
    const metrics = Object.entries(all).filter(([k]) => !k.endsWith("_se") && !k.endsWith("_floor"));
    const rows = metrics.map(([k, v]) => [k, shown(v) + (`${k}_floor` in all ? ` (real-vs-real floor ${shown(all[`${k}_floor`])})` : "")]);
    parts.push(infoTable("Quality metrics", rows));
    const gates = info.quality.gates.map((g) => {
      const verdict = document.createElement("span");
      verdict.className = g.passed ? "pass" : "fail";
      verdict.textContent = `${g.passed ? "✓ pass" : "✗ fail"} (${g.value ?? "missing"})`;
      return [`${g.metric} ${g.op} ${g.threshold}`, verdict];
    });
    parts.push(infoTable("Gates", gates.length ? gates : [["none", ""]]));
  }
  $("model-info").replaceChildren(...parts);
}

function fillVersions() {
  const model = models.find((m) => m.name === $("model").value);
  $("version").replaceChildren(...model.versions.map((v) => new Option(versionText(v), v.version)));
  $("version").value = String(model.default_version ?? model.versions[0].version);
}

// A new model or version: every panel follows it, then samples come at once.
async function chosen() {
  const { manifest } = current();
  showInfo();
  const names = manifest?.class_names ?? [];
  for (const el of document.querySelectorAll(".cond")) el.hidden = names.length === 0;
  fillClasses($("label"), names, true);
  const vector = manifest?.kind === "vector";
  if (vector && number("n") <= 64) $("n").value = "512";
  if (!vector && number("n") > 64) $("n").value = "16";
  edit.setup(current());
  data.setup(current());
  jobs.setup(current());
  await generate();
  await interp.setup(current()); // after the samples: a 2-D path is drawn over their plot
}

async function generate() {
  const model = current();
  if (!model?.manifest) return;
  const label = $("label").value;
  const body = { model: model.name, version: model.version, seed: number("seed"), n: number("n"), truncation: number("truncation"), format: "png" };
  if (model.manifest.kind === "vector") body.format = "json";
  if (label && classNames().length) body.labels = label;
  const key = JSON.stringify(body);
  if (key === pending) return; // the same request is on its way (Enter both changes and submits)
  pending = key;
  const mine = ++asked;
  $("grid").dataset.state = "loading"; // "ready" once the answer is shown (the browser tests wait for it)
  const answer = await guarded("generating", () => json("POST", "/generate", body), () => mine === asked);
  if (mine !== asked) return; // a later request replaced this one
  pending = null;
  if (answer) {
    const vector = model.manifest.kind === "vector";
    $("grid").hidden = vector;
    $("scatter-box").hidden = !vector;
    if (vector) showPoints(answer, model.manifest);
    else $("grid").replaceChildren(...tilesOf(answer, classNames()));
  }
  $("grid").dataset.state = answer ? "ready" : "failed";
}

async function loadModels() {
  clearErrors();
  $("grid").dataset.state = "loading";
  const answer = await guarded("loading models", () => json("GET", "/models"));
  if (!answer) return;
  models = answer.models.filter((m) => m.versions.length);
  $("model").replaceChildren(...models.map((m) => new Option(m.name, m.name)));
  fillVersions();
  jobs.probe();
  await chosen();
}

function init() {
  $("api-key").value = apiKey();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey($("api-key").value.trim());
    loadModels();
  });
  $("model").addEventListener("change", () => { clearErrors(); fillVersions(); chosen(); });
  $("version").addEventListener("change", () => { clearErrors(); chosen(); });
  const again = () => { clearErrors(); generate(); };
  $("sample-form").addEventListener("submit", (event) => { event.preventDefault(); again(); });
  for (const id of ["seed", "n", "truncation", "label"]) $(id).addEventListener("change", again);
  $("scatter").addEventListener("click", (event) => {
    const point = nearest(event);
    if (point) showDetail(null, point);
  });
  interp.init();
  edit.init();
  data.init();
  jobs.init();
  loadModels();
}

init();
