// 运行档案 and 接管: the poles' operation archive as a searchable list, a pole's
// or device's record with every change (who, what, when), editing the record,
// the takeover checklist of a pole not yet taken over, and a device's
// retirement or replacement.

import * as api from "../../api.js";
import { h, replace, table, toast } from "../../dom.js";
import { fmtDate, fmtDateTime, t, term } from "../../i18n.js";
import { clearErrors, field, generalError, input, patch, select, showErrors, value } from "./form.js";

const STATUSES = ["planned", "in_service", "faulty", "under_maintenance", "retired"];
const STATUS_GLYPH = { planned: "○", in_service: "●", faulty: "✕", under_maintenance: "⚒", retired: "–" };
// The archive fields a manager edits (gateway.api.routes.poles.ArchiveFields).
const ARCHIVE_FIELDS = ["status", "model", "vendor", "serial", "installed_on", "taken_over_from", "taken_over_on", "warranty_until", "mounting_position", "notes"];
const DATE_FIELDS = new Set(["installed_on", "taken_over_on", "warranty_until", "created_at"]);
const TIME_FIELDS = new Set(["revoked_at", "at", "changed_at", "acknowledged_at", "cleared_at", "first_seen", "last_seen"]);
const CHECKS = ["structure", "cabinet", "devices", "documents"];
const PAGE_ROWS = 200;

export function statusBadge(status) {
  return h("span", { class: `badge arch-${status}` },
    h("span", { class: "glyph", "aria-hidden": "true" }, STATUS_GLYPH[status] || "?"), " ", term("archive", status));
}

// A field's name in words (archive, user and key fields), else the name itself.
export const fieldLabel = (name) => term("admin.field", name);

// A recorded value in words: dates and times in the site's zone, states by name.
export function showValue(name, v) {
  if (v === null || v === undefined || v === "") return "—";
  if (typeof v === "boolean") return term("yesno", String(v));
  if (name === "status" && STATUSES.includes(v)) return term("archive", v);
  if (name === "role") return term("role", v);
  if (name === "profile") return term("profile", v);
  if (typeof v === "string" && DATE_FIELDS.has(name) && /^\d{4}-\d{2}-\d{2}$/.test(v)) return fmtDate(v);
  if (typeof v === "string" && (TIME_FIELDS.has(name) || DATE_FIELDS.has(name)) && /^\d{4}-\d{2}-\d{2}T/.test(v)) return fmtDateTime(v, { seconds: true });
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

// Rows [field, before, after] as a table; a field only added or only removed
// shows "—" on the other side. Changed cells are marked for sighted users and
// screen readers alike (the column headers say which side is which).
export function diffTable(caption, rows) {
  return h("div", { class: "table-wrap" },
    h("table", { class: "diff" },
      h("caption", { class: "visually-hidden" }, caption),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, t("admin.diff.field")), h("th", { scope: "col" }, t("admin.diff.before")), h("th", { scope: "col" }, t("admin.diff.after")))),
      h("tbody", {}, rows.map(([name, before, after]) => h("tr", { dataset: { field: name } },
        h("th", { scope: "row" }, fieldLabel(name)),
        h("td", { class: "diff-old" }, h("del", {}, showValue(name, before))),
        h("td", { class: "diff-new" }, h("ins", {}, showValue(name, after))))))));
}

// A filter's label and control, kept together when the row wraps.
export function filterItem(id, label, control, extra = null) {
  return h("span", { class: "filter-item" }, h("label", { for: id }, label), control, extra);
}

function siteToday(ctx) {
  return new Intl.DateTimeFormat("en-CA", { timeZone: ctx.config.site_timezone || "Asia/Shanghai", year: "numeric", month: "2-digit", day: "2-digit" }).format(new Date());
}

// ------------------------------------------------------------------ the list

