// A pole: its archive record, its devices live with their commands, recent
// events and alarms, and what is mounted on it with the capacity left.

import * as api from "../api.js";
import { commandControls, commandTracker, deviceStateBadge, valuesTable } from "../devicecard.js";
import { h, replace, table, throttle } from "../dom.js";
import { fmtAge, fmtDate, fmtDateTime, fmtNumber, t, term } from "../i18n.js";
import * as live from "../live.js";
import { alarmList } from "./alarms.js";

const ACTIVE_LEASE = new Set(["contracted", "installing", "acceptance_test", "in_service", "suspended"]);

function record(p) {
  const rows = [
    ["pole.name", p.name], ["pole.road", p.road],
    ["pole.height", p.height_m !== null ? `${fmtNumber(p.height_m)} m` : null],
    ["pole.location", p.lat !== null ? `${fmtNumber(p.lat, 6)}, ${fmtNumber(p.lon, 6)}` : null],
    ["pole.status", term("archive", p.status)],
    ["pole.model", [p.vendor, p.model].filter(Boolean).join(" ") || null],
    ["pole.serial", p.serial],
    ["pole.owner", p.taken_over_from],
    ["pole.installed_on", p.installed_on ? fmtDate(p.installed_on) : null],
    ["pole.taken_over_on", p.taken_over_on ? fmtDate(p.taken_over_on) : null],
    ["pole.warranty_until", p.warranty_until ? fmtDate(p.warranty_until) : null],
    ["pole.presence", p.presence ? `${term("devstate", p.presence)} · ${fmtAge(p.presence_since)}` : term("devstate", "unknown")],
    ["pole.clock_skew", p.clock_skew_s !== null && p.clock_skew_s !== undefined ? `${fmtNumber(p.clock_skew_s, 1)} s` : null],
    ["pole.notes", p.notes],
  ];
  return h("dl", { class: "record" }, rows.map(([k, v]) => [h("dt", {}, t(k)), h("dd", {}, v ?? "—")]));
}

function capacity(leases, slots, ports, compartments, budget) {
  const active = leases.filter((l) => ACTIVE_LEASE.has(l.state));
  const usedSlots = new Set(active.map((l) => l.slot_id).filter(Boolean));
  const usedPorts = new Set(active.map((l) => l.port_id).filter(Boolean));
  const sum = (k) => active.reduce((s, l) => s + Number(l[k] || 0), 0);
  const line = (label, used, max, unit) => h("li", {}, h("strong", {}, t(label)), " ",
    max === null || max === undefined
      ? t("pole.used_no_limit", { used: fmtNumber(used), unit })
      : t("pole.used_of", { used: fmtNumber(used), max: fmtNumber(max), free: fmtNumber(Math.max(0, max - used)), unit }));
  return h("div", {},
    h("ul", { class: "capacity" },
      line("pole.cap_load", sum("load_kg"), budget.max_load_kg, "kg"),
      line("pole.cap_wind", sum("wind_area_m2"), budget.max_wind_area_m2, "m²"),
      line("pole.cap_power", sum("power_w"), budget.power_budget_w, "W"),
      line("pole.cap_cabinet", sum("cabinet_units"), compartments.reduce((s, c) => s + c.units, 0), "U"),
      h("li", {}, h("strong", {}, t("pole.cap_slots")), " ",
        t("pole.free_of", { free: slots.filter((s) => !usedSlots.has(s.id)).length, total: slots.length })),
      h("li", {}, h("strong", {}, t("pole.cap_ports")), " ",
        t("pole.free_of", { free: ports.filter((p) => !usedPorts.has(p.id)).length, total: ports.length }))),
    table(t("pole.leases"), [t("lease.id"), t("lease.tenant"), t("lease.state"), t("lease.slot"), t("lease.port"), t("lease.power"), t("lease.starts_on")],
      leases.map((l) => [String(l.id), l.tenant_id, term("leasestate", l.state), l.slot_id || "—", l.port_id || "—", `${fmtNumber(l.power_w)} W`, fmtDate(l.starts_on)]),
      { empty: t("pole.no_leases") }));
}

function events(items) {
  return table(t("pole.events"), [t("event.time"), t("event.device"), t("event.type")],
    items.map((e) => [fmtDateTime(e.ts, { seconds: true }), e.device_id, term("evtype", e.type)]),
    { empty: t("pole.no_events") });
}

