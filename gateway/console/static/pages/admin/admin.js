// 系统管理 (administrators): users and roles, API keys, the audit log with each
// change's before and after, and the CSV exports.

import * as api from "../../api.js";
import { h, replace, table, toast } from "../../dom.js";
import { fmtDateTime, t, term } from "../../i18n.js";
import { diffTable, filterItem } from "./archive.js";
import { clearErrors, field, generalError, input, patch, select, showErrors, value } from "./form.js";

const ROLES = ["admin", "operator", "maintainer", "tenant"];
const TABS = [
  ["#/admin/users", "admin.users.title"],
  ["#/admin/keys", "admin.keys.title"],
  ["#/admin/audit", "admin.audit.title"],
  ["#/admin/exports", "admin.exports.title"],
];

// The administration pages share a heading and a row of tabs (links: each tab is
// its own address, so it can be bookmarked and the back button works).
function page(main, current, ...body) {
  document.title = `${t(current)} · polegw`;
  replace(main, h("section", { class: "page" },
    h("h1", {}, t("admin.title")),
    h("nav", { class: "tabs", "aria-label": t("admin.title") },
      TABS.map(([href, key]) => h("a", { href, "aria-current": key === current ? "page" : null }, t(key)))),
    h("h2", {}, t(current)),
    ...body));
}

function stateBadge(disabled) {
  return disabled
    ? h("span", { class: "badge acct-off" }, h("span", { class: "glyph", "aria-hidden": "true" }, "⊘"), " ", t("admin.users.disabled"))
    : h("span", { class: "badge acct-on" }, h("span", { class: "glyph", "aria-hidden": "true" }, "●"), " ", t("admin.users.enabled"));
}

// ------------------------------------------------------------------ users

export const users = {
  render(main, ctx) {
    const fields = {
      name: field("name", t("login.username"), input({ maxlength: 64, autocomplete: "off", required: true }), { hint: t("admin.users.name_hint") }),
      role: field("role", t("admin.users.role"), select(ROLES.map((r) => [r, term("role", r)]), "operator")),
      tenant_id: field("tenant_id", t("lease.tenant"), select([["", t("admin.users.no_tenant")]])),
      password: field("password", t("login.password"), input({ type: "password", minlength: 10, maxlength: 200, autocomplete: "new-password", required: true }), { hint: t("admin.users.password_hint") }),
    };
    const syncTenant = () => {
      const tenant = fields.role.input.value === "tenant";
      fields.tenant_id.row.hidden = !tenant;
      if (!tenant) fields.tenant_id.input.value = "";
    };
    fields.role.input.addEventListener("change", syncTenant);
    syncTenant();
    const general = generalError();
    const form = h("form", { id: "user-create", novalidate: true },
      h("fieldset", {}, h("legend", {}, t("admin.users.create")),
        h("div", { class: "form-grid" }, Object.values(fields).map((f) => f.row)),
        general,
        h("button", { type: "submit", class: "primary" }, t("admin.users.create_submit"))));
    const box = h("div", { id: "user-list" }, h("p", { class: "muted" }, t("app.loading")));
    page(main, "admin.users.title", h("section", { class: "panel" }, form), h("section", { class: "panel" }, box));

    let stopped = false;
    async function load() {
      try {
        const items = await api.all("users");
        if (stopped) return;
        replace(box, table(t("admin.users.title"),
          [t("admin.users.id"), t("login.username"), t("admin.users.role"), t("lease.tenant"), t("admin.users.state"), t("admin.users.created"), t("admin.actions")],
          items.map((u) => [String(u.id), u.name, term("role", u.role), u.tenant_id || "—", stateBadge(u.disabled), fmtDateTime(u.created_at),
            u.name === ctx.me.name ? h("span", { class: "muted" }, t("admin.users.you")) : h("button", {
              type: "button",
              "aria-label": t(u.disabled ? "admin.users.enable_user" : "admin.users.disable_user", { name: u.name }),
              onclick: async (ev) => {
                ev.currentTarget.disabled = true;
                try {
                  await patch(`users/${u.id}`, { disabled: !u.disabled });
                  toast(t(u.disabled ? "admin.users.enabled_toast" : "admin.users.disabled_toast", { name: u.name }));
                } catch (err) {
                  toast(`${t("error.generic")} ${err.message}`, "error");
                }
                load();
              },
            }, t(u.disabled ? "admin.users.enable" : "admin.users.disable"))]),
          { empty: t("admin.users.none") }));
      } catch (err) {
        replace(box, h("p", { class: "error" }, err.message));
      }
    }
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clearErrors(fields, general);
      const body = {
        name: value(fields.name) || "",
        role: fields.role.input.value,
        password: fields.password.input.value,
      };
      if (body.role === "tenant") {
        body.tenant_id = fields.tenant_id.input.value || null;
        // The API refuses it for the whole body; the page says it at the field.
        if (!body.tenant_id) {
          showErrors(fields, general, new api.ApiError(422, [{ loc: ["body", "tenant_id"], msg: t("admin.users.tenant_required") }]));
          return;
        }
      }
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      try {
        const u = await api.post("users", body);
        toast(t("admin.users.created_toast", { name: u.name }));
        form.reset();
        syncTenant();
        load();
      } catch (err) {
        showErrors(fields, general, err);
      } finally {
        button.disabled = false;
      }
    });
    (async () => {
      try {
        for (const tn of await api.all("tenants")) fields.tenant_id.input.append(h("option", { value: tn.id }, `${tn.name} (${tn.id})`));
      } catch {
        /* no tenants: a tenant user cannot be created, the API says so */
      }
    })();
    load();
    return () => { stopped = true; };
  },
};

