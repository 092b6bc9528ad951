// Forms of the archive and administration pages: a labelled field with room for
// its own error, and the API's 422 answers ({loc: [where, field], msg}) shown
// next to the field they name.

import * as api from "../../api.js";
import { h, replace } from "../../dom.js";
import { t } from "../../i18n.js";

let serial = 0;

// A field: {row, input, error}. `input` is an element built by the caller; the
// field gives it an id, a label and an error line it is described by.
export function field(name, label, input, { hint } = {}) {
  serial += 1;
  const id = input.id || `f-${name}-${serial}`;
  input.id = id;
  input.name = name;
  const error = h("span", { class: "field-error", id: `${id}-error`, role: "alert" });
  const hintEl = hint ? h("span", { class: "field-hint muted", id: `${id}-hint` }, hint) : null;
  input.setAttribute("aria-describedby", [hintEl ? hintEl.id : null, error.id].filter(Boolean).join(" "));
  const row = h("div", { class: "field", dataset: { field: name } }, h("label", { for: id }, label), input, hintEl, error);
  return { row, input, error };
}

export function input(attrs = {}) {
  return h("input", { type: "text", ...attrs });
}

export function select(options, value) {
  const el = h("select", {}, options.map(([v, label]) => h("option", { value: v }, label)));
  if (value !== undefined && value !== null) el.value = value;
  return el;
}

export function clearErrors(fields, general) {
  for (const f of Object.values(fields)) {
    f.input.removeAttribute("aria-invalid");
    replace(f.error);
  }
  if (general) replace(general);
}

// Show an API error: 422 details next to their fields, anything else (and details
// naming no field of the form) in `general`. Focus goes to the first bad field.
export function showErrors(fields, general, err) {
  clearErrors(fields, general);
  const rest = [];
  let first = null;
  if (err instanceof api.ApiError && Array.isArray(err.detail)) {
    for (const d of err.detail) {
      const loc = d.loc || [];
      const name = loc.length > 1 ? String(loc[1]) : null;
      const f = name ? fields[name] : null;
      if (f) {
        f.input.setAttribute("aria-invalid", "true");
        f.error.append(f.error.childNodes.length ? "; " : "", d.msg);
        first = first || f.input;
      } else {
        rest.push(name ? `${name}: ${d.msg}` : d.msg);
      }
    }
  } else {
    rest.push(err.message);
  }
  if (rest.length && general) replace(general, `${t("error.generic")} ${rest.join("; ")}`);
  if (first) first.focus();
  else if (general) general.focus();
}

// A paragraph for errors not about one field (focusable, announced).
export function generalError() {
  return h("p", { class: "error", role: "alert", tabindex: "-1" });
}

// The value of a field as the API wants it: trimmed text, or null when empty.
export function value(f) {
  const v = f.input.value.trim();
  return v === "" ? null : v;
}

export const patch = (path, body) => api.request("PATCH", path, { body });