export const list = {
  render(main, ctx) {
    document.title = `${t("admin.archive.title")} · polegw`;
    const q = ctx.query;
    const devices = q.get("kind") === "devices";
    const f = {
      kind: select([["poles", t("admin.archive.kind_poles")], ["devices", t("admin.archive.kind_devices")]], devices ? "devices" : "poles"),
      q: input({ type: "search", id: "arch-q", value: q.get("q") || "", autocomplete: "off" }),
      status: select([["", t("map.all_states")], ...STATUSES.map((s) => [s, term("archive", s)])], q.get("status") || ""),
      road: select([["", t("map.all_roads")]]),
      taken: select([["", t("admin.archive.taken_any")], ["yes", t("admin.archive.taken_yes")], ["no", t("admin.archive.taken_no")]], q.get("taken") || ""),
      taken_from: input({ type: "date", id: "arch-taken-from", value: q.get("taken_from") || "" }),
      taken_to: input({ type: "date", id: "arch-taken-to", value: q.get("taken_to") || "" }),
    };
    f.kind.id = "arch-kind";
    f.status.id = "arch-status";
    f.road.id = "arch-road";
    f.taken.id = "arch-taken";
    const count = h("p", { class: "muted lead", role: "status", id: "arch-count" });
    const box = h("div", { id: "archive-list" }, h("p", { class: "muted" }, t("app.loading")));
    const more = h("button", { type: "button", hidden: true }, t("app.more"));
    replace(main, h("section", { class: "page" },
      h("h1", {}, t("admin.archive.title")),
      h("form", { class: "filters", role: "search", onsubmit: (ev) => { ev.preventDefault(); apply(); } },
        filterItem("arch-kind", t("admin.archive.kind"), f.kind),
        filterItem("arch-q", t(devices ? "admin.archive.search_devices" : "admin.archive.search"), f.q),
        filterItem("arch-status", t("pole.status"), f.status),
        filterItem("arch-road", t("map.road"), f.road),
        filterItem("arch-taken", t("admin.archive.taken"), f.taken),
        filterItem("arch-taken-from", t("admin.archive.taken_from"), f.taken_from),
        filterItem("arch-taken-to", t("admin.archive.taken_to"), f.taken_to),
        h("button", { type: "submit" }, t("app.filter"))),
      count, box, more));

    function apply() {
      const p = new URLSearchParams();
      for (const k of ["q", "status", "road", "taken", "taken_from", "taken_to"]) if (f[k].value.trim()) p.set(k, f[k].value.trim());
      if (f.kind.value === "devices") p.set("kind", "devices");
      ctx.navigate(`#/archive?${p}`);
    }

    let stopped = false;
    let shown = PAGE_ROWS;
    let rows = [];
    let roadOf = new Map();
    function draw() {
      if (devices) {
        replace(box, table(t("admin.archive.kind_devices"),
          [t("event.device"), t("alarms.pole"), t("admin.archive.profile"), t("pole.status"), t("pole.serial"), t("admin.field.model"), t("pole.installed_on"), t("pole.warranty_until")],
          rows.slice(0, shown).map((d) => [
            h("a", { href: `#/archive/devices/${encodeURIComponent(d.id)}` }, d.id),
            h("a", { href: `#/archive/poles/${encodeURIComponent(d.pole_id)}` }, d.pole_id),
            term("profile", d.profile), statusBadge(d.status), d.serial || "—", d.model || "—",
            d.installed_on ? fmtDate(d.installed_on) : "—", d.warranty_until ? fmtDate(d.warranty_until) : "—"]),
          { empty: t("admin.archive.none_devices") }));
        more.hidden = rows.length <= shown;
        return;
      }
      replace(box, table(t("admin.archive.title"),
        [t("alarms.pole"), t("pole.name"), t("map.road"), t("pole.status"), t("pole.serial"), t("pole.taken_over_on"), t("pole.warranty_until")],
        rows.slice(0, shown).map((p) => [
          h("a", { href: `#/archive/poles/${encodeURIComponent(p.id)}` }, p.id), p.name, p.road, statusBadge(p.status),
          p.serial || "—", p.taken_over_on ? fmtDate(p.taken_over_on) : t("admin.archive.not_taken"),
          p.warranty_until ? fmtDate(p.warranty_until) : "—"]),
        { empty: t("admin.archive.none") }));
      more.hidden = rows.length <= shown;
    }
    more.addEventListener("click", () => { shown += PAGE_ROWS; draw(); });

    (async () => {
      try {
        const status = q.get("status") || undefined;
        const poles = await api.all("poles", devices ? {} : { status });
        const items = devices ? await api.all("devices", { status }) : poles;
        if (stopped) return;
        roadOf = new Map(poles.map((p) => [p.id, p.road]));
        const roads = [...new Set(poles.map((p) => p.road).filter(Boolean))].sort();
        for (const r of roads) f.road.append(h("option", { value: r }, r));
        f.road.value = q.get("road") || "";
        const needle = (q.get("q") || "").toLowerCase();
        const road = q.get("road");
        const taken = q.get("taken");
        // Dates compare as text: both are YYYY-MM-DD.
        const from = q.get("taken_from");
        const to = q.get("taken_to");
        rows = items.filter((p) => (!road || (devices ? roadOf.get(p.pole_id) : p.road) === road)
          && (!taken || (taken === "yes") === Boolean(p.taken_over_on))
          && (!from || (p.taken_over_on && p.taken_over_on >= from))
          && (!to || (p.taken_over_on && p.taken_over_on <= to))
          && (!needle || [p.id, p.name, p.pole_id, p.serial, p.model, p.vendor].some((v) => v && v.toLowerCase().includes(needle))));
        count.textContent = t(devices ? "admin.archive.count_devices" : "map.count", { n: rows.length, total: items.length });
        draw();
      } catch (err) {
        replace(box, h("p", { class: "error" }, err.message));
      }
    })();
    return () => { stopped = true; };
  },
};

