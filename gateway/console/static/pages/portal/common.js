// The tenant portal's shared parts: the page frame, "not found" for what the API
// does not show this user, state badges (glyph + word + colour), the capacity
// check's verdict, and the equipment form of an application or a change.

import * as api from "../../api.js";
import { h, replace } from "../../dom.js";
import { fmtNumber, t, term } from "../../i18n.js";

export function frame(main, title, ...body) {
  document.title = `${title} · polegw`;
  replace(main, h("section", { class: "page portal" }, h("h1", {}, title), ...body));
}

// What a person sees for an id the API answers 404 to: the same as a page that
// does not exist (another tenant's lease looks like no lease at all).
export function notFound(main) {
  document.title = `${t("notfound.title")} · polegw`;
  replace(main, h("section", { class: "page" },
    h("h1", {}, t("notfound.title")),
    h("p", {}, t("notfound.text")),
    h("p", {}, h("a", { href: "#/leases" }, t("notfound.home")))));
}

// Load, then draw; a 404 becomes the not-found page, anything else an error line.
export async function load(main, box, fn) {
  try {
    await fn();
  } catch (err) {
    if (err instanceof api.ApiError && err.status === 404) notFound(main);
    else replace(box, h("p", { class: "error", role: "alert" }, err.message));
  }
}

const APP_GLYPH = { submitted: "◷", accepted: "✓", returned: "↩", under_review: "…", approved: "✔", rejected: "✗", withdrawn: "–" };
const APP_TONE = { submitted: "pending", accepted: "ok", returned: "warn", under_review: "pending", approved: "ok", rejected: "bad", withdrawn: "off" };
export const LIVE_STATES = ["submitted", "returned", "accepted", "under_review"];

export function appBadge(state) {
  return h("span", { class: `badge tone-${APP_TONE[state] || "off"}`, dataset: { state } },
    h("span", { class: "glyph", "aria-hidden": "true" }, APP_GLYPH[state] || "?"), " ", term("portal.appstate", state));
}

const LEASE_TONE = { contracted: "pending", installing: "pending", acceptance_test: "pending", in_service: "ok", suspended: "warn", terminated: "bad", removed: "off" };
const LEASE_GLYPH = { contracted: "◷", installing: "⚒", acceptance_test: "…", in_service: "✓", suspended: "⏸", terminated: "✗", removed: "–" };

export function leaseBadge(state) {
  return h("span", { class: `badge tone-${LEASE_TONE[state] || "off"}`, dataset: { state } },
    h("span", { class: "glyph", "aria-hidden": "true" }, LEASE_GLYPH[state] || "?"), " ", term("leasestate", state));
}

export function portBadge(on) {
  return h("span", { class: `badge tone-${on ? "ok" : "off"}` },
    h("span", { class: "glyph", "aria-hidden": "true" }, on ? "●" : "○"), " ", t(on ? "portal.port_on" : "portal.port_off"));
}

const UNITS = { slot_load: "kg", pole_load: "kg", slot_wind_area: "m²", pole_wind_area: "m²", slot_power: "W", pole_power: "W", port_power: "W", cabinet_space: "U" };

function checkLine(c) {
  const unit = UNITS[c.name];
  const figures = unit && c.needed !== null
    ? t("portal.check.figures", { needed: `${fmtNumber(c.needed)} ${unit}`, available: c.available === null ? t("portal.check.no_limit") : `${fmtNumber(c.available)} ${unit}` })
    : "";
  return h("li", { class: c.ok ? "check-ok" : "check-fail", dataset: { check: c.name } },
    h("span", { class: `badge tone-${c.ok ? "ok" : "bad"}` },
      h("span", { class: "glyph", "aria-hidden": "true" }, c.ok ? "✓" : "✗"), " ", t(c.ok ? "portal.check.pass" : "portal.check.fail")),
    " ", term("portal.checkname", c.name), figures ? ` · ${figures}` : "",
    c.overridden ? h("span", { class: "muted" }, ` · ${t("portal.check.waived")}`) : null);
}

// The verdict of POST /applications/check or GET /applications/{id}/review.
export function verdict(review) {
  const ok = review.approvable;
  return h("div", { class: "verdict", id: "capacity-verdict", role: "status" },
    h("p", { class: `verdict-head tone-${ok ? "ok" : "bad"}` },
      h("span", { class: "glyph", "aria-hidden": "true" }, ok ? "✓" : "✗"), " ",
      t(ok ? "portal.check.fits" : "portal.check.does_not_fit")),
    review.poles.map((p) => h("div", { class: "verdict-pole", dataset: { pole: p.pole_id } },
      h("h3", {}, t("portal.check.on_pole", { pole: p.pole_id })),
      h("p", { class: "muted" }, t("portal.check.assignment", {
        slot: p.assignment.slot_id || "—", port: p.assignment.port_id || "—", compartment: p.assignment.compartment_id || "—",
      })),
      h("ul", { class: "list checks" }, p.checks.map(checkLine)))));
}

// --------------------------------------------------------------------------- the equipment form

let seq = 0;
function field(label, input, hint) {
  const id = input.id || `pf-${++seq}`;
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), input, hint ? h("span", { class: "muted small" }, hint) : null);
}

const num = (attrs = {}) => h("input", { type: "number", inputmode: "decimal", step: "any", min: "0", ...attrs });