// ------------------------------------------------------------------ API keys

async function copyText(text, fallbackInput) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Not a secure context (plain http on another host): select it and copy.
    fallbackInput.select();
    return document.execCommand("copy");
  }
}

export const keys = {
  render(main, ctx) {
    const fields = {
      name: field("name", t("admin.keys.name"), input({ maxlength: 100, autocomplete: "off", required: true }), { hint: t("admin.keys.name_hint") }),
      user_id: field("user_id", t("admin.keys.owner"), select([["", ctx.me.name]], "")),
    };
    const general = generalError();
    const shown = h("div", { id: "new-key", "aria-live": "polite" });
    const form = h("form", { id: "key-create", novalidate: true },
      h("fieldset", {}, h("legend", {}, t("admin.keys.create")),
        h("div", { class: "form-grid" }, Object.values(fields).map((f) => f.row)),
        general,
        h("button", { type: "submit", class: "primary" }, t("admin.keys.create_submit"))));
    const box = h("div", { id: "key-list" }, h("p", { class: "muted" }, t("app.loading")));
    page(main, "admin.keys.title", h("section", { class: "panel" }, form, shown), h("section", { class: "panel" }, box));

    let stopped = false;
    let names = new Map();
    let mine = ""; // the select's value for "me": "" until the users are known
    async function load() {
      try {
        const items = await api.get("api-keys");
        if (stopped) return;
        items.sort((a, b) => Date.parse(b.created_at) - Date.parse(a.created_at));
        replace(box, table(t("admin.keys.title"),
          [t("admin.keys.id"), t("admin.keys.name"), t("admin.keys.owner"), t("admin.users.created"), t("admin.users.state"), t("admin.actions")],
          items.map((k) => [h("code", {}, k.id), k.name, names.get(k.user_id) || String(k.user_id), fmtDateTime(k.created_at),
            k.revoked_at
              ? h("span", { class: "badge acct-off" }, h("span", { class: "glyph", "aria-hidden": "true" }, "⊘"), " ", t("admin.keys.revoked_at", { at: fmtDateTime(k.revoked_at) }))
              : h("span", { class: "badge acct-on" }, h("span", { class: "glyph", "aria-hidden": "true" }, "●"), " ", t("admin.keys.active")),
            k.revoked_at ? "—" : h("button", {
              type: "button", class: "danger",
              "aria-label": t("admin.keys.revoke_key", { name: k.name }),
              onclick: async () => {
                if (!window.confirm(t("admin.keys.revoke_confirm", { name: k.name }))) return;
                try {
                  await api.del(`api-keys/${encodeURIComponent(k.id)}`);
                  toast(t("admin.keys.revoked", { name: k.name }));
                } catch (err) {
                  toast(`${t("error.generic")} ${err.message}`, "error");
                }
                load();
              },
            }, t("admin.keys.revoke"))]),
          { empty: t("admin.keys.none") }));
      } catch (err) {
        replace(box, h("p", { class: "error" }, err.message));
      }
    }
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clearErrors(fields, general);
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      try {
        const owner = fields.user_id.input.value;
        const k = await api.post("api-keys", { name: value(fields.name) || "", ...(owner ? { user_id: Number(owner) } : {}) });
        const out = h("input", { type: "text", readonly: true, value: k.key, id: "new-key-value", class: "key-value", "aria-describedby": "new-key-warning" });
        const status = h("span", { role: "status", class: "muted" });
        replace(shown, h("div", { class: "once" },
          h("p", { id: "new-key-warning", class: "warn" }, h("span", { class: "glyph", "aria-hidden": "true" }, "⚠"), " ", t("admin.keys.once", { name: k.name })),
          h("label", { for: out.id }, t("admin.keys.the_key")), out,
          h("div", { class: "actions" },
            h("button", { type: "button", class: "primary", onclick: async () => {
              status.textContent = (await copyText(k.key, out)) ? t("admin.keys.copied") : t("admin.keys.copy_failed");
            } }, t("admin.keys.copy")),
            h("button", { type: "button", onclick: () => replace(shown) }, t("admin.keys.stored")),
            status)));
        out.focus();
        out.select();
        form.reset();
        fields.user_id.input.value = mine;
        load();
      } catch (err) {
        showErrors(fields, general, err);
      } finally {
        button.disabled = false;
      }
    });
    (async () => {
      try {
        const us = await api.all("users");
        names = new Map(us.map((u) => [u.id, u.name]));
        replace(fields.user_id.input, us.filter((u) => !u.disabled).map((u) => h("option", { value: String(u.id) }, `${u.name} · ${term("role", u.role)}`)));
        const me = us.find((u) => u.name === ctx.me.name);
        mine = me ? String(me.id) : "";
        fields.user_id.input.value = mine;
      } catch {
        /* keys for yourself only */
      }
      load();
    })();
    return () => { stopped = true; };
  },
};

