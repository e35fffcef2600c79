// Dataset jobs (/datasets), shown only when the server's OpenAPI schema has the path: a job started from the
// current settings (model, version, seed, truncation; a class or every class → per_class, or n for
// unconditional models; rows per shard and the format), the server's jobs with their state, and cancel or
// delete. The watched job's progress, shards and metadata are watch.js's.

import { call, clearErrors, guarded, json } from "./api.js";
import { $, number } from "./form.js";
import * as watch from "./watch.js";

let model = null;
let listed = 0; // GET /datasets requests sent: only the latest answer is shown

const classNames = () => model?.manifest?.class_names ?? [];

function jobBody() {
  const rows = number("ds-rows");
  const body = {
    model: model.name, version: model.version, seed: number("seed"), truncation: number("truncation"),
    shard_rows: number("ds-shard-rows"), format: $("ds-format").value,
  };
  if (classNames().length) {
    const chosen = $("ds-class").value ? [$("ds-class").value] : classNames();
    body.per_class = Object.fromEntries(chosen.map((name) => [name, rows]));
  } else {
    body.n = rows;
  }
  return body;
}

function describeSettings() {
  if (!model?.manifest) {
    $("ds-from").textContent = "No model version is ready to write a set from.";
    return;
  }
  const seed = number("seed") ?? "chosen by the server";
  const classes = classNames().length ? ` · ${$("ds-class").value || "every class"}` : "";
  $("ds-from").textContent =
    `From the current settings: ${model.name} v${model.version} · seed ${seed} · truncation ${number("truncation") ?? "off"}${classes}.`;
}

async function start() {
  if (!model?.manifest) return;
  clearErrors();
  $("ds-status").textContent = "";
  $("ds-form").dataset.state = "loading";
  const job = await guarded("starting a dataset job", () => json("POST", "/datasets", jobBody()));
  $("ds-form").dataset.state = job ? "ready" : "failed";
  if (!job) {
    $("ds-status").textContent = `Not started: ${$("errors").lastElementChild?.textContent ?? ""}`;
    return;
  }
  $("ds-status").textContent = `Started job ${job.id}: ${job.rows_total} rows in ${job.shards_total} shards.`;
  watch.follow(job.id, job);
  await list();
}

function button(text, label, action) {
  const el = document.createElement("button");
  Object.assign(el, { type: "button", textContent: text });
  el.setAttribute("aria-label", label);
  el.addEventListener("click", action);
  return el;
}

const rowsText = (s) => `${s.rows_done} / ${s.rows_total}`;

function jobRow(s) {
  const tr = document.createElement("tr");
  tr.dataset.id = s.id;
  tr.dataset.state = s.state;
  const created = s.created_at.slice(0, 19).replace("T", " ");
  for (const text of [s.id, `${s.model} v${s.version}`, s.format, s.state, rowsText(s), created]) {
    tr.insertCell().textContent = text;
  }
  tr.cells[3].className = { done: "pass", failed: "fail" }[s.state] ?? "";
  const running = s.state === "running";
  const verb = running ? "Cancel" : "Delete";
  tr.insertCell().append(
    button("Watch", `Watch job ${s.id}`, () => watch.follow(s.id)),
    button(verb, `${verb} job ${s.id}${running ? " (and delete it)" : ""}`, () => remove(s.id, running)),
  );
  return tr;
}

// The watched job's row follows its status without a new listing.
function updateRow(s) {
  const tr = $("ds-list").querySelector(`tr[data-id="${s.id}"]`);
  if (tr && tr.dataset.state === s.state) tr.cells[4].textContent = rowsText(s);
  else if (tr) tr.replaceWith(jobRow(s));
}

async function list() {
  const mine = ++listed;
  $("ds-list").dataset.state = "loading";
  const answer = await guarded("listing dataset jobs", () => json("GET", "/datasets"), () => mine === listed);
  if (mine !== listed) return;
  if (answer) {
    const rows = answer.datasets.map(jobRow).reverse(); // newest first
    $("ds-list").tBodies[0].replaceChildren(...rows);
    $("ds-list").hidden = rows.length === 0;
    $("ds-empty").hidden = rows.length > 0;
  }
  $("ds-list").dataset.state = answer ? "ready" : "failed";
}

async function remove(id, running) {
  clearErrors();
  await watch.unwatch(id); // no status request of it crosses the delete
  const done = await guarded(`${running ? "cancelling" : "deleting"} job ${id}`, () => call("DELETE", `/datasets/${id}`));
  if (done) $("ds-status").textContent = `${running ? "Cancelled and deleted" : "Deleted"} job ${id} and its shards.`;
  await list();
}

// A new model or version: the form follows it.
export function setup(chosen) {
  model = chosen;
  const names = classNames();
  $("ds-rows-label").textContent = names.length ? "Rows per class" : "Rows in the set";
  $("ds-class").replaceChildren(new Option("every class", ""), ...names.map((name) => new Option(name, name)));
  $("ds-start").disabled = !chosen.manifest;
  describeSettings();
}

// Shows the panel if the server's schema has /datasets, with its jobs.
export async function probe() {
  $("jobs").dataset.state = "loading";
  const schema = await guarded("reading the API schema", () => json("GET", "/openapi.json"));
  const offered = !!schema && Object.keys(schema.paths).some((p) => p === "/datasets" || p.startsWith("/datasets/"));
  $("jobs").hidden = !offered;
  if (offered) await list();
  else await watch.unwatch();
  watch.panelChanged();
  $("jobs").dataset.state = "ready";
}

export function init() {
  $("ds-form").addEventListener("submit", (event) => { event.preventDefault(); start(); });
  $("ds-refresh").addEventListener("click", () => { clearErrors(); list(); });
  for (const id of ["seed", "truncation", "ds-class"]) $(id).addEventListener("input", describeSettings);
  watch.init({ status: updateRow, ended: list });
}