// ------------------------------------------------------------------ shared parts of a record

function recordList(r, extra = []) {
  const rows = [
    ...extra,
    ["pole.status", statusBadge(r.status)],
    ["admin.field.model", r.model], ["admin.field.vendor", r.vendor], ["pole.serial", r.serial],
    ["pole.installed_on", r.installed_on ? fmtDate(r.installed_on) : null],
    ["pole.owner", r.taken_over_from],
    ["pole.taken_over_on", r.taken_over_on ? fmtDate(r.taken_over_on) : null],
    ["pole.warranty_until", r.warranty_until ? fmtDate(r.warranty_until) : null],
    ["admin.field.mounting_position", r.mounting_position],
    ["pole.notes", r.notes],
  ];
  return h("dl", { class: "record", id: "archive-record" }, rows.map(([k, v]) => [h("dt", {}, t(k)), h("dd", { dataset: { key: k } }, v ?? "—")]));
}

// The edit form of a record: only the fields changed are sent (an emptied field
// is cleared); the API's refusals are shown at their fields.
function editForm(record, path, onSaved) {
  const fields = {};
  for (const name of ARCHIVE_FIELDS) {
    let el;
    if (name === "status") el = select(STATUSES.map((s) => [s, term("archive", s)]), record.status);
    else if (name === "notes") el = h("textarea", { rows: 3, maxlength: 4000 });
    else if (name.endsWith("_on") || name === "warranty_until") el = input({ type: "date" });
    else el = input({ maxlength: 200 });
    if (name !== "status") el.value = record[name] ?? "";
    fields[name] = field(name, fieldLabel(name), el);
  }
  const general = generalError();
  const form = h("form", { class: "record-form", id: "archive-edit", hidden: true, novalidate: true },
    h("fieldset", {}, h("legend", {}, t("admin.archive.edit")),
      h("div", { class: "form-grid" }, Object.values(fields).map((f) => f.row)),
      general,
      h("div", { class: "actions" },
        h("button", { type: "submit", class: "primary" }, t("admin.save")),
        h("button", { type: "button", onclick: () => { form.hidden = true; clearErrors(fields, general); } }, t("admin.cancel")))));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = {};
    for (const [name, f] of Object.entries(fields)) {
      const v = name === "status" ? f.input.value : value(f);
      if (v !== (record[name] ?? null)) body[name] = v;
    }
    if (Object.keys(body).length === 0) {
      replace(general, t("admin.archive.unchanged"));
      return;
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const saved = await patch(path, body);
      toast(t("admin.saved"));
      onSaved(saved);
    } catch (err) {
      showErrors(fields, general, err);
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

// Every change of the record, newest first, a page at a time.
function historyPanel(resource, id) {
  const box = h("div", { id: "archive-history", "aria-live": "polite" }, h("p", { class: "muted" }, t("app.loading")));
  const more = h("button", { type: "button", hidden: true }, t("app.more"));
  let next = null;
  const listEl = h("ol", { class: "history" });
  async function load(after) {
    try {
      const page = await api.get(`archive/${resource}/${encodeURIComponent(id)}/history`, { limit: 50, after });
      if (!after) replace(box, page.items.length ? listEl : h("p", { class: "empty" }, t("admin.history.none")));
      if (!after) replace(listEl);
      for (const e of page.items) {
        const changes = Object.entries(e.changes).map(([k, [a, b]]) => [k, a, b]);
        listEl.append(h("li", { class: "history-entry", dataset: { entry: e.id } },
          h("p", { class: "history-head" },
            h("time", { datetime: e.changed_at }, fmtDateTime(e.changed_at, { seconds: true })), " · ",
            h("strong", { class: "history-who" }, e.changed_by), " · ",
            term("admin.history.action", e.action)),
          changes.length ? diffTable(t("admin.history.changes"), changes) : null));
      }
      next = page.next;
      more.hidden = !next;
    } catch (err) {
      replace(box, h("p", { class: "error" }, err.message));
    }
  }
  more.addEventListener("click", () => load(next));
  load();
  return { panel: h("section", { class: "panel", "aria-labelledby": "history-h" }, h("h2", { id: "history-h" }, t("admin.history.title")), box, more), reload: () => load() };
}

function notFound(box, title, err) {
  replace(box, h("h1", {}, title), h("p", { class: "error" }, err.status === 404 ? t("notfound.text") : err.message));
}

// ------------------------------------------------------------------ a pole's record

function takeoverForm(ctx, pole, onDone) {
  const checks = CHECKS.map((c) => {
    const box = h("input", { type: "checkbox", id: `to-check-${c}`, required: true });
    return { key: c, box, row: h("li", {}, box, " ", h("label", { for: box.id }, t(`admin.takeover.check_${c}`))) };
  });
  const fields = {
    taken_over_from: field("taken_over_from", t("pole.owner"), input({ maxlength: 200, required: true, autocomplete: "organization" })),
    taken_over_on: field("taken_over_on", t("admin.takeover.date"), input({ type: "date", value: siteToday(ctx), required: true })),
    notes: field("notes", t("admin.takeover.remarks"), h("textarea", { rows: 2, maxlength: 3000 })),
  };
  const checksError = h("p", { class: "field-error", id: "to-checks-error", role: "alert" });
  const general = generalError();
  const form = h("form", { id: "takeover-form", novalidate: true },
    h("fieldset", {}, h("legend", {}, t("admin.takeover.checklist")),
      h("ul", { class: "checklist", "aria-describedby": checksError.id }, checks.map((c) => c.row)), checksError),
    h("div", { class: "form-grid" }, Object.values(fields).map((f) => f.row)),
    general,
    h("button", { type: "submit", class: "primary" }, t("admin.takeover.submit")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(fields, general);
    replace(checksError);
    const open = checks.filter((c) => !c.box.checked);
    if (open.length) {
      replace(checksError, t("admin.takeover.check_all"));
      open[0].box.focus();
      return;
    }
    if (!value(fields.taken_over_from)) {
      showErrors(fields, general, new api.ApiError(422, [{ loc: ["body", "taken_over_from"], msg: t("admin.required") }]));
      return;
    }
    // The checklist goes into the archive's notes, after the notes already there
    // (the API replaces the notes with what it is given).
    const done = checks.map((c) => `✓ ${t(`admin.takeover.check_${c.key}`)}`).join("\n");
    const notes = [pole.notes, `${t("admin.takeover.checked")}\n${done}`, value(fields.notes)].filter(Boolean).join("\n\n");
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const saved = await api.post(`poles/${encodeURIComponent(pole.id)}/takeover`, {
        taken_over_from: value(fields.taken_over_from),
        taken_over_on: value(fields.taken_over_on),
        notes: notes.slice(0, 4000),
      });
      toast(t("admin.takeover.done", { id: pole.id }));
      onDone(saved);
    } catch (err) {
      showErrors(fields, general, err);
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

export const pole = {
  render(main, ctx, poleId) {
    const title = `${t("admin.archive.title")} ${poleId}`;
    document.title = `${title} · polegw`;
    const box = h("section", { class: "page" }, h("p", { class: "muted" }, t("app.loading")));
    replace(main, box);
    let stopped = false;

    // After a change the page is drawn again; focus goes to what tells its result.
    async function draw(focus) {
      let p, devices;
      try {
        [p, devices] = await Promise.all([
          api.get(`poles/${encodeURIComponent(poleId)}`),
          api.all("devices", { pole: poleId }),
        ]);
      } catch (err) {
        notFound(box, title, err);
        return;
      }
      if (stopped) return;
      const history = historyPanel("poles", poleId);
      const edit = ctx.manager ? editForm(p, `poles/${encodeURIComponent(poleId)}`, () => draw("#record-h")) : null;
      const pending = !p.taken_over_on && p.status !== "retired";
      replace(box,
        h("nav", { class: "crumbs", "aria-label": t("app.breadcrumb") },
          h("a", { href: "#/archive" }, t("admin.archive.title")), " › ", poleId),
        h("h1", {}, `${title} · ${p.name}`),
        h("p", { class: "lead" }, h("a", { href: `#/poles/${encodeURIComponent(poleId)}` }, t("admin.archive.live_page"))),
        h("div", { class: "grid-2" },
          h("section", { class: "panel", "aria-labelledby": "record-h" },
            h("h2", { id: "record-h" }, t("pole.record")),
            recordList(p, [["pole.name", p.name], ["map.road", p.road]]),
            edit ? h("p", {}, h("button", { type: "button", "aria-controls": "archive-edit", onclick: () => { edit.hidden = false; edit.querySelector("select, input").focus(); } }, t("admin.archive.edit"))) : null,
            edit),
          h("section", { class: "panel", id: "takeover", "aria-labelledby": "takeover-h" },
            h("h2", { id: "takeover-h" }, t("admin.takeover.title")),
            !pending
              ? h("p", { id: "takeover-state" }, p.taken_over_on
                ? t("admin.takeover.taken", { date: fmtDate(p.taken_over_on), from: p.taken_over_from || "—" })
                : t("admin.takeover.retired"))
              : ctx.manager
                ? [h("p", { id: "takeover-state" }, t("admin.takeover.pending")), takeoverForm(ctx, p, () => draw("#takeover-state"))]
                : h("p", { id: "takeover-state" }, t("admin.takeover.pending_managers")))),
        h("section", { class: "panel", "aria-labelledby": "devices-h" },
          h("h2", { id: "devices-h" }, t("admin.archive.devices")),
          h("div", { id: "archive-devices" }, table(t("admin.archive.devices"),
            [t("event.device"), t("admin.archive.profile"), t("pole.status"), t("pole.serial"), t("admin.field.model"), t("pole.installed_on"), t("pole.warranty_until")],
            devices.map((d) => [h("a", { href: `#/archive/devices/${encodeURIComponent(d.id)}` }, d.id), term("profile", d.profile), statusBadge(d.status),
              d.serial || "—", d.model || "—", d.installed_on ? fmtDate(d.installed_on) : "—", d.warranty_until ? fmtDate(d.warranty_until) : "—"]),
            { empty: t("admin.archive.no_devices") }))),
        history.panel);
      if (focus) focusOn(box, focus);
    }
    draw();
    return () => { stopped = true; };
  },
};

function focusOn(box, selector) {
  const el = box.querySelector(selector);
  if (!el) return;
  if (!el.hasAttribute("tabindex")) el.setAttribute("tabindex", "-1");
  el.focus();
}

// ------------------------------------------------------------------ a device's record

// Retire: the device leaves service (status retired), with a reason in its notes.
function retireForm(d, onDone) {
  const fields = { notes: field("notes", t("admin.device.retire_reason"), h("textarea", { rows: 2, maxlength: 3000 })) };
  const general = generalError();
  const form = h("form", { id: "retire-form", novalidate: true },
    h("fieldset", {}, h("legend", {}, t("admin.device.retire")),
      h("p", { class: "muted" }, t("admin.device.retire_text")),
      fields.notes.row, general,
      h("button", { type: "submit", class: "danger" }, t("admin.device.retire_submit"))));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!window.confirm(t("admin.device.retire_confirm", { id: d.id }))) return;
    const reason = value(fields.notes);
    const notes = [d.notes, reason ? `${t("admin.device.retired_note")} ${reason}` : null].filter(Boolean).join("\n\n") || null;
    try {
      onDone(await patch(`devices/${encodeURIComponent(d.id)}/archive`, { status: "retired", notes: notes && notes.slice(0, 4000) }));
      toast(t("admin.device.retired", { id: d.id }));
    } catch (err) {
      showErrors(fields, general, err);
    }
  });
  return form;
}

// Replace: new hardware in the same place. The device keeps its id (its telemetry,
// alarms and configuration go on); its record gets the new unit's make, serial
// and dates, and the history keeps the old unit's.
function replaceForm(ctx, d, onDone) {
  const fields = {
    serial: field("serial", t("admin.device.new_serial"), input({ maxlength: 200, required: true })),
    model: field("model", fieldLabel("model"), input({ maxlength: 200, value: d.model || "" })),
    vendor: field("vendor", fieldLabel("vendor"), input({ maxlength: 200, value: d.vendor || "" })),
    installed_on: field("installed_on", t("pole.installed_on"), input({ type: "date", value: siteToday(ctx) })),
    warranty_until: field("warranty_until", t("pole.warranty_until"), input({ type: "date" })),
    notes: field("notes", t("admin.device.replace_reason"), h("textarea", { rows: 2, maxlength: 3000 })),
  };
  const general = generalError();
  const form = h("form", { id: "replace-form", novalidate: true },
    h("fieldset", {}, h("legend", {}, t("admin.device.replace")),
      h("p", { class: "muted" }, t("admin.device.replace_text")),
      h("div", { class: "form-grid" }, Object.values(fields).map((f) => f.row)), general,
      h("button", { type: "submit", class: "primary" }, t("admin.device.replace_submit"))));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(fields, general);
    if (!value(fields.serial)) {
      showErrors(fields, general, new api.ApiError(422, [{ loc: ["body", "serial"], msg: t("admin.required") }]));
      return;
    }
    const line = t("admin.device.replaced_note", { old: d.serial || "—", new: value(fields.serial) });
    const reason = value(fields.notes);
    const body = {
      serial: value(fields.serial), model: value(fields.model), vendor: value(fields.vendor),
      installed_on: value(fields.installed_on), warranty_until: value(fields.warranty_until),
      status: "in_service",
      notes: [d.notes, reason ? `${line} ${reason}` : line].filter(Boolean).join("\n\n").slice(0, 4000),
    };
    try {
      onDone(await patch(`devices/${encodeURIComponent(d.id)}/archive`, body));
      toast(t("admin.device.replaced", { id: d.id }));
    } catch (err) {
      showErrors(fields, general, err);
    }
  });
  return form;
}

