// Image tiles with their provenance: hover shows it (title), a click or Enter shows it in the detail panel,
// and every image has a download link named after its provenance.

let selected = null; // { src, provenance }

export function selectedSample() {
  return selected;
}

export function pngSrc(b64) {
  return `data:image/png;base64,${b64}`;
}

// "fashion-cgan v4 · seed 7 · index 3 · Bag": one line of provenance.
export function describe(p) {
  return Object.entries(p)
    .filter(([k, v]) => v !== null && v !== undefined && k !== "onnx_sha256")
    .map(([k, v]) => `${k}: ${v}`)
    .join(" · ");
}

export function fileName(p) {
  const parts = [p.model, `v${p.version}`];
  if (p.seed !== undefined && p.seed !== null) parts.push(`seed${p.seed}`);
  if (p.index !== undefined) parts.push(`i${p.index}`);
  if (p.t !== undefined) parts.push(`t${p.t}`);
  if (p.edit) parts.push(String(p.edit).replace(/\W+/g, "-"));
  return `${parts.join("-")}.png`;
}

function download(src, provenance) {
  const a = document.createElement("a");
  a.href = src;
  a.download = fileName(provenance);
  a.textContent = "⬇";
  a.title = `download ${a.download}`;
  a.setAttribute("aria-label", `download ${a.download}`);
  return a;
}

// The detail panel: the image (if any), every provenance field, and a download link.
export function showDetail(src, provenance) {
  selected = src ? { src, provenance } : selected;
  const box = document.getElementById("detail");
  const dl = document.createElement("dl");
  for (const [k, v] of Object.entries(provenance)) {
    if (v === null || v === undefined) continue;
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = String(v);
    dl.append(dt, dd);
  }
  box.replaceChildren(dl);
  if (src) {
    const img = document.createElement("img");
    img.src = src;
    img.alt = describe(provenance);
    const link = download(src, provenance);
    link.textContent = `Download ${link.download}`;
    box.prepend(img);
    box.append(link);
  }
  box.hidden = false;
}

// One tile: the image as a button (its provenance in title and aria-label), a caption and a download link.
export function tile(src, provenance, caption) {
  const figure = document.createElement("figure");
  figure.className = "tile";
  const button = document.createElement("button");
  button.type = "button";
  button.title = describe(provenance);
  button.setAttribute("aria-label", `sample ${describe(provenance)}`);
  button.setAttribute("aria-pressed", "false");
  const img = document.createElement("img");
  img.src = src;
  img.alt = "";
  button.append(img);
  button.addEventListener("click", () => {
    for (const b of document.querySelectorAll('.tile button[aria-pressed="true"]')) {
      b.setAttribute("aria-pressed", "false");
    }
    button.setAttribute("aria-pressed", "true");
    showDetail(src, provenance);
  });
  const figcaption = document.createElement("figcaption");
  const text = document.createElement("span");
  text.textContent = caption;
  figcaption.append(text, download(src, provenance));
  figure.append(button, figcaption);
  return figure;
}

// The tiles of a /generate, /interpolate or /edit answer, with each sample's provenance.
export function tilesOf(answer, names, extra = () => ({})) {
  return answer.images.map((b64, i) => {
    const { caption, ...more } = extra(i);
    const label = answer.labels ? answer.labels[i] : undefined;
    const provenance = {
      model: answer.model,
      version: answer.version,
      seed: answer.seed ?? undefined,
      index: answer.indices[i],
      class: label === undefined ? undefined : (names[label] ?? label),
      truncation: answer.truncation ?? undefined,
      provider: answer.provider,
      onnx_sha256: answer.onnx_sha256,
      ...more,
    };
    return tile(pngSrc(b64), provenance, caption ?? `#${answer.indices[i]}`);
  });
}
