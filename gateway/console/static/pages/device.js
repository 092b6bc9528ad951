// A device: state, latest values, commands, and any metrics over a chosen range.

import * as api from "../api.js";
import { Chart } from "../chart.js";
import { commandControls, commandTracker, deviceStateBadge, valuesTable } from "../devicecard.js";
import { h, replace, throttle } from "../dom.js";
import { fmtAge, fmtDateTime, metricLabel, t, term } from "../i18n.js";
import * as live from "../live.js";
import { RANGES, fetchSeries } from "../series.js";

function localInput(ms) {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 16);
}

export function rangePicker(current, onChange) {
  const wrap = h("div", { class: "range-picker", role: "group", "aria-label": t("range.label") });
  const from = h("input", { type: "datetime-local", id: "range-from" });
  const to = h("input", { type: "datetime-local", id: "range-to" });
  const custom = h("form", { class: "custom-range", hidden: current.name !== "custom" },
    h("label", { for: "range-from" }, t("range.from")), from,
    h("label", { for: "range-to" }, t("range.to")), to,
    h("button", { type: "submit" }, t("range.apply")));
  if (current.name === "custom") {
    from.value = localInput(current.start);
    to.value = localInput(current.end);
  }
  for (const name of [...Object.keys(RANGES), "custom"]) {
    wrap.append(h("button", { type: "button", "aria-pressed": String(current.name === name), dataset: { range: name },
      onclick: () => {
        if (name === "custom") {
          custom.hidden = false;
          const now = Date.now();
          from.value = localInput(current.start ?? now - 86400e3);
          to.value = localInput(current.end ?? now);
          from.focus();
        } else onChange({ name });
      } }, t(`range.${name}`)));
  }
  custom.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const start = Date.parse(from.value);
    const end = Date.parse(to.value);
    if (!(start < end)) {
      to.setCustomValidity(t("range.invalid"));
      to.reportValidity();
      return;
    }
    to.setCustomValidity("");
    onChange({ name: "custom", start, end });
  });
  return h("div", {}, wrap, custom);
}

export function resolveRange(q) {
  const name = q.get("range") || "24h";
  if (name === "custom") {
    const start = Date.parse(q.get("start"));
    const end = Date.parse(q.get("end"));
    if (start < end) return { name, start, end };
  }
  const span = RANGES[name] || RANGES["24h"];
  const end = Date.now();
  return { name: RANGES[name] ? name : "24h", start: end - span, end };
}

