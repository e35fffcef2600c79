// Small helpers for the form controls every panel uses, and saving a download.

export const $ = (id) => document.getElementById(id);

// The number in input `id`, or undefined when it is empty (the API's default then applies).
export function number(id) {
  const text = $(id).value.trim();
  return text === "" ? undefined : Number(text);
}

// Fills a class <select> with the manifest's names; `cycle` adds "every class in turn" (no label sent).
export function fillClasses(select, names, cycle) {
  const options = cycle ? [["", "every class in turn"]] : [];
  select.replaceChildren(
    ...[...options, ...names.map((n) => [n, n])].map(([value, text]) => new Option(text, value)),
  );
}

// Saves `blob` as a download named `name` (the browser's own download, from an object URL).
export function save(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
}
