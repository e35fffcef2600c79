// Editing through /edit (multipart): an uploaded or dropped image, or the selected sample, beside its
// reconstruction G(E(x)) and the chosen edit.

import { clearErrors, guarded, json, showError } from "./api.js";
import { $, fillClasses } from "./form.js";
import { pngSrc, selectedSample, tile } from "./tiles.js";

let model = null;
let source = null; // { blob, src, name }
let asked = 0; // only the latest edit is shown

function field(labelText, control) {
  const label = document.createElement("label");
  label.htmlFor = control.id;
  label.textContent = labelText;
  return [label, control];
}

function input(id, value, step, min, max) {
  const el = document.createElement("input");
  Object.assign(el, { id, type: "number", value: String(value), step: String(step), inputMode: "decimal" });
  if (min !== undefined) el.min = String(min);
  if (max !== undefined) el.max = String(max);
  return el;
}

function select(id, values) {
  const el = document.createElement("select");
  el.id = id;
  el.replaceChildren(...values.map((v) => new Option(v, v)));
  return el;
}

// The controls of the chosen operation, each with its label.
function showArguments() {
  const op = $("edit-op").value;
  const manifest = model.manifest;
  const parts = [];
  if (op === "label") parts.push(...field("to class", select("edit-class", manifest.class_names)));
  if (op === "direction") {
    parts.push(...field("direction", select("edit-direction", manifest.directions.map((d) => d.name))));
    parts.push(...field("strength", input("edit-strength", 3, 0.5, -100, 100)));
  }
  if (op === "mix_seed") {
    parts.push(...field("toward seed", input("edit-mix-seed", 1, 1, 0)));
    parts.push(...field("t", input("edit-t", 0.5, 0.1, 0, 1)));
  }
  if (op === "truncation") parts.push(...field("psi", input("edit-psi", 0.5, 0.1, 0, 1)));
  if (manifest.class_names.length) {
    const classes = select("edit-source-label", []);
    fillClasses(classes, manifest.class_names, false);
    classes.prepend(new Option("predicted by the encoder", ""));
    classes.value = "";
    parts.push(...field("image's class", classes));
  }
  $("edit-arg").replaceChildren(...parts);
}

// The edit's form fields, as /edit's multipart names them (edit.label=Dress ...).
function editFields() {
  const op = $("edit-op").value;
  if (op === "label") return { "edit.label": $("edit-class").value };
  if (op === "direction") return { "edit.direction": $("edit-direction").value, "edit.strength": $("edit-strength").value };
  if (op === "mix_seed") return { "edit.mix_seed": $("edit-mix-seed").value, "edit.t": $("edit-t").value };
  if (op === "truncation") return { "edit.truncation": $("edit-psi").value };
  return {};
}

function form(fields) {
  const body = new FormData();
  body.append("image", source.blob, source.name);
  body.append("model", model.name);
  body.append("version", String(model.version));
  body.append("resize", "true");
  const label = $("edit-source-label")?.value;
  if (label) body.append("labels", label);
  for (const [k, v] of Object.entries(fields)) body.append(k, v);
  return body;
}

function resultTile(answer, caption) {
  const what = answer.edit.operation === "reconstruct" ? "reconstruct" : JSON.stringify(answer.edit);
  const provenance = {
    model: answer.model, version: answer.version, source: source.name, edit: what,
    class: answer.labels ? (model.manifest.class_names[answer.labels[0]] ?? answer.labels[0]) : undefined,
    provider: answer.provider, encoder_sha256: answer.encoder_sha256, onnx_sha256: answer.onnx_sha256,
  };
  return tile(pngSrc(answer.images[0]), provenance, caption);
}

function showSource() {
  const original = tile(source.src, { model: "(input)", version: "-", source: source.name }, "original");
  $("edit-result").replaceChildren(original);
}

async function run() {
  clearErrors();
  if (!source) {
    showError("Editing: choose or drop an image first, or use the selected sample.");
    return;
  }
  const mine = ++asked;
  $("edit-result").dataset.state = "loading";
  const edit = $("edit-op").value === "reconstruct" ? null : editFields();
  const tiles = await guarded("editing", async () => {
    const reconstruction = await json("POST", "/edit", form({}));
    const shown = [resultTile(reconstruction, "reconstruction")];
    if (edit) shown.push(resultTile(await json("POST", "/edit", form(edit)), "edit"));
    return shown;
  }, () => mine === asked);
  if (mine !== asked) return; // a later request replaced this one
  showSource();
  if (tiles) $("edit-result").append(...tiles);
  $("edit-result").dataset.state = tiles ? "ready" : "failed";
}

function dataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

// A new input image: shown at once, then reconstructed and edited.
async function take(blob, name) {
  $("edit-result").dataset.state = "loading";
  source = { blob, name, src: await dataUrl(blob) };
  showSource();
  return run();
}

export function setup(chosen) {
  model = chosen;
  const info = chosen.info;
  $("edit-form").hidden = !info.editing.available;
  $("edit-off").hidden = info.editing.available;
  $("edit-off").textContent = info.editing.available ? "" : `Editing is not available for this version: ${info.editing.reason}`;
  if (!info.editing.available || !chosen.manifest) return;
  const ops = [["reconstruct", "reconstruct only"]];
  if (chosen.manifest.class_names.length) ops.push(["label", "change the class"]);
  if (chosen.manifest.directions?.length) ops.push(["direction", "move along a named direction"]);
  ops.push(["mix_seed", "mix with a seed"], ["truncation", "truncate toward the mean"]);
  $("edit-op").replaceChildren(...ops.map(([v, t]) => new Option(t, v)));
  $("edit-op").value = ops[1][0];
  showArguments();
  $("edit-result").replaceChildren();
  source = null;
}

export function init() {
  $("edit-op").addEventListener("change", showArguments);
  $("edit-form").addEventListener("submit", (event) => { event.preventDefault(); run(); });
  $("edit-file").addEventListener("change", () => {
    const file = $("edit-file").files[0];
    if (file) take(file, file.name);
  });
  $("edit-use-selected").addEventListener("click", async () => {
    const chosen = selectedSample();
    if (!chosen) {
      clearErrors();
      return showError("Editing: click a sample first to select it.");
    }
    const blob = await (await fetch(chosen.src)).blob();
    return take(blob, `sample-${chosen.provenance.index ?? "selected"}.png`);
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) take(file, file.name);
  });
}
