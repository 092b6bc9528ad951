// Shared by the operator pages of 维护管理, 应急管理 and 节能: state words with a
// glyph and a colour, the staff users' names, and small form helpers.

import * as api from "../../api.js";
import { h } from "../../dom.js";
import { t, term } from "../../i18n.js";

export const WO_STATES = ["open", "assigned", "in_progress", "resolved", "closed", "cancelled"];
export const PRIORITIES = ["urgent", "serious", "general", "single_lamp_out"];
export const FAULTS = [
  "lamp_failure", "dimming_failure", "supply_loss", "over_current", "voltage_high", "voltage_low",
  "low_power_factor", "over_temperature", "door_open", "leakage", "water", "smoke", "tilt",
  "impact", "ups_fault", "noise_high", "offline", "sos",
];
export const EMERGENCY_TYPES = [
  "collision_tilt", "flooding", "leakage", "fire_smoke", "sos_call", "power_outage", "severe_weather",
];

const WO_GLYPH = { open: "○", assigned: "◔", in_progress: "◑", resolved: "◕", closed: "●", cancelled: "×" };
const PRIO_GLYPH = { urgent: "!!", serious: "!", general: "·", single_lamp_out: "◌" };
const EM_GLYPH = { open: "!", resolved: "✓", closed: "●" };
const ACTION_GLYPH = { pending: "…", running: "↻", succeeded: "✓", failed: "!", cancelled: "×" };

function badge(cls, glyph, word) {
  return h("span", { class: `badge ${cls}` }, h("span", { class: "glyph", "aria-hidden": "true" }, glyph), " ", word);
}

export const woStateBadge = (s) => badge(`wo-${s}`, WO_GLYPH[s] || "?", term("ops.wostate", s));
export const priorityBadge = (p) => badge(`prio-${p}`, PRIO_GLYPH[p] || "?", term("ops.priority", p));
export const emStateBadge = (s) => badge(`em-${s}`, EM_GLYPH[s] || "?", term("ops.emstate", s));
export const actionBadge = (s) => badge(`act-${s}`, ACTION_GLYPH[s] || "?", term("ops.actionstate", s));
export const overdueMark = () => badge("overdue", "⏱", t("ops.wo.overdue"));

export function faultWord(f) {
  if (!f) return "—";
  return term("fault", f);
}

// The staff users by id (GET /work-orders/assignees), fetched once per page.
export async function staffUsers() {
  try {
    return new Map((await api.get("work-orders/assignees")).map((u) => [u.id, u]));
  } catch {
    return new Map();
  }
}

export function userName(users, id) {
  if (id === null || id === undefined) return "—";
  const u = users.get(id);
  return u ? u.name : `#${id}`;
}

// A labelled field: [label, control] with the control's id.
export function field(id, label, control) {
  control.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), control);
}

export function options(values, word, { any } = {}) {
  return [any ? h("option", { value: "" }, any) : null, ...values.map((v) => h("option", { value: v }, word(v)))];
}

// The site's poles (id, name, road, lat, lon…) for pickers and maps.
export async function sitePoles() {
  try {
    return await api.get("overview/poles");
  } catch {
    return { poles: [], roads: [] };
  }
}

// The logged-in user's id: the login response names the user but carries no id,
// so it is asked once from GET /auth/me and kept on ctx.me.
export async function myId(ctx) {
  if (ctx.me.id === undefined) {
    try {
      ctx.me.id = (await api.get("auth/me")).id;
    } catch {
      ctx.me.id = null;
    }
  }
  return ctx.me.id;
}

// The offset (ms) of `zone` from UTC at instant `ms`.
function zoneOffset(ms, zone) {
  const parts = Object.fromEntries(new Intl.DateTimeFormat("en-US", {
    timeZone: zone, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  }).formatToParts(new Date(ms)).map((p) => [p.type, p.value]));
  const wall = Date.UTC(+parts.year, +parts.month - 1, +parts.day, +parts.hour, +parts.minute, +parts.second);
  return wall - Math.floor(ms / 1000) * 1000;
}

// "2026-11-20T09:30" on the site's clock (ctx.config.site_timezone) as an ISO instant:
// the console shows times in the site's zone, so it reads them in it too.
export function siteTimeToISO(value, zone) {
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})/.exec(value);
  if (!m) return null;
  const wall = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5]);
  if (!zone) return new Date(`${value}`).toISOString();
  let ms = wall - zoneOffset(wall, zone);
  ms = wall - zoneOffset(ms, zone);
  return new Date(ms).toISOString();
}

// An instant as the value of a datetime-local input, on the site's clock.
export function isoToSiteTime(ms, zone) {
  const off = zone ? zoneOffset(ms, zone) : -new Date(ms).getTimezoneOffset() * 60000;
  return new Date(ms + off).toISOString().slice(0, 16);
}

// Who wrote an entry: a user's name, or the gateway itself in words.
export const who = (name) => (name === "system" || name === "system (gateway)" ? t("role.system") : name);
