// 告警: active and past alarms, filtered; acknowledge with a note; the readings
// that raised an alarm on a chart around the moment it was raised.

import * as api from "../api.js";
import { Chart } from "../chart.js";
import { h, replace, throttle, toast } from "../dom.js";
import { fmtAge, fmtDateTime, fmtNumber, has, metricLabel, t, term } from "../i18n.js";
import * as live from "../live.js";
import { fetchSeries } from "../series.js";

const RANK = { critical: 0, major: 1, minor: 2, warning: 3 };
const GLYPH = { critical: "!", major: "▲", minor: "△", warning: "i" };

// Most severe first, then newest.
export function sortAlarms(items) {
  return [...items].sort((a, b) => (RANK[a.severity] - RANK[b.severity]) || (Date.parse(b.first_seen) - Date.parse(a.first_seen)));
}

// What is wrong, in words: the fault's name, else the rule's (a threshold rule
// without a fault of its own is named "threshold:<metric>"), else the message.
export function faultLabel(a) {
  if (has(`fault.${a.fault}`)) return t(`fault.${a.fault}`);
  const rule = (a.rule_key || "").split("/").pop();
  if (has(`fault.${rule}`)) return t(`fault.${rule}`);
  return a.message || a.fault;
}

export function severityBadge(sev) {
  return h("span", { class: `badge sev-${sev}` }, h("span", { class: "glyph", "aria-hidden": "true" }, GLYPH[sev] || "?"), " ", term("severity", sev));
}

export function alarmList(items, { compact = false, showPole = true, onSelect } = {}) {
  if (!items.length) return h("p", { class: "empty" }, t("alarms.none"));
  return h("ul", { class: "list alarms" }, items.map((a) => h("li", { class: `alarm state-${a.state}`, dataset: { alarm: a.id } },
    severityBadge(a.severity), " ",
    onSelect
      ? h("button", { type: "button", class: "link-button", onclick: () => onSelect(a) }, faultLabel(a))
      : h("a", { href: `#/alarms?id=${a.id}` }, faultLabel(a)),
    " ", showPole ? h("a", { href: `#/poles/${encodeURIComponent(a.pole_id)}` }, a.pole_id) : null,
    " ", h("span", { class: "muted" }, a.device_id),
    a.value !== null && a.metric ? h("span", {}, ` · ${metricLabel(a.metric)} ${fmtNumber(a.value)}`) : null,
    " ", h("span", { class: "muted", title: fmtDateTime(a.first_seen, { seconds: true }) }, fmtAge(a.first_seen)),
    compact ? null : h("span", { class: `badge alarm-${a.state}` }, " ", term("alarmstate", a.state)))));
}

async function alarmChart(box, a) {
  if (!a.metric) {
    replace(box, h("p", { class: "muted" }, t("alarms.no_metric")));
    return null;
  }
  const raised = Date.parse(a.first_seen);
  const endAt = a.cleared_at ? Date.parse(a.cleared_at) : Date.now();
  const start = raised - 3600e3;
  const end = Math.min(Date.now(), Math.max(endAt, raised) + 1800e3);
  const holder = h("div", { class: "chart-box" });
  replace(box, h("figure", {}, h("figcaption", {}, `${a.device_id} · ${metricLabel(a.metric)}`), holder));
  const chart = new Chart(holder, { label: `${a.device_id} ${metricLabel(a.metric)}` });
  try {
    const dev = await api.get(`devices/${encodeURIComponent(a.device_id)}`);
    const spec = dev.metrics[a.metric] || { kind: "gauge", unit: "" };
    const s = await fetchSeries(a.device_id, a.metric, spec.kind === "counter" ? "gauge" : spec.kind, start, end, holder.clientWidth || 600);
    chart.set([{ label: metricLabel(a.metric), ...s }], { start, end, unit: spec.unit || "", marker: { at: raised, label: t("alarms.raised") } });
  } catch (err) {
    box.append(h("p", { class: "error" }, err.message));
  }
  return chart;
}

