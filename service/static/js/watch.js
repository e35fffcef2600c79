// The watched dataset job: its progress bar, state, shards (each downloads with its sha256 checked) and the
// Croissant metadata. Polling is one timer at most, and only while the job runs and the panel is in view: it
// stops when the job ends or its status fails to come, pauses while the panel is scrolled away, hidden or the
// tab is in the background, and resumes when the panel is back.

import { call, guarded, json, showError } from "./api.js";
import { $, save } from "./form.js";

const EVERY_MS = 700;
let job = null; // the watched job's id
let running = false; // its last known state is "running"
let timer = null;
let inflight = null; // the status request on its way, if any
let ticket = 0; // answers for an earlier watch are dropped
let inView = false;
let hooks = { status() {}, ended() {} };

function visible() {
  return inView && document.visibilityState === "visible" && !$("jobs").hidden;
}

// The one place a timer is set: the panel says whether it polls ("on", "paused" or "off").
function schedule() {
  clearTimeout(timer);
  timer = null;
  const state = !job || !running ? "off" : visible() ? "on" : "paused";
  $("jobs").dataset.polling = state;
  if (state === "on" && !inflight) timer = setTimeout(tick, EVERY_MS);
}

async function tick() {
  clearTimeout(timer); // a tick from follow() replaces the pending one: never two timers
  timer = null;
  if (inflight || !job) return;
  const mine = ticket;
  inflight = json("GET", `/datasets/${job}`).then(
    (status) => { if (mine === ticket) show(status); },
    (error) => { if (mine === ticket) { running = false; showError(error); } }, // no retrying: a click does
  );
  await inflight;
  inflight = null;
  schedule();
}

const hex = (buffer) => [...new Uint8Array(buffer)].map((b) => b.toString(16).padStart(2, "0")).join("");

// The bytes' sha256 against X-Sha256 and the job's listing; refused (not saved) if either differs.
async function checked(blob, name, header, listed) {
  if (!header && !listed) return "";
  if (!crypto.subtle) return `, sha256 not checked (the page is not a secure context): X-Sha256 ${header}`;
  const digest = hex(await crypto.subtle.digest("SHA-256", await blob.arrayBuffer()));
  for (const [what, want] of [["X-Sha256", header], ["the job's listing", listed]]) {
    if (want && want !== digest) throw new Error(`${name}: its sha256 ${digest} differs from ${what}: ${want}`);
  }
  return `, sha256 ${digest} matches X-Sha256${listed ? " and the job's listing" : ""}`;
}

// A link of the panel, fetched with the API key (a plain link would not send it) and saved under the
// server's file name.
async function fetched(event) {
  event.preventDefault();
  const link = event.currentTarget;
  const note = $("ds-download");
  note.dataset.state = "loading";
  const text = await guarded(`downloading ${link.pathname}`, async () => {
    const response = await call("GET", link.pathname);
    const blob = await response.blob();
    const name = /filename="?([^";]+)/.exec(response.headers.get("Content-Disposition") ?? "")?.[1] ?? link.download;
    const sums = await checked(blob, name, response.headers.get("X-Sha256"), link.dataset.sha256);
    save(blob, name);
    return `Downloaded ${name}: ${blob.size} bytes${sums}.`;
  });
  note.textContent = text ?? "";
  note.dataset.state = text ? "ready" : "failed";
}

function shardItem(shard, format) {
  const li = document.createElement("li");
  const a = document.createElement("a");
  const ext = { webdataset: "tar", parquet: "parquet", npz: "npz" }[format];
  Object.assign(a, { href: shard.url, download: `shard-${String(shard.k).padStart(5, "0")}.${ext}` });
  a.textContent = `shard ${shard.k}`;
  a.dataset.sha256 = shard.sha256;
  a.addEventListener("click", fetched);
  const sum = document.createElement("code");
  sum.textContent = shard.sha256;
  li.dataset.k = shard.k;
  li.append(a, ` rows ${shard.start}–${shard.stop - 1}, ${shard.bytes} bytes, sha256 `, sum);
  return li;
}

function show(s) {
  const was = running;
  running = s.state === "running";
  const box = $("ds-job");
  box.hidden = false;
  Object.assign(box.dataset, { id: s.id, state: s.state });
  $("ds-title").textContent = `Job ${s.id}: ${s.model} v${s.version}, seed ${s.seed}, ${s.format}, ${s.shard_rows} rows a shard`;
  $("ds-progress").max = Math.max(1, s.rows_total);
  $("ds-progress").value = s.rows_done;
  $("ds-percent").textContent = `${s.rows_total ? Math.floor((100 * s.rows_done) / s.rows_total) : 100} %`;
  $("ds-state").textContent = s.state;
  $("ds-state").className = { done: "pass", failed: "fail" }[s.state] ?? "";
  const rate = s.rate_rows_per_s === null ? "" : ` · ${s.rate_rows_per_s.toFixed(1)} rows/s`;
  const eta = s.eta_s === null ? "" : ` · about ${Math.ceil(s.eta_s)} s left`;
  $("ds-facts").textContent =
    `${s.rows_done} / ${s.rows_total} rows · ${s.shards_done} / ${s.shards_total} shards · ${s.bytes} bytes${rate}${eta}`;
  $("ds-error").hidden = !s.error;
  $("ds-error").textContent = s.error ? `The job failed: ${s.error}` : "";
  const list = $("ds-shards");
  const shown = new Set([...list.children].map((li) => Number(li.dataset.k)));
  list.append(...(s.shards ?? []).filter((shard) => !shown.has(shard.k)).map((shard) => shardItem(shard, s.format)));
  $("ds-meta").hidden = s.state !== "done";
  $("ds-meta").href = s.metadata_url;
  $("ds-meta").download = `${s.id}-croissant.json`;
  hooks.status(s);
  if (was && !running) hooks.ended(s);
}

// Watches job `id` (its status now, if known: POST's answer); any earlier watch ends.
export function follow(id, status) {
  ticket += 1;
  job = id;
  running = true;
  $("ds-shards").replaceChildren();
  $("ds-download").textContent = "";
  if (status) {
    show(status);
    schedule();
  } else {
    tick();
  }
}

// Stops watching (job `id` only, when given); resolves once no status request of it is on its way.
export function unwatch(id) {
  if (id !== undefined && id !== job) return Promise.resolve();
  ticket += 1;
  job = null;
  running = false;
  $("ds-job").hidden = true;
  schedule();
  return inflight ?? Promise.resolve();
}

export function watching() {
  return job;
}

// hooks: status(s) after every status shown, ended(s) once the watched job stops running.
export function init(callbacks) {
  hooks = callbacks;
  $("ds-meta").addEventListener("click", fetched);
  new IntersectionObserver((entries) => {
    inView = entries[entries.length - 1].isIntersecting;
    schedule();
  }).observe($("jobs"));
  document.addEventListener("visibilitychange", schedule);
}

// The panel was shown or hidden (the schema was read again).
export function panelChanged() {
  schedule();
}
