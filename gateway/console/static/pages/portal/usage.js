// 计量: the tenant's kWh per port for a month, by day and by time-of-use period
// (尖/峰/平/谷), as bars and as a table, with the meter flags said in words.
// Every figure is GET /usage's own (bucket 1d: the site's local days).

import * as api from "../../api.js";
import { h, replace } from "../../dom.js";
import { fmtDateTime, fmtNumber, t, term } from "../../i18n.js";
import { frame, load } from "./common.js";

export const PERIODS = ["sharp", "peak", "flat", "valley", "none"];

// The UTC instant of local midnight on y-m-d in the zone `tz`.
function localMidnight(y, m, d, tz) {
  const guess = Date.UTC(y, m - 1, d);
  const parts = Object.fromEntries(new Intl.DateTimeFormat("en-US", {
    timeZone: tz, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
  }).formatToParts(new Date(guess)).map((p) => [p.type, p.value]));
  const asLocal = Date.UTC(+parts.year, +parts.month - 1, +parts.day, +parts.hour, +parts.minute, +parts.second);
  return new Date(guess - (asLocal - guess));
}

export function monthRange(month, tz) {
  const [y, m] = month.split("-").map(Number);
  return { start: localMidnight(y, m, 1, tz), end: localMidnight(m === 12 ? y + 1 : y, m === 12 ? 1 : m + 1, 1, tz) };
}

function thisMonth(tz) {
  const p = Object.fromEntries(new Intl.DateTimeFormat("en-US", { timeZone: tz, year: "numeric", month: "2-digit" })
    .formatToParts(new Date()).map((x) => [x.type, x.value]));
  return `${p.year}-${p.month}`;
}

function dayLabel(iso, tz) {
  return new Intl.DateTimeFormat("en-CA", { timeZone: tz, month: "2-digit", day: "2-digit" }).format(new Date(iso));
}

const kwh = (v) => fmtNumber(Number(v), 3);

// Sizes go through the CSSOM: the console's CSP refuses style attributes.
function stack(b, max) {
  const el = h("div", { class: "usage-stack" });
  el.style.height = `${(100 * Number(b.kwh)) / max}%`;
  for (const p of PERIODS) {
    const v = Number(b.periods[p] || 0);
    if (v <= 0) continue;
    const part = h("span", { class: `period-${p}` });
    part.style.flexGrow = String(v);
    el.append(part);
  }
  return el;
}

function bars(port, tz) {
  const max = Math.max(0.000001, ...port.buckets.map((b) => Number(b.kwh)));
  const total = kwh(port.kwh);
  return h("figure", { class: "usage-chart" },
    h("figcaption", {}, t("portal.usage.chart_caption", { port: port.port_id })),
    h("div", { class: "usage-bars", role: "img", "aria-label": t("portal.usage.chart_label", { port: port.port_id, total, days: port.buckets.length }) },
      port.buckets.map((b) => h("div", { class: "usage-bar", title: `${dayLabel(b.start, tz)} · ${kwh(b.kwh)} kWh` },
        stack(b, max),
        h("span", { class: "usage-day", "aria-hidden": "true" }, dayLabel(b.start, tz).slice(-2))))),
    h("ul", { class: "legend" }, PERIODS.filter((p) => Number(port.periods[p] || 0) > 0).map((p) =>
      h("li", {}, h("span", { class: `swatch period-${p}`, "aria-hidden": "true" }), " ", term("portal.period", p)))));
}

function periodsTable(port, tz) {
  const cols = PERIODS.filter((p) => port.periods[p] !== undefined);
  return h("div", { class: "table-wrap" }, h("table", { class: "usage-table", dataset: { port: port.port_id } },
    h("caption", { class: "visually-hidden" }, t("portal.usage.table_caption", { port: port.port_id })),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, t("portal.usage.day")),
      cols.map((p) => h("th", { scope: "col", class: "num" }, `${term("portal.period", p)} (kWh)`)),
      h("th", { scope: "col", class: "num" }, t("portal.usage.total_kwh")),
      h("th", { scope: "col", class: "num" }, t("portal.usage.estimated_kwh")))),
    h("tbody", {}, port.buckets.map((b) => h("tr", {},
      h("th", { scope: "row" }, dayLabel(b.start, tz)),
      cols.map((p) => h("td", { class: "num" }, kwh(b.periods[p] || 0))),
      h("td", { class: "num" }, kwh(b.kwh)),
      h("td", { class: "num" }, kwh(b.estimated_kwh))))),
    h("tfoot", {}, h("tr", { class: "usage-total" },
      h("th", { scope: "row" }, t("portal.usage.month_total")),
      cols.map((p) => h("td", { class: "num", dataset: { period: p } }, kwh(port.periods[p]))),
      h("td", { class: "num", dataset: { total: port.port_id } }, kwh(port.kwh)),
      h("td", {})))));
}

