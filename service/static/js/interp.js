// Interpolation: a path between two endpoints (seed and class each), a strip of its points and a slider that
// scrubs along it. For 2-D models the path is drawn on the scatter plot.

import { clearErrors, guarded, json } from "./api.js";
import { $, fillClasses, number } from "./form.js";
import { pathAt, showPath } from "./scatter.js";
import { pngSrc, tilesOf } from "./tiles.js";

let model = null;
let answer = null;
let asked = 0; // only the latest request's path is shown

function endpoint(side, names) {
  const point = { seed: number(`${side}-seed`) };
  if (names.length) point.label = $(`${side}-label`).value;
  return point;
}

// Moves the slider's point: the tile it names is marked, shown large, and its t printed.
function scrub() {
  if (!answer) return;
  const at = Number($("scrub").value);
  const t = answer.t[at];
  if (answer.images) {
    $("scrub-img").src = pngSrc(answer.images[at]);
    $("scrub-img").alt = `point ${at} of the path, t = ${t}`;
    $("strip").querySelectorAll(".tile button").forEach((b, i) => b.setAttribute("aria-pressed", String(i === at)));
    $("scrub-t").value = `t = ${t.toFixed(3)}`;
  } else {
    const [x, y] = answer.data[at];
    $("scrub-t").value = `t = ${t.toFixed(3)}: (${x.toFixed(3)}, ${y.toFixed(3)})`;
    pathAt(at);
  }
}

async function run() {
  if (!model?.manifest) return;
  const names = model.manifest.class_names;
  const vector = model.manifest.kind === "vector";
  const start = endpoint("start", names);
  const end = endpoint("end", names);
  const body = {
    model: model.name, version: model.version, start, end, steps: number("steps"),
    method: $("method").value, truncation: number("truncation"), format: vector ? "json" : "png",
  };
  const mine = ++asked;
  $("strip").dataset.state = "loading";
  const result = await guarded("interpolating", () => json("POST", "/interpolate", body), () => mine === asked);
  if (mine !== asked) return; // a later request replaced this one
  if (!result) {
    $("strip").dataset.state = "failed";
    return;
  }
  answer = result;
  const ends = (p) => `seed ${p.seed}${p.label ? ` ${p.label}` : ""}`;
  const path = `${ends(start)} → ${ends(end)} (${body.method})`;
  if (vector) {
    $("strip").replaceChildren();
    showPath(answer.data, 0);
  } else {
    $("strip").replaceChildren(...tilesOf(answer, names, (i) => ({ path, t: answer.t[i], caption: `t ${answer.t[i].toFixed(2)}` })));
  }
  $("scrub").max = String(answer.t.length - 1);
  $("scrub").value = "0";
  $("scrub-row").hidden = false;
  $("scrub-view").hidden = vector;
  $("strip").dataset.state = "ready";
  scrub();
}

export function setup(chosen) {
  model = chosen;
  answer = null;
  const names = chosen.manifest?.class_names ?? [];
  fillClasses($("start-label"), names, false);
  fillClasses($("end-label"), names, false);
  if (names.length) $("end-label").value = names[names.length - 1];
  return run();
}

export function init() {
  $("interp-form").addEventListener("submit", (event) => { event.preventDefault(); clearErrors(); run(); });
  $("scrub").addEventListener("input", scrub);
}