export function render(main, ctx) {
  document.title = `${t("nav.alarms")} · polegw`;
  const q = ctx.query;
  const f = {
    state: h("select", { id: "f-state" }, ["active", "acknowledged", "cleared", ""].map((s) => h("option", { value: s }, s ? term("alarmstate", s) : t("alarms.any_state")))),
    severity: h("select", { id: "f-severity" }, ["", "critical", "major", "minor", "warning"].map((s) => h("option", { value: s }, s ? term("severity", s) : t("alarms.any_severity")))),
    pole: h("input", { id: "f-pole", list: "f-pole-list", autocomplete: "off", size: 10 }),
    road: h("select", { id: "f-road" }, h("option", { value: "" }, t("map.all_roads"))),
    since: h("input", { id: "f-since", type: "date" }),
    until: h("input", { id: "f-until", type: "date" }),
  };
  f.state.value = q.has("state") ? q.get("state") : "active";
  f.severity.value = q.get("severity") || "";
  f.pole.value = q.get("pole") || "";
  f.since.value = q.get("since") || "";
  f.until.value = q.get("until") || "";
  const poleList = h("datalist", { id: "f-pole-list" });
  const listBox = h("div", { id: "alarm-list", "aria-live": "polite" });
  const detailBox = h("section", { class: "panel", id: "alarm-detail", hidden: true, "aria-labelledby": "alarm-detail-h" });
  const more = h("button", { type: "button", hidden: true }, t("app.more"));
  replace(main, h("section", { class: "page" },
    h("h1", {}, t("nav.alarms")),
    h("form", { class: "filters", onsubmit: (ev) => { ev.preventDefault(); apply(); } },
      h("label", { for: "f-state" }, t("alarms.state")), f.state,
      h("label", { for: "f-severity" }, t("alarms.severity")), f.severity,
      h("label", { for: "f-road" }, t("map.road")), f.road,
      h("label", { for: "f-pole" }, t("alarms.pole")), f.pole, poleList,
      h("label", { for: "f-since" }, t("range.from")), f.since,
      h("label", { for: "f-until" }, t("range.to")), f.until,
      h("button", { type: "submit" }, t("app.filter"))),
    detailBox,
    listBox, more));

  let stopped = false;
  let items = [];
  let next = null;
  let poles = [];
  let chart = null;

  function apply() {
    const p = new URLSearchParams();
    for (const k of ["state", "severity", "pole", "since", "until"]) if (f[k].value) p.set(k, f[k].value);
    if (f.road.value) p.set("road", f.road.value);
    if (!f.state.value) p.set("state", "");
    ctx.navigate(`#/alarms?${p}`);
  }
  const dayStart = (d) => (d ? new Date(`${d}T00:00:00`).toISOString() : undefined);
  const dayEnd = (d) => (d ? new Date(Date.parse(`${d}T00:00:00`) + 86400e3).toISOString() : undefined);

  function query(after) {
    return {
      state: f.state.value || undefined, severity: f.severity.value || undefined,
      pole: f.pole.value.trim() || undefined, since: dayStart(f.since.value), until: dayEnd(f.until.value),
      limit: 100, after,
    };
  }
  function inRoad(a) {
    const road = q.get("road");
    if (!road) return true;
    const p = poles.find((x) => x.id === a.pole_id);
    return p && p.road === road;
  }
  function draw() {
    const shown = items.filter(inRoad);
    replace(listBox, alarmList(f.state.value === "active" ? sortAlarms(shown) : shown, { onSelect: select }));
    more.hidden = !next;
  }
  async function load() {
    try {
      const page = await api.get("alarms", query());
      if (stopped) return;
      items = page.items;
      next = page.next;
      draw();
    } catch (err) {
      replace(listBox, h("p", { class: "error" }, err.message));
    }
  }
  more.addEventListener("click", async () => {
    const page = await api.get("alarms", query(next));
    items = items.concat(page.items);
    next = page.next;
    draw();
  });

  async function select(a) {
    if (chart) chart.destroy();
    detailBox.hidden = false;
    const note = h("textarea", { id: "ack-note", rows: 2, maxlength: 2000 });
    const chartBox = h("div");
    const ackForm = a.state === "active"
      ? h("form", { class: "ack", onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          const done = await api.post(`alarms/${a.id}/ack`, { note: note.value.trim() || null });
          toast(t("alarms.acked", { id: a.id }));
          select(done);
          load();
        } catch (err) {
          toast(`${t("error.generic")} ${err.message}`, "error");
        }
      } }, h("label", { for: "ack-note" }, t("alarms.ack_note")), note, h("button", { type: "submit", class: "primary" }, t("alarms.ack")))
      : null;
    replace(detailBox,
      h("h2", { id: "alarm-detail-h" }, severityBadge(a.severity), " ", faultLabel(a), " #", String(a.id)),
      h("dl", { class: "record" },
        h("dt", {}, t("alarms.state")), h("dd", { id: "alarm-state" }, term("alarmstate", a.state)),
        h("dt", {}, t("alarms.pole")), h("dd", {}, h("a", { href: `#/poles/${encodeURIComponent(a.pole_id)}` }, a.pole_id)),
        h("dt", {}, t("event.device")), h("dd", {}, h("a", { href: `#/devices/${encodeURIComponent(a.device_id)}` }, a.device_id)),
        h("dt", {}, t("alarms.message")), h("dd", {}, a.message),
        h("dt", {}, t("alarms.first_seen")), h("dd", {}, fmtDateTime(a.first_seen, { seconds: true })),
        h("dt", {}, t("alarms.last_seen")), h("dd", {}, fmtDateTime(a.last_seen, { seconds: true }), ` (×${a.count})`),
        a.acknowledged_by ? [h("dt", {}, t("alarms.acked_by")), h("dd", {}, `${a.acknowledged_by} · ${fmtDateTime(a.acknowledged_at)}`, a.ack_note ? ` — ${a.ack_note}` : "")] : null,
        a.cleared_at ? [h("dt", {}, t("alarms.cleared_at")), h("dd", {}, fmtDateTime(a.cleared_at, { seconds: true }))] : null),
      ackForm, chartBox,
      h("button", { type: "button", class: "link-button", onclick: () => { detailBox.hidden = true; if (chart) chart.destroy(); } }, t("app.close")));
    detailBox.scrollIntoView({ block: "nearest" });
    chart = await alarmChart(chartBox, a);
  }

  (async () => {
    try {
      const data = await api.get("overview/poles");
      poles = data.poles;
      for (const r of data.roads) f.road.append(h("option", { value: r }, r));
      f.road.value = q.get("road") || "";
      for (const p of poles.slice(0, 3000)) poleList.append(h("option", { value: p.id }, `${p.name} · ${p.road}`));
    } catch {
      /* the road filter stays empty */
    }
    await load();
    const id = Number(q.get("id"));
    if (id) {
      try {
        select(await api.get(`alarms/${id}`));
      } catch (err) {
        toast(err.message, "error");
      }
    }
  })();
  const soon = throttle(load, 1500);
  const unsub = live.subscribe("alarm", soon);
  return () => {
    stopped = true;
    unsub();
    if (chart) chart.destroy();
  };
}