function heldPart(port) {
  const held = port.held_out || [];
  if (!held.length) return null;
  return h("div", { class: "usage-held" },
    h("p", {}, t("portal.usage.held", { n: held.length })),
    h("ul", { class: "list" }, held.slice(0, 50).map((r) => h("li", {}, fmtDateTime(r.ts, { seconds: true })))));
}

function flagsPart(port) {
  if (!port.flags.length && !port.gaps.length && !(port.held_out || []).length) {
    return h("p", { class: "muted" }, t("portal.usage.no_flags"));
  }
  const seen = [...new Set(port.flags.flatMap((f) => f.flags))].sort();
  return h("div", { class: "usage-flags" },
    seen.length ? h("dl", { class: "record flag-words" }, seen.map((f) => [
      h("dt", {}, term("portal.flag", f)), h("dd", {}, t(`portal.flagtext.${f}`))])) : null,
    port.flags.length ? h("ul", { class: "list" }, port.flags.slice(0, 200).map((f) => h("li", {},
      `${fmtDateTime(f.start)} – ${fmtDateTime(f.end)} · ${kwh(f.kwh)} kWh · `,
      f.flags.map((x) => term("portal.flag", x)).join(", "),
      Number(f.excess_kwh) > 0 ? ` · ${t("portal.usage.excess", { v: kwh(f.excess_kwh) })}` : ""))) : null,
    port.gaps.length ? [h("h4", {}, t("portal.usage.gaps")), h("ul", { class: "list" }, port.gaps.slice(0, 200).map((g) => h("li", {},
      t("portal.usage.gap", { start: fmtDateTime(g.start), end: fmtDateTime(g.end), hours: fmtNumber(g.duration_s / 3600, 1) }))))] : null);
}

export function render(main, ctx) {
  const tz = ctx.config.site_timezone || "Asia/Shanghai";
  const month = ctx.query.get("month") || thisMonth(tz);
  const input = h("input", { type: "month", id: "usage-month", value: month, required: true });
  const box = h("div", { id: "usage" }, h("p", { class: "muted" }, t("app.loading")));
  frame(main, t("portal.nav.usage"),
    h("div", { class: "filters" }, h("label", { for: "usage-month" }, t("portal.usage.month")), input),
    box);
  input.addEventListener("change", () => {
    if (/^\d{4}-\d{2}$/.test(input.value)) ctx.navigate(`#/portal/usage?month=${input.value}`);
  });
  load(main, box, async () => {
    const { start, end } = monthRange(month, tz);
    const data = await api.get("usage", { start: start.toISOString(), end: end.toISOString(), bucket: "1d" });
    if (!data.ports.length) {
      replace(box, h("p", { class: "empty" }, t("portal.usage.none")));
      return;
    }
    const sum = data.ports.reduce((s, p) => s + Number(p.kwh), 0);
    replace(box,
      h("p", { class: "usage-summary", id: "usage-total" }, t("portal.usage.summary", { total: kwh(sum), ports: data.ports.length })),
      data.ports.map((port) => h("section", { class: "panel usage-port", dataset: { port: port.port_id } },
        h("h2", {}, t("portal.usage.port", { port: port.port_id })),
        h("p", {}, PERIODS.filter((p) => port.periods[p] !== undefined).map((p) => `${term("portal.period", p)} ${kwh(port.periods[p])} kWh`).join(" · ")),
        bars(port, tz),
        periodsTable(port, tz),
        h("h3", {}, t("portal.usage.flags")),
        flagsPart(port), heldPart(port))));
  });
  return null;
}
