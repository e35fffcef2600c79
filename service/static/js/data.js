// Synthetic data sets: a page of /augment's labelled set as .npz, from the current seed and truncation
// (whole sets written on the server in shards are jobs.js's).

import { call, clearErrors, guarded } from "./api.js";
import { $, number, save } from "./form.js";

let model = null;

function augmentBody() {
  const names = model.manifest.class_names;
  const rows = number("aug-rows");
  const body = {
    model: model.name, version: model.version, seed: number("seed"), truncation: number("truncation"),
    offset: number("aug-offset"), limit: number("aug-limit"), format: "npz",
  };
  if (names.length) body.per_class = Object.fromEntries(names.map((n) => [n, rows]));
  else body.n = rows;
  return body;
}

async function augment() {
  if (!model?.manifest) return;
  const body = augmentBody();
  clearErrors();
  $("augment-status").textContent = "";
  $("augment-status").dataset.state = "loading";
  await guarded("building the synthetic page", async () => {
    const response = await call("POST", "/augment", body);
    const blob = await response.blob();
    const h = (name) => response.headers.get(name);
    const start = Number(h("X-Sample-Start"));
    const count = Number(h("X-Sample-Count"));
    const name = `${h("X-Model")}-v${h("X-Model-Version")}-augment-seed${h("X-Seed")}-rows${start}-${start + count - 1}.npz`;
    save(blob, name);
    $("augment-status").textContent =
      `Downloaded ${name}: rows ${start}–${start + count - 1} of ${h("X-Total-Rows")} (x, y, seed, index), ${blob.size} bytes.`;
    $("augment-status").dataset.state = "ready";
  });
}

export function setup(chosen) {
  model = chosen;
  const conditional = (chosen.manifest?.class_names ?? []).length > 0;
  $("aug-rows-label").textContent = conditional ? "Rows per class" : "Rows in the set";
  $("augment").textContent = `Download page (.npz)`;
}

export function init() {
  $("augment-form").addEventListener("submit", (event) => { event.preventDefault(); augment(); });
}
