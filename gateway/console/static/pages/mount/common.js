// Helpers shared by the mounting-service pages (受理申请和审核, 挂载服务, 计量与计费).

import { h, replace, toast } from "../../dom.js";
import { t, term } from "../../i18n.js";

// Glyph + word + colour for a state: the colour is never the only sign.
const GLYPH = {
  submitted: "●", accepted: "◐", returned: "↩", under_review: "◔", approved: "✓", rejected: "✗", withdrawn: "–",
  contracted: "◌", installing: "⚒", acceptance_test: "◔", in_service: "✓", suspended: "‖", terminated: "✗", removed: "–",
  draft: "✎", issued: "●", paid: "✓", void: "✗",
};

export function stateBadge(group, state) {
  return h("span", { class: `badge mount-state mount-${state}`, dataset: { state } },
    h("span", { class: "glyph", "aria-hidden": "true" }, GLYPH[state] || "•"), " ", term(group, state));
}

export function page(main, title, ...body) {
  document.title = `${title} · polegw`;
  replace(main, h("section", { class: "page mount" }, body));
}

export function crumbs(...items) {
  return h("nav", { class: "breadcrumb", "aria-label": t("app.breadcrumb") },
    items.map((it, i) => [i ? " › " : "", typeof it === "string" ? h("span", {}, it) : h("a", { href: it[1] }, it[0])]));
}

export function failed(err) {
  toast(`${t("error.generic")} ${err.message}`, "error");
}

export function errorBox(box, err) {
  replace(box, h("p", { class: "error", role: "alert" }, err.message));
}

// "2026-12-10T09:00" read as a wall-clock time in `tz` -> RFC 3339 with the zone's
// offset at that moment (the API wants an aware time; the browser may be elsewhere).
export function zonedIso(local, tz) {
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?$/.exec(local);
  if (!m) return null;
  const [y, mo, d, hh, mm, ss] = m.slice(1).map((x) => Number(x || 0));
  const wall = Date.UTC(y, mo - 1, d, hh, mm, ss);
  const offsetAt = (instant) => {
    const parts = Object.fromEntries(new Intl.DateTimeFormat("en-US", {
      timeZone: tz, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit",
    }).formatToParts(new Date(instant)).map((p) => [p.type, p.value]));
    const asUtc = Date.UTC(+parts.year, +parts.month - 1, +parts.day, +parts.hour, +parts.minute, +parts.second);
    return Math.round((asUtc - instant) / 60000);
  };
  let offset = offsetAt(wall);
  offset = offsetAt(wall - offset * 60000);
  const sign = offset >= 0 ? "+" : "-";
  const abs = Math.abs(offset);
  const pad = (n) => String(n).padStart(2, "0");
  return `${y}-${pad(mo)}-${pad(d)}T${pad(hh)}:${pad(mm)}:${pad(ss)}${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`;
}

// An instant as the value of a datetime-local input, in `tz`.
export function zonedLocal(value, tz) {
  const parts = Object.fromEntries(new Intl.DateTimeFormat("en-US", {
    timeZone: tz, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
  }).formatToParts(new Date(value)).map((p) => [p.type, p.value]));
  return `${parts.year}-${parts.month}-${parts.day}T${parts.hour}:${parts.minute}`;
}

export const siteZone = (ctx) => ctx.config.site_timezone || "Asia/Shanghai";

// A labelled field: the label, the control and a place for its error (aria-describedby).
let fieldSeq = 0;
export function field(labelText, control, { hint, loc } = {}) {
  if (!control.id) control.id = `mf-${++fieldSeq}`;
  const err = h("span", { class: "field-error", id: `${control.id}-err`, role: "alert" });
  control.setAttribute("aria-describedby", `${control.id}-err`);
  if (loc) control.dataset.loc = loc;
  return h("div", { class: "field" }, h("label", { for: control.id }, labelText), control,
    hint ? h("span", { class: "muted" }, hint) : null, err);
}

// Show a 422's messages next to the fields they name (data-loc="a.b.0.c"); the
// rest (and any other error) in `general`. Returns how many were placed.
export function showFieldErrors(form, err, general) {
  for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  replace(general);
  const detail = err && err.detail;
  const items = Array.isArray(detail) ? detail : [{ loc: ["body", detail && detail.field ? detail.field : ""], msg: err.message }];
  const controls = [...form.querySelectorAll("[data-loc]")];
  const rest = [];
  for (const d of items) {
    const loc = (d.loc || []).filter((x) => x !== "body").join(".");
    let best = null;
    for (const c of controls) {
      const l = c.dataset.loc;
      if ((loc === l || loc.startsWith(`${l}.`)) && (!best || l.length > best.dataset.loc.length)) best = c;
    }
    if (best && loc) {
      best.setAttribute("aria-invalid", "true");
      const slot = document.getElementById(`${best.id}-err`);
      slot.textContent = slot.textContent ? `${slot.textContent}; ${d.msg}` : d.msg;
    } else {
      rest.push(loc ? `${loc}: ${d.msg}` : d.msg);
    }
  }
  if (rest.length) replace(general, h("p", { class: "error", role: "alert" }, rest.join("; ")));
  const first = form.querySelector("[aria-invalid]");
  if (first) first.focus();
}

// A table that becomes one card per row on a phone: each cell names its column
// (data-label, shown before the value by the stylesheet under 760 px).
export function stacked(wrap) {
  const heads = [...wrap.querySelectorAll("thead th")].map((th) => th.textContent);
  for (const tr of wrap.querySelectorAll("tbody tr")) {
    [...tr.children].forEach((td, i) => { td.dataset.label = heads[i] || ""; });
  }
  wrap.classList.add("stack");
  return wrap;
}