// ------------------------------------------------------------------ audit log

// The fields an entry changed: every field of `after` and `before`, changed ones
// only when both sides exist (a creation shows its whole after-state).
export function changedFields(before, after) {
  const b = before && typeof before === "object" ? before : {};
  const a = after && typeof after === "object" ? after : {};
  const both = before && after && typeof before === "object" && typeof after === "object";
  const names = [...new Set([...Object.keys(b), ...Object.keys(a)])];
  return names
    .filter((k) => !both || JSON.stringify(b[k]) !== JSON.stringify(a[k]))
    .map((k) => [k, before ? b[k] : null, after ? a[k] : null]);
}

export const audit = {
  render(main, ctx) {
    const q = ctx.query;
    const f = {
      actor: input({ id: "au-actor", value: q.get("actor") || "", autocomplete: "off", size: 12 }),
      resource: input({ id: "au-resource", value: q.get("resource") || "", list: "au-resources", autocomplete: "off", size: 12 }),
      resource_id: input({ id: "au-rid", value: q.get("resource_id") || "", autocomplete: "off", size: 10 }),
      action: input({ id: "au-action", value: q.get("action") || "", list: "au-actions", autocomplete: "off", size: 10 }),
      since: input({ id: "au-since", type: "datetime-local", value: q.get("since") || "" }),
      until: input({ id: "au-until", type: "datetime-local", value: q.get("until") || "" }),
    };
    const known = (id, codes) => h("datalist", { id }, codes.map((c) => h("option", { value: c })));
    const listEl = h("div", { id: "audit-list", "aria-live": "polite" }, h("p", { class: "muted" }, t("app.loading")));
    const more = h("button", { type: "button", hidden: true }, t("app.more"));
    page(main, "admin.audit.title",
      h("form", { class: "filters", role: "search", onsubmit: (ev) => { ev.preventDefault(); apply(); } },
        filterItem("au-actor", t("admin.audit.actor"), f.actor),
        filterItem("au-resource", t("admin.audit.resource"), f.resource,
          known("au-resources", ["user", "api_key", "pole", "device", "alarm", "alarm_rule", "work_order", "lease", "tenant", "bill", "application", "emergency", "tariff"])),
        filterItem("au-rid", t("admin.audit.resource_id"), f.resource_id),
        filterItem("au-action", t("admin.audit.action"), f.action,
          known("au-actions", ["create", "update", "delete", "revoke", "takeover", "acknowledge", "transition"])),
        filterItem("au-since", t("range.from"), f.since),
        filterItem("au-until", t("range.to"), f.until),
        h("button", { type: "submit" }, t("app.filter"))),
      listEl, more);

    function apply() {
      const p = new URLSearchParams();
      for (const k of Object.keys(f)) if (f[k].value.trim()) p.set(k, f[k].value.trim());
      ctx.navigate(`#/admin/audit?${p}`);
    }
    const iso = (v) => (v ? new Date(v).toISOString() : undefined);
    const query = (after) => ({
      actor: q.get("actor") || undefined, resource: q.get("resource") || undefined,
      resource_id: q.get("resource_id") || undefined, action: q.get("action") || undefined,
      start: iso(q.get("since")), end: iso(q.get("until")), limit: 50, after,
    });
    const ol = h("ol", { class: "audit" });
    function entry(e) {
      const rows = changedFields(e.before, e.after);
      return h("li", { class: "audit-entry", dataset: { entry: e.id } },
        h("details", {},
          h("summary", {},
            h("time", { datetime: e.at }, fmtDateTime(e.at, { seconds: true })), " · ",
            // The gateway itself writes as "system (…)": named by its role, in words.
            e.actor_role === "system"
              ? [h("strong", { title: e.actor }, term("role", "system")), " · "]
              : [h("strong", {}, e.actor), ` (${term("role", e.actor_role)}) · `],
            h("span", { class: "audit-action" }, term("admin.audit.act", e.action)), " · ",
            `${term("admin.audit.res", e.resource)} ${e.resource_id}`),
          rows.length ? diffTable(t("admin.audit.changes"), rows) : h("p", { class: "empty" }, t("admin.audit.no_change"))));
    }
    let stopped = false;
    let next = null;
    async function load(after) {
      try {
        const p = await api.get("audit", query(after));
        if (stopped) return;
        if (!after) {
          replace(ol);
          replace(listEl, p.items.length ? ol : h("p", { class: "empty" }, t("admin.audit.none")));
        }
        ol.append(...p.items.map(entry));
        next = p.next;
        more.hidden = !next;
      } catch (err) {
        replace(listEl, h("p", { class: "error", role: "alert" }, err.message));
      }
    }
    more.addEventListener("click", () => load(next));
    load();
    return () => { stopped = true; };
  },
};

