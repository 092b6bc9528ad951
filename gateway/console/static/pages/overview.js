// 总览: the numbers, the map, what is wrong right now. Updated live.

import * as api from "../api.js";
import { h, replace, throttle } from "../dom.js";
import { fmtAge, fmtDateTime, fmtNumber, t, term } from "../i18n.js";
import * as live from "../live.js";
import { alarmList, sortAlarms } from "./alarms.js";
import { SiteMap, legend } from "../sitemap.js";

const SEVERITIES = ["critical", "major", "minor", "warning"];

function card(label, value, extra, attrs = {}) {
  return h("div", { class: "card", ...attrs },
    h("div", { class: "card-label" }, label),
    h("div", { class: "card-value" }, value),
    extra ? h("div", { class: "card-extra" }, extra) : null);
}

export function numbers(o) {
  const alarms = o.alarms_active || {};
  const totalAlarms = SEVERITIES.reduce((s, k) => s + (alarms[k] || 0), 0);
  return h("div", { class: "cards", id: "overview-numbers" },
    card(t("overview.poles"), fmtNumber(o.poles), null, { "data-figure": "poles" }),
    card(t("overview.devices_online"), `${fmtNumber(o.devices.online)} / ${fmtNumber(o.devices.total)}`,
      t("overview.devices_detail", { offline: fmtNumber(o.devices.offline), unknown: fmtNumber(o.devices.unknown) }),
      { "data-figure": "devices" }),
    card(t("overview.lamps_lit"), `${fmtNumber(o.lamps.lit)} / ${fmtNumber(o.lamps.total)}`, null, { "data-figure": "lamps" }),
    card(t("overview.alarms_active"), fmtNumber(totalAlarms),
      SEVERITIES.filter((s) => alarms[s]).map((s) => `${term("severity", s)} ${fmtNumber(alarms[s])}`).join(" · ") || t("overview.none"),
      { "data-figure": "alarms", class: totalAlarms ? "card alert" : "card" }),
    card(t("overview.work_orders"), o.work_orders ? fmtNumber(o.work_orders.open) : "—",
      o.work_orders ? t("overview.overdue", { n: fmtNumber(o.work_orders.overdue) }) : null,
      { "data-figure": "work_orders", class: o.work_orders && o.work_orders.overdue ? "card alert" : "card" }),
    card(t("overview.emergencies"), o.emergencies_open === null ? "—" : fmtNumber(o.emergencies_open), null,
      { "data-figure": "emergencies", class: o.emergencies_open ? "card alert" : "card" }),
    card(t("overview.kwh_today"), fmtNumber(o.energy.kwh_today, 1), "kWh", { "data-figure": "kwh" }));
}

export function emergencyList(items) {
  if (!items.length) return h("p", { class: "empty" }, t("overview.no_emergencies"));
  return h("ul", { class: "list" }, items.map((e) => h("li", { class: "emergency" },
    h("span", { class: "badge state-critical" }, h("span", { "aria-hidden": "true", class: "glyph" }, "!"), " ", term("emergency_type", e.type)),
    " ", h("a", { href: `#/emergencies/${e.id}` }, h("strong", {}, e.title)), " ",
    e.pole_id ? h("a", { href: `#/poles/${encodeURIComponent(e.pole_id)}` }, e.pole_id) : null,
    " ", h("span", { class: "muted", title: fmtDateTime(e.opened_at) }, fmtAge(e.opened_at)))));
}

export function render(main, ctx) {
  document.title = `${t("nav.overview")} · polegw`;
  const numbersBox = h("div", { "aria-live": "polite" }, h("p", { class: "muted" }, t("app.loading")));
  const mapEl = h("div", { class: "map", id: "overview-map", role: "region", "aria-label": t("map.title") });
  const alarmsBox = h("div", { id: "overview-alarms" });
  const emergBox = h("div", { id: "overview-emergencies" });
  const updated = h("p", { class: "muted small", id: "overview-updated" });
  replace(main, h("section", { class: "page overview" },
    h("h1", {}, t("nav.overview")),
    h("section", { class: "panel emergencies-panel", id: "emergencies-panel", hidden: true, "aria-labelledby": "h-emerg" },
      h("h2", { id: "h-emerg" }, t("overview.open_emergencies")), emergBox),
    numbersBox,
    h("div", { class: "grid-2" },
      h("section", { class: "panel", "aria-labelledby": "h-map" },
        h("h2", { id: "h-map" }, t("map.title"), " ", h("a", { href: "#/map", class: "small" }, t("overview.open_map"))),
        mapEl, legend()),
      h("section", { class: "panel", "aria-labelledby": "h-alarms" },
        h("h2", { id: "h-alarms" }, t("overview.active_alarms"), " ", h("a", { href: "#/alarms", class: "small" }, t("overview.all_alarms"))),
        alarmsBox)),
    updated));

  const map = new SiteMap(mapEl, ctx.config, { onOpen: (id) => ctx.navigate(`#/poles/${encodeURIComponent(id)}`) });
  let stopped = false;

  // Each part is fetched again only when an event says it changed; readings
  // (many per second at city scale) only move the numbers, at most every 5 s.
  const parts = {
    async numbers() {
      const o = await api.get("overview");
      if (stopped) return;
      replace(numbersBox, numbers(o));
      updated.textContent = t("overview.updated", { at: fmtDateTime(o.at, { seconds: true }) });
    },
    async poles() {
      const poles = await api.get("overview/poles");
      if (!stopped) map.update(poles.poles);
    },
    async alarms() {
      const alarms = await api.get("alarms", { state: "active", limit: 200 });
      if (!stopped) replace(alarmsBox, alarmList(sortAlarms(alarms.items).slice(0, 20), { compact: true }));
    },
    async emergencies() {
      const emergencies = await api.get("emergencies", { state: "open", limit: 50 });
      if (stopped) return;
      replace(emergBox, emergencyList(emergencies.items));
      document.getElementById("emergencies-panel").hidden = emergencies.items.length === 0;
    },
  };
  const run = (name) => () => parts[name]().catch((err) => {
    if (!stopped) updated.textContent = `${t("error.generic")} ${err.message}`;
  });
  const soon = Object.fromEntries(Object.keys(parts).map((k) => [k, throttle(run(k), 1500)]));
  const numbersSlowly = throttle(run("numbers"), 5000);
  const on = (kind, ...names) => live.subscribe(kind, () => names.forEach((n) => soon[n]()));
  const unsubs = [
    on("alarm", "numbers", "poles", "alarms"),
    on("device", "numbers", "poles"),
    on("emergency", "numbers", "emergencies"),
    on("work_order", "numbers"),
    live.subscribe("telemetry", numbersSlowly),
  ];
  const refresh = () => Object.keys(parts).forEach((k) => run(k)());
  refresh();
  // A slow safety net for what no event announces (deadlines passing, ages).
  const timer = setInterval(refresh, 60000);
  return () => {
    stopped = true;
    clearInterval(timer);
    unsubs.forEach((u) => u());
    map.destroy();
  };
}