export function render(main, ctx, deviceId) {
  document.title = `${deviceId} · polegw`;
  const box = h("section", { class: "page" }, h("p", { class: "muted" }, t("app.loading")));
  replace(main, box);
  let stopped = false;
  const charts = [];
  const tracker = commandTracker();
  const range = resolveRange(ctx.query);
  let detail = null;
  let chosen = null;
  const valuesBox = h("div");
  const headBox = h("div");

  function setQuery(changes) {
    const q = new URLSearchParams(ctx.query);
    for (const [k, v] of Object.entries(changes)) {
      if (v === null) q.delete(k);
      else q.set(k, v);
    }
    ctx.navigate(`#/devices/${encodeURIComponent(deviceId)}?${q}`);
  }

  async function refreshValues() {
    try {
      const [d, latest] = await Promise.all([
        api.get(`devices/${encodeURIComponent(deviceId)}`),
        api.get(`devices/${encodeURIComponent(deviceId)}/latest`),
      ]);
      if (stopped) return;
      detail = d;
      replace(headBox, h("p", {}, deviceStateBadge(d.state, d.state_since), " ",
        d.state_detail ? h("span", { class: "muted" }, d.state_detail) : null, " ",
        h("span", { class: "muted" }, t("device.last_seen", { age: d.last_seen ? fmtAge(d.last_seen) : "—" }))));
      replace(valuesBox, valuesTable(d, latest));
    } catch {
      /* shown on the next refresh */
    }
  }

  async function drawCharts(container) {
    const numeric = Object.entries(detail.metrics).filter(([, m]) => m.type !== "bool");
    const byUnit = new Map();
    for (const [name, m] of numeric) {
      if (!chosen.includes(name)) continue;
      const key = `${m.kind === "counter" ? "Δ " : ""}${m.unit || ""}`;
      if (!byUnit.has(key)) byUnit.set(key, []);
      byUnit.get(key).push([name, m]);
    }
    charts.splice(0).forEach((c) => c.destroy());
    replace(container);
    if (!byUnit.size) {
      container.append(h("p", { class: "empty" }, t("device.pick_metric")));
      return;
    }
    for (const [unit, metrics] of byUnit) {
      const holder = h("div", { class: "chart-box" });
      const note = h("p", { class: "muted small" });
      const counter = metrics[0][1].kind === "counter";
      container.append(h("figure", {},
        h("figcaption", {}, metrics.map(([n]) => metricLabel(n)).join(" · "),
          counter ? h("span", { class: "muted" }, ` (${t("chart.per_bucket")})`) : null),
        holder, note));
      const chart = new Chart(holder, {
        unit: metrics[0][1].unit || "",
        label: metrics.map(([n]) => metricLabel(n)).join(", "),
        onZoom: (a, b) => setQuery({ range: "custom", start: new Date(a).toISOString(), end: new Date(b).toISOString() }),
      });
      charts.push(chart);
      const width = holder.clientWidth || 600;
      const results = await Promise.all(metrics.map(([n, m]) => fetchSeries(deviceId, n, m.kind, range.start, range.end, width)));
      if (stopped) return;
      chart.set(results.map((r, i) => ({ label: metricLabel(metrics[i][0]), ...r })), { start: range.start, end: range.end });
      const b = results[0].bucket;
      note.textContent = b ? t("chart.bucketed", { bucket: b }) : t("chart.raw", { n: results.reduce((s, r) => s + r.points.length, 0) });
      holder.dataset.bucket = b || "raw";
    }
  }

  (async () => {
    try {
      await refreshValues();
      if (!detail) throw new Error(t("notfound.title"));
    } catch (err) {
      replace(box, h("h1", {}, deviceId), h("p", { class: "error" }, err.status === 404 ? t("notfound.text") : err.message));
      return;
    }
    const numeric = Object.entries(detail.metrics).filter(([, m]) => m.type !== "bool").map(([n]) => n);
    chosen = (ctx.query.get("metrics") || "").split(",").filter((m) => numeric.includes(m));
    if (!chosen.length) chosen = numeric.slice(0, 1);
    const chartsBox = h("div", { class: "charts", id: "device-charts" });
    const picker = h("fieldset", { class: "metric-picker" }, h("legend", {}, t("device.metrics")),
      numeric.map((n) => h("label", { class: "check" },
        h("input", { type: "checkbox", value: n, checked: chosen.includes(n) || null,
          onchange: (ev) => {
            const set = new Set(chosen);
            if (ev.target.checked) set.add(n); else set.delete(n);
            setQuery({ metrics: [...set].join(",") });
          } }),
        ` ${metricLabel(n)}`, detail.metrics[n].unit ? h("span", { class: "unit" }, ` ${detail.metrics[n].unit}`) : null)));
    replace(box,
      h("nav", { class: "crumbs", "aria-label": t("app.breadcrumb") },
        h("a", { href: `#/poles/${encodeURIComponent(detail.pole_id)}` }, `${t("pole.title")} ${detail.pole_id}`), " › ", deviceId),
      h("h1", {}, `${deviceId} · ${term("profile", detail.profile)}`),
      headBox,
      h("section", { class: "panel" }, h("h2", {}, t("device.history")),
        rangePicker(range, (r) => setQuery(r.name === "custom"
          ? { range: "custom", start: new Date(r.start).toISOString(), end: new Date(r.end).toISOString() }
          : { range: r.name, start: null, end: null })),
        h("p", { class: "muted small" }, `${fmtDateTime(range.start)} – ${fmtDateTime(range.end)}`),
        chartsBox, picker),
      h("section", { class: "panel" }, h("h2", {}, t("device.latest")), valuesBox,
        commandControls(detail, tracker.track(deviceId, () => refreshValues()), { canSend: ctx.staff })));
    await drawCharts(chartsBox);
  })();

  const soon = throttle(refreshValues, 2000);
  const unsubs = [
    live.subscribe("telemetry", (ev) => { if ((ev.device_ids || []).includes(deviceId)) soon(); }),
    live.subscribe("device", (ev) => { if (ev.device_id === deviceId) soon(); }),
    live.subscribe("command", (ev) => tracker.onEvent(ev)),
  ];
  const timer = setInterval(() => tracker.poll(), 5000);
  return () => {
    stopped = true;
    clearInterval(timer);
    unsubs.forEach((u) => u());
    charts.forEach((c) => c.destroy());
  };
}