// ------------------------------------------------------------------ exports

const KINDS = [
  ["telemetry", "export/telemetry.csv"],
  ["alarms", "export/alarms.csv"],
  ["work_orders", "export/work-orders.csv"],
];
const RECORDS_MAX_DAYS = 366; // gateway.api.routes.export.RECORDS_MAX_RANGE

function localInput(d) {
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}

export const exports = {
  render(main, ctx) {
    const now = new Date();
    now.setSeconds(0, 0);
    const fields = {
      kind: field("kind", t("admin.exports.kind"), select(KINDS.map(([k]) => [k, t(`admin.exports.kind_${k}`)]), "telemetry")),
      start: field("start", t("range.from"), input({ type: "datetime-local", value: localInput(new Date(now.getTime() - 86400e3)) })),
      end: field("end", t("range.to"), input({ type: "datetime-local", value: localInput(now) })),
      device: field("device", t("event.device"), input({ maxlength: 64, autocomplete: "off" }), { hint: t("admin.exports.optional") }),
      metric: field("metric", t("device.metric"), input({ maxlength: 64, autocomplete: "off" }), { hint: t("admin.exports.optional") }),
    };
    const presets = h("div", { class: "range-picker", role: "group", "aria-label": t("range.label") },
      [["24h", 1], ["7d", 7], ["30d", 30]].map(([k, days]) => h("button", { type: "button", onclick: () => {
        const end = new Date();
        end.setSeconds(0, 0);
        fields.end.input.value = localInput(end);
        fields.start.input.value = localInput(new Date(end.getTime() - days * 86400e3));
        update();
      } }, t(`range.${k}`))));
    const general = generalError();
    const link = h("a", { class: "button primary", id: "export-link", download: "" }, t("admin.exports.download"));
    const form = h("form", { id: "export-form", novalidate: true, onsubmit: (ev) => ev.preventDefault() },
      h("p", { class: "muted" }, t("admin.exports.text")),
      h("div", { class: "form-grid" }, fields.kind.row, fields.start.row, fields.end.row, fields.device.row, fields.metric.row),
      presets, general, h("p", {}, link));
    page(main, "admin.exports.title", h("section", { class: "panel" }, form));

    const telemetryMax = Number(ctx.config.export_max_range_d) || 31;
    // The link is the export itself: the browser downloads it with the session
    // cookie. It is only offered for a range the API accepts.
    function update() {
      clearErrors(fields, general);
      const kind = fields.kind.input.value;
      const telemetry = kind === "telemetry";
      fields.device.row.hidden = !telemetry;
      fields.metric.row.hidden = !telemetry;
      const start = fields.start.input.value ? new Date(fields.start.input.value) : null;
      const end = fields.end.input.value ? new Date(fields.end.input.value) : null;
      const max = telemetry ? telemetryMax : RECORDS_MAX_DAYS;
      let problem = null;
      if (!start || Number.isNaN(start.getTime())) problem = ["start", t("admin.required")];
      else if (!end || Number.isNaN(end.getTime())) problem = ["end", t("admin.required")];
      else if (start >= end) problem = ["end", t("range.invalid")];
      else if (end - start > max * 86400e3) problem = ["start", t("admin.exports.too_long", { days: max })];
      if (problem) {
        fields[problem[0]].input.setAttribute("aria-invalid", "true");
        fields[problem[0]].error.textContent = problem[1];
        link.removeAttribute("href");
        link.setAttribute("aria-disabled", "true");
        return;
      }
      const qs = new URLSearchParams({ start: start.toISOString(), end: end.toISOString() });
      if (telemetry && value(fields.device)) qs.set("device", value(fields.device));
      if (telemetry && value(fields.metric)) qs.set("metric", value(fields.metric));
      link.href = `/api/v1/${KINDS.find(([k]) => k === kind)[1]}?${qs}`;
      link.removeAttribute("aria-disabled");
    }
    for (const f of Object.values(fields)) f.input.addEventListener("change", update);
    for (const f of [fields.device, fields.metric]) f.input.addEventListener("input", update);
    update();
    return null;
  },
};
