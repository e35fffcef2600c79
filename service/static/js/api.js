// Calls to the service: the API key from session storage as a header, and errors in the API's own words.

const KEY = "gan-playground-api-key";

export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

// An answer that is not 2xx: the status, and the API's `detail` and `field`.
export class ApiError extends Error {
  constructor(what, status, detail, field) {
    super(detail);
    this.what = what;
    this.status = status;
    this.detail = detail;
    this.field = field;
  }
}

function headers(extra) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function failure(what, response) {
  let detail = `${response.status} ${response.statusText}`;
  let field = null;
  try {
    const body = await response.json();
    detail = body.detail ?? body.error ?? detail;
    field = body.field ?? null;
  } catch {
    // not JSON: keep the status line
  }
  if (typeof detail !== "string") detail = JSON.stringify(detail);
  return new ApiError(what, response.status, detail, field);
}

// Sends `body` (an object as JSON, or FormData as multipart) and returns the Response, or throws ApiError.
export async function call(method, path, body) {
  const what = `${method} ${path}`;
  const init = { method, headers: headers({}) };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.headers = headers({ "Content-Type": "application/json" });
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(what, 0, `the service did not answer (${error.message})`, null);
  }
  if (!response.ok) throw await failure(what, response);
  return response;
}

export async function json(method, path, body) {
  return (await call(method, path, body)).json();
}

// --- showing errors ---------------------------------------------------------------------------------------

const FIELDS = {
  n: "n", seed: "seed", truncation: "truncation", labels: "label", authorization: "api-key",
  "start.seed": "start-seed", "end.seed": "end-seed", "start.label": "start-label", "end.label": "end-label",
  steps: "steps", images: "edit-file", limit: "aug-limit", offset: "aug-offset", per_class: "aug-rows",
};

// The dataset-jobs form names the same fields for its own inputs.
const JOB_FIELDS = {
  seed: "seed", truncation: "truncation", authorization: "api-key", model: "model", version: "version",
  per_class: "ds-rows", n: "ds-rows", shard_rows: "ds-shard-rows", format: "ds-format",
};

function inputFor(field, what) {
  if (!field) return null;
  const fields = / \/datasets$/.test(what) ? JOB_FIELDS : FIELDS;
  const id = fields[field] ?? fields[field.split(".")[0]] ?? fields[field.replace(/\[\d+\]/, "")];
  return id ? document.getElementById(id) : null;
}

export function clearErrors() {
  document.getElementById("errors").replaceChildren();
  for (const el of document.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

// The error as the API words it: what was called, the status, the field and the detail (which holds the limit).
export function showError(error) {
  const box = document.getElementById("errors");
  const line = document.createElement("p");
  if (error instanceof ApiError) {
    const status = error.status ? `${error.status}` : "no answer";
    line.append(`${error.what} → ${status}: `);
    if (error.field && !error.detail.startsWith(`${error.field}:`)) { // validation details name it already
      const field = document.createElement("span");
      field.className = "field";
      field.textContent = `${error.field}: `;
      line.append(field);
    }
    line.append(error.detail);
    const input = inputFor(error.field, error.what);
    if (input) input.setAttribute("aria-invalid", "true");
  } else {
    line.textContent = `${error}`;
  }
  box.append(line);
}

const running = [];

function showRunning() {
  document.getElementById("busy").textContent = running.length ? `${running.join(", ")}…` : "";
}

// Runs `task`, saying what runs while it does; its error goes to the error box unless `current()` says a
// later request has replaced this one (then its answer is dropped too: undefined).
export async function guarded(label, task, current = () => true) {
  running.push(label);
  showRunning();
  try {
    const result = await task();
    return current() ? result : undefined;
  } catch (error) {
    if (current()) showError(error);
    return undefined;
  } finally {
    running.splice(running.indexOf(label), 1);
    showRunning();
  }
}
