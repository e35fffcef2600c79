// Small helpers for the form controls every panel uses.

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