export const device = {
  render(main, ctx, deviceId) {
    const title = `${t("admin.device.title")} ${deviceId}`;
    document.title = `${title} · polegw`;
    const box = h("section", { class: "page" }, h("p", { class: "muted" }, t("app.loading")));
    replace(main, box);
    let stopped = false;

    async function draw(focus) {
      let d;
      try {
        d = await api.get(`devices/${encodeURIComponent(deviceId)}`);
      } catch (err) {
        notFound(box, title, err);
        return;
      }
      if (stopped) return;
      const path = `devices/${encodeURIComponent(deviceId)}/archive`;
      const history = historyPanel("devices", deviceId);
      const edit = ctx.manager ? editForm(d, path, () => draw("#record-h")) : null;
      replace(box,
        h("nav", { class: "crumbs", "aria-label": t("app.breadcrumb") },
          h("a", { href: "#/archive" }, t("admin.archive.title")), " › ",
          h("a", { href: `#/archive/poles/${encodeURIComponent(d.pole_id)}` }, d.pole_id), " › ", deviceId),
        h("h1", {}, title),
        h("p", { class: "lead" }, h("a", { href: `#/devices/${encodeURIComponent(deviceId)}` }, t("admin.device.live_page"))),
        h("div", { class: "grid-2" },
          h("section", { class: "panel", "aria-labelledby": "record-h" },
            h("h2", { id: "record-h" }, t("pole.record")),
            recordList(d, [["alarms.pole", d.pole_id], ["admin.archive.profile", term("profile", d.profile)]]),
            edit ? h("p", {}, h("button", { type: "button", "aria-controls": "archive-edit", onclick: () => { edit.hidden = false; edit.querySelector("select, input").focus(); } }, t("admin.archive.edit"))) : null,
            edit),
          ctx.manager
            ? h("section", { class: "panel", "aria-labelledby": "lifecycle-h" },
              h("h2", { id: "lifecycle-h" }, t("admin.device.lifecycle")),
              replaceForm(ctx, d, () => draw("#record-h")),
              d.status === "retired" ? h("p", { id: "retired-state" }, statusBadge("retired")) : retireForm(d, () => draw("#lifecycle-h")))
            : null),
        history.panel);
      if (focus) focusOn(box, focus);
    }
    draw();
    return () => { stopped = true; };
  },
};