function deviceRow(n, d = {}, onRemove) {
  const dim = d.dimensions || {};
  const inputs = {
    type: h("input", { type: "text", required: true, maxlength: "100", value: d.type || "" }),
    model: h("input", { type: "text", maxlength: "100", value: d.model || "" }),
    quantity: num({ min: "1", step: "1", value: d.quantity ?? 1, required: true }),
    weight_kg: num({ value: d.weight_kg ?? "", required: true }),
    width_mm: num({ value: dim.width_mm ?? "" }),
    height_mm: num({ value: dim.height_mm ?? "" }),
    depth_mm: num({ value: dim.depth_mm ?? "" }),
    wind_area_m2: num({ value: d.wind_area_m2 ?? 0 }),
    power_w: num({ value: d.power_w ?? 0 }),
  };
  const box = h("fieldset", { class: "device-row", dataset: { device: n } },
    h("legend", {}, t("portal.form.device_n", { n })),
    h("div", { class: "fields" },
      field(t("portal.form.type"), inputs.type, t("portal.form.type_hint")),
      field(t("portal.form.model"), inputs.model),
      field(t("portal.form.quantity"), inputs.quantity),
      field(t("portal.form.weight"), inputs.weight_kg),
      field(t("portal.form.width"), inputs.width_mm),
      field(t("portal.form.height"), inputs.height_mm),
      field(t("portal.form.depth"), inputs.depth_mm),
      field(t("portal.form.wind_area"), inputs.wind_area_m2),
      field(t("portal.form.power"), inputs.power_w, t("portal.form.power_hint"))),
    onRemove ? h("button", { type: "button", onclick: onRemove }, t("portal.form.remove_device", { n })) : null);
  box.read = () => {
    const v = (k) => inputs[k].value.trim();
    const out = {
      type: v("type"), model: v("model"), quantity: Number(v("quantity") || 1),
      weight_kg: Number(v("weight_kg") || 0), wind_area_m2: Number(v("wind_area_m2") || 0), power_w: Number(v("power_w") || 0),
    };
    if (v("width_mm") && v("height_mm") && v("depth_mm")) {
      out.dimensions = { width_mm: Number(v("width_mm")), height_mm: Number(v("height_mm")), depth_mm: Number(v("depth_mm")) };
    }
    return out;
  };
  return box;
}

// The equipment part of an application (devices, supply, cabinet, ports, term,
// description). `change` leaves out the start of the term. Returns
// { el, read(), onChange(fn) }.
export function equipmentForm(initial = {}, { change = false } = {}) {
  const devicesBox = h("div", { class: "devices-form" });
  const rows = [];
  const listeners = [];
  const changed = () => listeners.forEach((fn) => fn());
  function redraw() {
    replace(devicesBox, rows.map((r, i) => {
      const legend = r.querySelector("legend");
      legend.textContent = t("portal.form.device_n", { n: i + 1 });
      return r;
    }));
  }
  function addRow(d) {
    const row = deviceRow(rows.length + 1, d, rows.length ? () => { rows.splice(rows.indexOf(row), 1); redraw(); changed(); } : null);
    rows.push(row);
    redraw();
  }
  (initial.devices && initial.devices.length ? initial.devices : [{}]).forEach(addRow);
  const supply = h("select", {}, ["AC", "DC"].map((s) => h("option", { value: s }, t(`portal.supply.${s}`))));
  supply.value = initial.supply || "AC";
  const voltage = num({ value: initial.voltage_v ?? "" });
  const cabinet = num({ step: "1", value: initial.cabinet_units ?? 0 });
  const fibre = num({ step: "1", value: initial.fibre_cores ?? 0 });
  const bandwidth = num({ value: initial.bandwidth_mbps ?? "" });
  const height = num({ value: initial.height_m ?? "" });
  const start = h("input", { type: "date", value: initial.term_start || "" });
  const end = h("input", { type: "date", value: initial.term_end || "" });
  const description = h("textarea", { rows: "3", maxlength: "10000" });
  description.value = initial.description || "";
  const el = h("div", { class: "equipment-form" },
    h("h2", {}, t("portal.form.equipment")),
    devicesBox,
    h("p", {}, h("button", { type: "button", onclick: () => { addRow({}); changed(); } }, t("portal.form.add_device"))),
    h("fieldset", {}, h("legend", {}, t("portal.form.supply_and_ports")),
      h("div", { class: "fields" },
        field(t("portal.form.supply"), supply),
        field(t("portal.form.voltage"), voltage),
        field(t("portal.form.cabinet_units"), cabinet),
        field(t("portal.form.fibre_cores"), fibre, t("portal.form.fibre_hint")),
        field(t("portal.form.bandwidth"), bandwidth),
        field(t("portal.form.height_m"), height))),
    h("fieldset", {}, h("legend", {}, t("portal.form.term")),
      h("div", { class: "fields" },
        change ? null : field(t("portal.form.term_start"), start),
        field(t(change ? "portal.form.new_term_end" : "portal.form.term_end"), end),
        field(t("portal.form.description"), description))));
  el.addEventListener("input", changed);
  el.addEventListener("change", changed);
  const opt = (input) => (input.value.trim() === "" ? null : Number(input.value));
  return {
    el,
    onChange: (fn) => listeners.push(fn),
    read() {
      const out = {
        devices: rows.map((r) => r.read()),
        supply: supply.value,
        voltage_v: opt(voltage),
        height_m: opt(height),
        cabinet_units: Number(cabinet.value || 0),
        fibre_cores: Number(fibre.value || 0),
        bandwidth_mbps: opt(bandwidth),
        term_end: end.value || null,
        description: description.value,
      };
      if (!change) out.term_start = start.value || null;
      return out;
    },
  };
}

// An API refusal in words, naming the field the API names.
export function refusal(err) {
  if (err instanceof api.ApiError && err.status === 422 && Array.isArray(err.detail)) {
    return t("portal.form.refused", { detail: err.message });
  }
  return err.message;
}