export function render(main, ctx, poleId) {
  document.title = `${t("pole.title")} ${poleId} · polegw`;
  const box = h("section", { class: "page" }, h("p", { class: "muted" }, t("app.loading")));
  replace(main, box);
  let stopped = false;
  const tracker = commandTracker();
  const cards = new Map(); // device id -> {state el, values el}
  const alarmsBox = h("div", { id: "pole-alarms" });
  const eventsBox = h("div", { id: "pole-events" });

  async function refreshDevice(id) {
    const c = cards.get(id);
    if (!c) return;
    try {
      const [d, latest] = await Promise.all([
        api.get(`devices/${encodeURIComponent(id)}`),
        api.get(`devices/${encodeURIComponent(id)}/latest`),
      ]);
      if (stopped) return;
      replace(c.state, deviceStateBadge(d.state, d.state_since));
      replace(c.values, valuesTable(d, latest));
      return d;
    } catch {
      return null;
    }
  }
  async function refreshActivity() {
    try {
      const [alarms, evs] = await Promise.all([
        api.get("alarms", { pole: poleId, limit: 10 }),
        api.get(`poles/${encodeURIComponent(poleId)}/events`, { limit: 10 }),
      ]);
      if (stopped) return;
      replace(alarmsBox, alarmList(alarms.items, { compact: true, showPole: false }));
      replace(eventsBox, events(evs.items));
    } catch {
      /* next event */
    }
  }

  (async () => {
    let pole, devices;
    try {
      [pole, devices] = await Promise.all([
        api.get(`poles/${encodeURIComponent(poleId)}`),
        api.all("devices", { pole: poleId }),
      ]);
    } catch (err) {
      replace(box, h("h1", {}, `${t("pole.title")} ${poleId}`),
        h("p", { class: "error" }, err.status === 404 ? t("notfound.text") : err.message));
      return;
    }
    const devSection = h("div", { class: "devices" });
    const mountBox = h("div", {}, h("p", { class: "muted" }, t("app.loading")));
    replace(box,
      h("nav", { class: "crumbs", "aria-label": t("app.breadcrumb") }, h("a", { href: "#/map" }, t("nav.map")), " › ", poleId),
      h("h1", {}, `${t("pole.title")} ${pole.id} · ${pole.name}`),
      h("div", { class: "grid-2" },
        h("section", { class: "panel" }, h("h2", {}, t("pole.record")), record(pole),
          h("p", {}, h("a", { href: `#/archive/poles/${encodeURIComponent(pole.id)}`, id: "pole-archive-link" }, t("admin.archive.open")))),
        h("section", { class: "panel" }, h("h2", {}, t("pole.mounting")), mountBox)),
      h("section", { class: "panel" }, h("h2", {}, t("pole.devices")), devSection),
      h("div", { class: "grid-2" },
        h("section", { class: "panel" }, h("h2", {}, t("pole.alarms")), alarmsBox),
        h("section", { class: "panel" }, h("h2", {}, t("pole.events")), eventsBox)));
    for (const dev of devices) {
      const state = h("span");
      const values = h("div", {}, h("p", { class: "muted" }, t("app.loading")));
      const commands = h("div");
      cards.set(dev.id, { state, values });
      devSection.append(h("article", { class: "device-card", dataset: { device: dev.id }, "aria-labelledby": `dev-${dev.id}` },
        h("h3", { id: `dev-${dev.id}` }, h("a", { href: `#/devices/${encodeURIComponent(dev.id)}` }, dev.id), " ",
          h("span", { class: "muted" }, term("profile", dev.profile))),
        h("p", {}, state), values, commands));
      refreshDevice(dev.id).then((d) => {
        if (d) {
          const controls = commandControls(d, tracker.track(dev.id, () => refreshDevice(dev.id)), { canSend: ctx.staff });
          if (controls) commands.append(controls);
        }
      });
    }
    refreshActivity();
    try {
      const [leases, slots, ports, compartments, budget] = await Promise.all([
        api.all("leases", { pole_id: poleId }),
        api.all("slots", { pole_id: poleId }),
        api.all("ports", { pole_id: poleId }),
        api.all("compartments", { pole_id: poleId }),
        api.get(`slots/pole-budget/${encodeURIComponent(poleId)}`),
      ]);
      if (!stopped) replace(mountBox, capacity(leases, slots, ports, compartments, budget));
    } catch (err) {
      replace(mountBox, h("p", { class: "error" }, err.message));
    }
  })();

  const pending = new Set();
  const flush = throttle(() => {
    for (const id of pending) refreshDevice(id);
    pending.clear();
  }, 2000);
  const activity = throttle(refreshActivity, 2000);
  const unsubs = [
    live.subscribe("telemetry", (ev) => {
      if (!(ev.pole_ids || []).includes(poleId)) return;
      for (const id of ev.device_ids || []) if (cards.has(id)) pending.add(id);
      flush();
    }),
    live.subscribe("device", (ev) => { if (cards.has(ev.device_id)) { pending.add(ev.device_id); flush(); } }),
    live.subscribe("alarm", (ev) => { if (ev.pole_id === poleId) activity(); }),
    live.subscribe("command", (ev) => tracker.onEvent(ev)),
  ];
  const timer = setInterval(() => tracker.poll(), 5000);
  return () => {
    stopped = true;
    clearInterval(timer);
    unsubs.forEach((u) => u());
  };
}
