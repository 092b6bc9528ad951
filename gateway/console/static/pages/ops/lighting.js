// 节能: lighting groups on the site map, the weekly calendar and the coming
// nights as profiles (dim level over each night), exceptions, a one-off
// override with an end time, and per group the kWh used and saved against full
// power, by day and by month.

import * as api from "../../api.js";
import { h, replace, table, toast } from "../../dom.js";
import { fmtDate, fmtDateTime, fmtNumber, fmtTime, language, t } from "../../i18n.js";
import { SiteMap } from "../../sitemap.js";
import { clearErrors, field as errorField, generalError, showErrors } from "../admin/form.js";
import { field, isoToSiteTime, sitePoles, siteTimeToISO } from "./common.js";

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) el.setAttribute(k, v);
  for (const c of children) if (c) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

// The site's calendar date of an instant, "YYYY-MM-DD".
const siteDate = (ms, zone) => new Intl.DateTimeFormat("en-CA", { timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit" }).format(new Date(ms));
const addDays = (date, n) => new Date(Date.parse(`${date}T00:00:00Z`) + n * 86400e3).toISOString().slice(0, 10);
const weekday = (date) => new Intl.DateTimeFormat(language() === "en" ? "en-CA" : language(), { weekday: "short", timeZone: "UTC" }).format(new Date(`${date}T12:00:00Z`));
const ISO_DAYS = [1, 2, 3, 4, 5, 6, 7];
const dayName = (iso) => new Intl.DateTimeFormat(language() === "en" ? "en-CA" : language(), { weekday: "long", timeZone: "UTC" }).format(new Date(Date.UTC(2024, 0, iso))); // 2024-01-01 is a Monday

// "dusk+10" -> "Dusk + 10 min"; "23:00" stays.
function triggerWord(at) {
  const m = /^(dusk|dawn)([+-]\d+)?$/.exec(at);
  if (!m) return at;
  const base = t(`ops.light.${m[1]}`);
  return m[2] ? `${base} ${m[2][0]} ${t("ops.light.minutes", { n: m[2].slice(1) })}` : base;
}
const levelWord = (level) => (level === 0 ? t("ops.light.off") : `${level}%`);
const stepsWord = (steps) => steps.map((x) => `${triggerWord(x.at)} → ${levelWord(x.level)}`).join(" · ");

// Parse "dusk=100; 23:00=50; dawn=0" into steps.
export function parseSteps(text) {
  const steps = [];
  for (const part of text.split(/[;,，；\n]+/).map((p) => p.trim()).filter(Boolean)) {
    const m = /^(\S+)\s*[=:→>]\s*(\d{1,3})%?$/.exec(part.replace(/^(\d{1,2}:\d{2})\s*[=→>]/, "$1="));
    if (!m) throw new Error(t("ops.light.bad_steps", { part }));
    steps.push({ at: m[1].toLowerCase(), level: Number(m[2]) });
  }
  return steps;
}

// One night (site noon to noon) as a step profile of the dim level.
// The night under way is drawn from now on (the level in force now first).
function nightProfile(date, upcoming, zone, startLevel, now) {
  const from = Date.parse(siteTimeToISO(`${date}T12:00`, zone));
  const to = Date.parse(siteTimeToISO(`${addDays(date, 1)}T12:00`, zone));
  const steps = upcoming.filter((x) => x.ms >= from && x.ms < to);
  const W = 480, H = 40;
  const X = (ms) => ((ms - from) / (to - from)) * W;
  const Y = (lvl) => H - (lvl / 100) * (H - 4);
  const x0 = now > from && now < to ? X(now) : 0;
  let level = startLevel;
  const pts = [[x0, Y(level)]];
  for (const x of steps) {
    pts.push([X(x.ms), Y(level)], [X(x.ms), Y(x.level)]);
    level = x.level;
  }
  pts.push([W, Y(level)]);
  const area = `M${x0.toFixed(1)},${H} ${pts.map(([a, b]) => `L${a.toFixed(1)},${b.toFixed(1)}`).join(" ")} L${W},${H} Z`;
  const words = steps.map((x) => `${fmtTime(new Date(x.ms))} ${levelWord(x.level)}`);
  if (x0 > 0) words.unshift(t("ops.light.now_level", { level: levelWord(startLevel) }));
  const label = words.length ? words.join(" · ") : t("ops.light.no_change", { level: levelWord(startLevel) });
  const ticks = [6, 12, 18].map((hh) => s("line", { x1: (hh / 24) * W, x2: (hh / 24) * W, y1: 0, y2: H, class: "tick" }));
  return {
    end: level,
    el: h("li", { class: "night", dataset: { night: date } },
      h("div", { class: "night-label" }, h("strong", {}, `${weekday(date)} ${fmtDate(date)}`), " ", h("span", { class: "muted" }, label)),
      s("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", class: "profile", role: "img", "aria-label": `${fmtDate(date)}: ${label}` },
        s("rect", { x: 0, y: 0, width: W, height: H, class: "night-bg" }),
        x0 > 0 ? s("rect", { x: 0, y: 0, width: x0, height: H, class: "night-past" }) : null, ...ticks,
        s("path", { d: area, class: "level" }))),
  };
}

function nightsPanel(box, sched, zone) {
  const upcoming = sched.upcoming.map((x) => ({ ...x, ms: Date.parse(x.at) }));
  const today = siteDate(Date.now() - 12 * 3600e3, zone); // the night in progress starts at noon
  const now = Date.now();
  let level = sched.level_now ?? 0;
  const rows = [];
  for (let i = 0; i < 7; i++) {
    const night = nightProfile(addDays(today, i), upcoming, zone, level, now);
    level = night.end;
    rows.push(night.el);
  }
  replace(box, h("h2", { id: "light-nights-h" }, t("ops.light.nights")),
    h("p", { class: "muted small" }, t("ops.light.nights_hint")),
    h("div", { class: "axis", "aria-hidden": "true" }, ["12:00", "18:00", "00:00", "06:00", "12:00"].map((x) => h("span", {}, x))),
    h("ol", { class: "nights", id: "light-profile" }, rows));
}

export function render(main, ctx) {
  document.title = `${t("ops.nav.lighting")} · polegw`;
  const zone = ctx.config.site_timezone || "Asia/Shanghai";
  const picker = h("select", { id: "light-group" });
  const mapEl = h("div", { class: "map", id: "light-map" });
  const members = h("p", { class: "muted", id: "light-members" });
  const nights = h("section", { class: "panel", id: "light-nights", "aria-labelledby": "light-nights-h" });
  const calendar = h("section", { class: "panel", id: "light-calendar", "aria-labelledby": "light-cal-h" });
  const override = h("section", { class: "panel", id: "light-override", "aria-labelledby": "light-ov-h" });
  const energy = h("section", { class: "panel", id: "light-energy", "aria-labelledby": "light-en-h" });
  // The form to create a group, or to edit the one shown (managers only).
  const formBox = h("section", { class: "panel", id: "light-group-form", hidden: true, "aria-labelledby": "light-form-h" });
  const headError = generalError();
  headError.id = "light-head-error";
  let current = null; // the group shown
  let formFor; // the group the form edits; null: a new group; undefined: no form open
  const editButton = h("button", { type: "button", id: "light-edit", hidden: true, onclick: () => openForm(current) }, t("ops.light.edit_group"));
  const deleteButton = h("button", { type: "button", id: "light-delete", class: "danger", hidden: true, onclick: () => deleteGroup(current) }, t("ops.light.delete_group"));
  replace(main, h("section", { class: "page" },
    h("div", { class: "page-head" }, h("h1", {}, t("ops.nav.lighting")),
      field("light-group", t("ops.light.group"), picker),
      ctx.manager ? [
        h("button", { type: "button", onclick: () => (formFor === null ? closeForm() : openForm(null)) }, t("ops.light.new_group")),
        editButton, deleteButton] : null),
    ctx.manager ? headError : null,
    formBox,
    h("div", { class: "grid-2" },
      h("div", { class: "col" }, h("section", { class: "panel", "aria-labelledby": "light-map-h" }, h("h2", { id: "light-map-h" }, t("ops.light.on_map")), members, mapEl), nights, calendar),
      h("div", { class: "col" }, override, energy))));
  let stopped = false;
  let map = null;
  let site = { poles: [], roads: [] };
  let devicePoles = null;
  let picking = null; // while the group form is open: a click on a pole toggles it in the form
  const fail = (err) => toast(`${t("error.generic")} ${err.message}`, "error");

  function ensureMap() {
    if (!map) {
      map = new SiteMap(mapEl, ctx.config, {
        onOpen: (pid) => (picking ? picking(pid) : ctx.navigate(`#/poles/${encodeURIComponent(pid)}`)),
      });
      map.update(site.poles);
    }
    return map;
  }

  async function memberPoles(g) {
    const set = new Set(g.poles);
    for (const p of site.poles) if (g.road && p.road === g.road) set.add(p.id);
    if (g.devices.length) {
      if (!devicePoles) devicePoles = new Map((await api.all("devices", {}, { max: 20000 })).map((d) => [d.id, d.pole_id]));
      for (const d of g.devices) if (devicePoles.get(d)) set.add(devicePoles.get(d));
    }
    return set;
  }

  async function drawMap(g) {
    const inGroup = await memberPoles(g);
    if (stopped) return;
    ensureMap().update(site.poles);
    map.forEachMarker((pid, icon) => {
      icon.classList.toggle("in-group", inGroup.has(pid));
      icon.classList.toggle("not-in-group", !inGroup.has(pid));
      icon.setAttribute("aria-label", inGroup.has(pid) ? `${icon.title} · ${t("ops.light.in_group", { name: g.name })}` : icon.title);
    });
    replace(members, g.road ? t("ops.light.road_members", { road: g.road, n: inGroup.size }) : t("ops.light.members", { n: inGroup.size }));
  }

  async function putSchedule(g, definition) {
    try {
      await api.put(`lighting/groups/${encodeURIComponent(g.id)}/schedule`, definition);
      toast(t("ops.light.schedule_saved"));
      await drawSchedule(g);
    } catch (err) {
      fail(err);
    }
  }

  async function drawSchedule(g) {
    let sched;
    try {
      sched = await api.get(`lighting/groups/${encodeURIComponent(g.id)}/schedule`, { hours: 192 });
    } catch (err) {
      if (err.status !== 404) throw err;
      replace(nights, h("h2", { id: "light-nights-h" }, t("ops.light.nights")), h("p", { class: "empty" }, t("ops.light.no_schedule")));
      replace(calendar, h("h2", { id: "light-cal-h" }, t("ops.light.calendar")), h("p", { class: "empty" }, t("ops.light.no_schedule")));
      return;
    }
    if (stopped) return;
    nightsPanel(nights, sched, sched.site.timezone || zone);
    const def = sched.schedule;
    const ruleOf = (d) => def.rules.find((r) => r.days.includes(d));
    const exDate = h("input", { type: "date", required: true, value: siteDate(Date.now(), zone) });
    const exOff = h("input", { type: "checkbox", id: "light-ex-off" });
    const exSteps = h("input", { placeholder: "dusk=100; 23:00=50; dawn=0" });
    replace(calendar, h("h2", { id: "light-cal-h" }, t("ops.light.calendar")),
      h("p", { class: "muted small" }, t(`ops.light.twilight_${def.twilight}`), " · ", t("ops.light.valid_from", { at: fmtDateTime(sched.valid_from), by: sched.created_by })),
      table(t("ops.light.calendar"), [t("ops.light.day"), t("ops.light.steps")],
        ISO_DAYS.map((d) => {
          const r = ruleOf(d);
          return [dayName(d), r ? stepsWord(r.steps) : t("ops.light.no_rule")];
        })),
      h("h3", {}, t("ops.light.exceptions")),
      def.exceptions && def.exceptions.length
        ? h("ul", { class: "list", id: "light-exceptions" }, def.exceptions.map((x, i) => h("li", { dataset: { date: x.date } },
          h("strong", {}, `${weekday(x.date)} ${fmtDate(x.date)}`), " ", x.off ? t("ops.light.off_all_night") : stepsWord(x.steps),
          ctx.manager ? h("button", { type: "button", class: "link-button", onclick: () => putSchedule(g, { ...def, exceptions: def.exceptions.filter((_, j) => j !== i) }) }, t("ops.remove")) : null)))
        : h("p", { class: "empty" }, t("ops.light.no_exceptions")),
      ctx.manager ? h("form", { class: "form-inline", "aria-label": t("ops.light.add_exception"), onsubmit: (ev) => {
        ev.preventDefault();
        let x;
        try {
          x = exOff.checked ? { date: exDate.value, off: true } : { date: exDate.value, off: false, steps: parseSteps(exSteps.value) };
        } catch (err) {
          toast(err.message, "error");
          return;
        }
        const rest = (def.exceptions || []).filter((e) => e.date !== x.date);
        putSchedule(g, { ...def, exceptions: [...rest, x].sort((a, b) => a.date.localeCompare(b.date)) });
      } }, field("light-ex-date", t("ops.light.ex_date"), exDate),
      h("div", { class: "check" }, exOff, h("label", { for: "light-ex-off" }, t("ops.light.off_all_night"))),
      field("light-ex-steps", t("ops.light.ex_steps"), exSteps),
      h("button", { type: "submit" }, t("ops.light.add_exception"))) : null);
  }

  async function drawOverride(g) {
    const list = await api.get(`lighting/groups/${encodeURIComponent(g.id)}/overrides`, { active: true });
    if (stopped) return;
    const level = h("input", { type: "number", min: 0, max: 100, step: 1, value: 100, required: true, inputmode: "numeric" });
    const until = h("input", { type: "datetime-local", required: true, value: isoToSiteTime(Date.now() + 2 * 3600e3, zone) });
    const reason = h("input", { maxlength: 500 });
    replace(override, h("h2", { id: "light-ov-h" }, t("ops.light.override")),
      list.items.length ? h("ul", { class: "list", id: "light-overrides" }, list.items.map((o) => h("li", { dataset: { override: o.id } },
        h("strong", {}, levelWord(o.level)), " ", t("ops.light.until", { at: fmtDateTime(o.until) }), " ",
        h("span", { class: "muted" }, `${o.created_by}${o.reason ? ` · ${o.reason}` : ""}`),
        ctx.manager ? h("button", { type: "button", onclick: async () => {
          try {
            await api.del(`lighting/groups/${encodeURIComponent(g.id)}/overrides/${o.id}`);
            drawOverride(g);
          } catch (err) {
            fail(err);
          }
        } }, t("ops.light.end_now")) : null)))
        : h("p", { class: "empty" }, t("ops.light.no_override")),
      ctx.manager ? h("form", { class: "form-grid", "aria-label": t("ops.light.override"), onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          await api.post(`lighting/groups/${encodeURIComponent(g.id)}/overrides`, {
            level: Number(level.value), until: siteTimeToISO(until.value, zone), reason: reason.value.trim(),
          });
          toast(t("ops.light.override_set"));
          await Promise.all([drawOverride(g), drawSchedule(g)]);
        } catch (err) {
          fail(err);
        }
      } }, field("light-ov-level", t("ops.light.level"), level), field("light-ov-until", t("ops.light.until_label"), until),
      field("light-ov-reason", t("ops.light.reason"), reason),
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, t("ops.light.set_override")))) : null);
  }

  // The periods (site days or months) ending now, each [label, start, end].
  function periods(by) {
    const out = [];
    const today = siteDate(Date.now(), zone);
    if (by === "day") {
      for (let i = 13; i >= 0; i--) {
        const d = addDays(today, -i);
        out.push([fmtDate(d).slice(5), siteTimeToISO(`${d}T00:00`, zone), siteTimeToISO(`${addDays(d, 1)}T00:00`, zone)]);
      }
    } else {
      let [y, m] = today.split("-").map(Number);
      for (let i = 0; i < 12; i++) {
        const first = `${y}-${String(m).padStart(2, "0")}-01`;
        const ny = m === 12 ? y + 1 : y;
        const nm = m === 12 ? 1 : m + 1;
        out.unshift([`${y}-${String(m).padStart(2, "0")}`, siteTimeToISO(`${first}T00:00`, zone), siteTimeToISO(`${ny}-${String(nm).padStart(2, "0")}-01T00:00`, zone)]);
        if (m === 1) { y -= 1; m = 12; } else m -= 1;
      }
    }
    return out;
  }

  async function drawEnergy(g, by) {
    const ps = periods(by);
    const buttons = ["day", "month"].map((b) => h("button", { type: "button", "aria-pressed": String(b === by), onclick: () => drawEnergy(g, b) }, t(`ops.light.by_${b}`)));
    const holder = h("div", { class: "energy-chart" }, h("p", { class: "muted" }, t("app.loading")));
    replace(energy, h("h2", { id: "light-en-h" }, t("ops.light.energy")), h("div", { class: "toggle", role: "group", "aria-label": t("ops.light.energy") }, buttons), holder);
    const reports = new Array(ps.length);
    let next = 0;
    const worker = async () => {
      while (next < ps.length) {
        const i = next++;
        reports[i] = await api.get(`lighting/groups/${encodeURIComponent(g.id)}/energy`, { start: ps[i][1], end: ps[i][2] });
      }
    };
    try {
      await Promise.all([worker(), worker(), worker(), worker()]);
    } catch (err) {
      replace(holder, h("p", { class: "error" }, err.message));
      return;
    }
    if (stopped) return;
    const used = reports.reduce((a, r) => a + r.used_kwh, 0);
    const saved = reports.reduce((a, r) => a + Math.max(0, r.saved_kwh), 0);
    const base = reports.reduce((a, r) => a + r.baseline_kwh, 0);
    const W = 480, H = 160, pad = 18;
    const max = Math.max(0.001, ...reports.map((r) => Math.max(r.baseline_kwh, r.used_kwh)));
    const bw = (W / ps.length) * 0.7;
    const bars = reports.flatMap((r, i) => {
      const x = (W / ps.length) * i + (W / ps.length - bw) / 2;
      const hu = ((H - pad) * r.used_kwh) / max;
      const hs = ((H - pad) * Math.max(0, r.saved_kwh)) / max;
      const tip = `${ps[i][0]}: ${t("ops.light.used")} ${fmtNumber(r.used_kwh, 2)} kWh · ${t("ops.light.saved")} ${fmtNumber(r.saved_kwh, 2)} kWh`;
      return [
        s("rect", { x, y: H - pad - hu, width: bw, height: hu, class: "bar-used", "data-start": ps[i][1], "data-end": ps[i][2] }, s("title", {}, tip)),
        s("rect", { x, y: H - pad - hu - hs, width: bw, height: hs, class: "bar-saved" }, s("title", {}, tip)),
        i % (ps.length > 12 ? 2 : 1) === 0 ? s("text", { x: x + bw / 2, y: H - 4, "text-anchor": "middle", class: "bar-label" }, ps[i][0]) : null,
      ];
    });
    replace(holder,
      h("p", { id: "light-energy-total", dataset: { start: ps[0][1], end: ps[ps.length - 1][2] } },
        t("ops.light.total", { used: fmtNumber(used, 2), saved: fmtNumber(saved, 2), pct: base > 0 ? fmtNumber((100 * saved) / base, 0) : "—" })),
      h("ul", { class: "legend" },
        h("li", {}, h("span", { class: "swatch bar-used", "aria-hidden": "true" }), ` ${t("ops.light.used")}`),
        h("li", {}, h("span", { class: "swatch bar-saved", "aria-hidden": "true" }), ` ${t("ops.light.saved")}`)),
      s("svg", { viewBox: `0 0 ${W} ${H}`, class: "bars", role: "img", "aria-label": t("ops.light.chart_label", { by: t(`ops.light.by_${by}`) }) },
        s("line", { x1: 0, x2: W, y1: H - pad, y2: H - pad, class: "tick" }), ...bars.filter(Boolean)),
      h("details", {}, h("summary", {}, t("ops.light.numbers")),
        table(t("ops.light.energy"), [t(`ops.light.period_${by}`), `${t("ops.light.used")} (kWh)`, `${t("ops.light.baseline")} (kWh)`, `${t("ops.light.saved")} (kWh)`],
          reports.map((r, i) => [ps[i][0], fmtNumber(r.used_kwh, 2), fmtNumber(r.baseline_kwh, 2), fmtNumber(r.saved_kwh, 2)]))));
  }

  // The group form: a new group (g null) or the group g, prefilled. Members are
  // a road, poles (typed, or picked on the map) and devices; the map shows the
  // members as they stand in the form until it is saved or cancelled.
  function openForm(g) {
    const editing = g !== null;
    formFor = g;
    const list = (text) => text.split(/[\s,，;；]+/).filter(Boolean);
    const roads = [...site.roads];
    if (editing && g.road && !roads.includes(g.road)) roads.push(g.road);
    const fields = {
      ...(editing ? {} : { id: errorField("id", t("ops.light.group_id"), h("input", { id: "light-form-id", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9_.\\-]{0,63}", maxlength: 64, autocomplete: "off" })) }),
      name: errorField("name", t("ops.insp.name"), h("input", { id: "light-form-name", required: true, maxlength: 200, autocomplete: "off" })),
      road: errorField("road", t("ops.insp.road"), h("select", { id: "light-form-road" }, h("option", { value: "" }, t("ops.light.by_poles")), roads.map((r) => h("option", { value: r }, r)))),
      poles: errorField("poles", t("ops.insp.poles"), h("input", { id: "light-form-poles", placeholder: "P0001, P0002", autocomplete: "off" }), { hint: t("ops.light.pick_hint") }),
      devices: errorField("devices", t("ops.light.devices"), h("input", { id: "light-form-devices", placeholder: "P0001-lamp", autocomplete: "off" })),
    };
    if (editing) {
      fields.name.input.value = g.name;
      fields.road.input.value = g.road || "";
      fields.poles.input.value = g.poles.join(", ");
      fields.devices.input.value = g.devices.join(", ");
    }
    const general = generalError();
    const draft = () => ({
      name: fields.name.input.value.trim() || (editing ? g.name : t("ops.light.new_group")),
      road: fields.road.input.value || null,
      poles: list(fields.poles.input.value),
      devices: list(fields.devices.input.value),
    });
    const redraw = () => drawMap(draft()).catch(fail);
    picking = (pid) => {
      const poles = list(fields.poles.input.value);
      fields.poles.input.value = (poles.includes(pid) ? poles.filter((p) => p !== pid) : [...poles, pid]).join(", ");
      redraw();
    };
    for (const f of [fields.road, fields.poles, fields.devices]) f.input.addEventListener("change", redraw);
    const submit = h("button", { type: "submit", class: "primary" }, t(editing ? "ops.light.save_group" : "ops.light.create_group"));
    const form = h("form", { class: "form-grid", novalidate: true, "aria-label": t(editing ? "ops.light.edit_group" : "ops.light.new_group"), onsubmit: async (ev) => {
      ev.preventDefault();
      clearErrors(fields, general);
      const d = draft();
      const body = { name: fields.name.input.value.trim(), poles: d.poles, devices: d.devices };
      if (d.road) body.road = d.road;
      const local = [];
      if (!editing && !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(fields.id.input.value.trim())) local.push({ loc: ["body", "id"], msg: t("ops.light.bad_id") });
      if (!body.name) local.push({ loc: ["body", "name"], msg: t("ops.light.need_name") });
      if (!d.road && !d.poles.length && !d.devices.length) local.push({ loc: ["body", "poles"], msg: t("ops.light.need_members") });
      if (local.length) {
        showErrors(fields, general, new api.ApiError(422, local));
        return;
      }
      submit.disabled = true;
      try {
        const saved = editing
          ? await api.put(`lighting/groups/${encodeURIComponent(g.id)}`, body)
          : await api.post("lighting/groups", { id: fields.id.input.value.trim(), ...body });
        toast(t(editing ? "ops.light.group_saved" : "ops.light.group_created", { name: saved.name }));
        picking = null;
        ctx.navigate(`#/lighting?group=${encodeURIComponent(saved.id)}`);
      } catch (err) {
        submit.disabled = false;
        formError(err, fields, general);
      }
    } },
    fields.id ? fields.id.row : null, fields.name.row, fields.road.row, fields.poles.row, fields.devices.row, general,
    h("div", { class: "actions" }, submit, h("button", { type: "button", onclick: closeForm }, t("ops.light.cancel"))));
    replace(formBox, h("h2", { id: "light-form-h" }, editing ? t("ops.light.edit_named", { name: g.name }) : t("ops.light.new_group")), form);
    formBox.hidden = false;
    redraw();
    (fields.id || fields.name).input.focus();
  }

  function closeForm() {
    picking = null;
    formFor = undefined;
    formBox.hidden = true;
    replace(formBox);
    if (current) {
      drawMap(current).catch(fail);
    } else if (map) {
      map.forEachMarker((pid, icon) => {
        icon.classList.remove("in-group", "not-in-group");
        icon.setAttribute("aria-label", icon.title);
      });
      replace(members, t("ops.light.no_groups_hint"));
    }
  }

  // The API's refusals, in the user's words where the page knows them: a
  // group gone (404), an id taken (409), unknown poles or devices (422).
  function formError(err, fields, general) {
    if (!(err instanceof api.ApiError)) {
      showErrors(fields, general, err);
      return;
    }
    if (err.status === 404) {
      clearErrors(fields, general);
      replace(general, t("ops.light.group_gone"));
      general.focus();
      return;
    }
    if (err.status === 409) {
      showErrors(fields, general, new api.ApiError(409, [{ loc: ["body", "id"], msg: t("ops.light.id_taken") }]));
      return;
    }
    const detail = Array.isArray(err.detail) ? err.detail.map((d) => {
      const m = /^no such (pole|device): '(.*)'$/.exec(d.msg || "");
      return m ? { ...d, msg: t(m[1] === "pole" ? "ops.light.unknown_pole" : "ops.light.unknown_device", { id: m[2] }) } : d;
    }) : err.detail;
    showErrors(fields, general, new api.ApiError(err.status, detail));
  }

  // Deleting a group deletes its schedules, overrides and dispatch history: the
  // confirmation says so.
  async function deleteGroup(g) {
    replace(headError);
    if (!window.confirm(t("ops.light.delete_confirm", { name: g.name }))) return;
    deleteButton.disabled = true;
    try {
      await api.del(`lighting/groups/${encodeURIComponent(g.id)}`);
      toast(t("ops.light.group_deleted", { name: g.name }));
      ctx.navigate("#/lighting");
    } catch (err) {
      deleteButton.disabled = false;
      replace(headError, err.status === 404 ? t("ops.light.group_gone") : `${t("error.generic")} ${err.message}`);
      headError.focus();
    }
  }

  (async () => {
    try {
      const [groups, s0] = await Promise.all([api.all("lighting/groups", {}, { max: 1000 }), sitePoles()]);
      if (stopped) return;
      site = s0;
      if (!groups.length) {
        replace(picker, h("option", { value: "" }, t("ops.light.no_groups")));
        picker.disabled = true;
        ensureMap();
        replace(members, t("ops.light.no_groups_hint"));
        for (const box of [nights, calendar, override, energy]) box.hidden = true;
        return;
      }
      replace(picker, groups.map((g) => h("option", { value: g.id }, g.name)));
      const g = groups.find((x) => x.id === ctx.query.get("group")) || groups[0];
      current = g;
      picker.value = g.id;
      editButton.hidden = false;
      deleteButton.hidden = false;
      editButton.setAttribute("aria-label", t("ops.light.edit_named", { name: g.name }));
      deleteButton.setAttribute("aria-label", t("ops.light.delete_named", { name: g.name }));
      picker.addEventListener("change", () => ctx.navigate(`#/lighting?group=${encodeURIComponent(picker.value)}`));
      await Promise.all([drawMap(g), drawSchedule(g), drawOverride(g), drawEnergy(g, ctx.query.get("by") === "month" ? "month" : "day")]);
    } catch (err) {
      if (!stopped) toast(`${t("error.generic")} ${err.message}`, "error");
    }
  })();
  return () => {
    stopped = true;
    if (map) map.destroy();
  };
}
