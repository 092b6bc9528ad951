// 挂载服务: the lease board (a column per state, in the order a lease lives) and one
// lease with its history and port state; staff move it along with a note and the
// time the move took effect, and see what the port switch command did.

import * as api from "../../api.js";
import { h, replace, table, throttle, toast } from "../../dom.js";
import { fmtDate, fmtDateTime, fmtNumber, t, term } from "../../i18n.js";
import * as live from "../../live.js";
import { crumbs, errorBox, field, page, showFieldErrors, siteZone, stacked, stateBadge, zonedIso } from "./common.js";

export const STATES = ["contracted", "installing", "acceptance_test", "in_service", "suspended", "terminated", "removed"];
// The moves the API allows (gateway.core.mounting.LEASE_MOVES) and who may make them.
const MOVES = {
  contracted: [["installing", "staff"], ["terminated", "managers"]],
  installing: [["acceptance_test", "staff"], ["terminated", "managers"]],
  acceptance_test: [["in_service", "staff"], ["installing", "staff"], ["terminated", "managers"]],
  in_service: [["suspended", "staff"], ["terminated", "managers"]],
  suspended: [["in_service", "staff"], ["terminated", "managers"]],
  terminated: [["removed", "staff"]],
  removed: [],
};

export function movesFor(state, ctx) {
  return (MOVES[state] || []).filter(([, who]) => (who === "managers" ? ctx.manager : ctx.staff)).map(([to]) => to);
}

export const board = {
  render(main, ctx) {
    const box = h("div", { id: "mount-board", class: "mount-board", "aria-live": "polite" }, h("p", { class: "muted" }, t("app.loading")));
    page(main, t("mount.nav.leases"), h("h1", {}, t("mount.nav.leases")), box);
    let stopped = false;
    async function load() {
      try {
        const items = await api.all("leases");
        if (stopped) return;
        replace(box, STATES.map((s) => {
          const rows = items.filter((l) => l.state === s);
          return h("section", { class: "mount-column", dataset: { state: s }, "aria-label": term("leasestate", s) },
            h("h2", {}, stateBadge("leasestate", s), " ", h("span", { class: "count" }, `(${rows.length})`)),
            rows.length
              ? h("ul", { class: "mount-cards" }, rows.map((l) => h("li", { class: "mount-card", dataset: { lease: l.id } },
                h("a", { href: `#/mount/leases/${l.id}` }, t("mount.lease.title", { id: l.id })),
                h("div", {}, `${l.tenant_id} · ${l.pole_id}`),
                h("div", { class: "muted" }, [l.slot_id, l.port_id].filter(Boolean).join(" · ") || "—"))))
              : h("p", { class: "empty" }, t("mount.lease.none_here")));
        }));
      } catch (err) {
        errorBox(box, err);
      }
    }
    load();
    const soon = throttle(load, 3000);
    const unsub = live.subscribe("command", soon);
    return () => { stopped = true; clearTimeout(retry); unsub(); };
  },
};

function portState(l) {
  const s = l.port_switch;
  if (!l.port_id) return h("p", { id: "mount-port-state" }, t("mount.lease.no_port"));
  if (!s) return h("p", { id: "mount-port-state" }, t("mount.lease.port_untouched", { port: l.port_id }));
  const outcome = !s.sent
    ? h("span", { class: "badge mount-nofit" }, h("span", { class: "glyph", "aria-hidden": "true" }, "✗"), " ", t("mount.lease.not_sent"), s.error ? ` — ${s.error}` : "")
    : h("span", { class: `badge cmd-${s.state || "pending"}` }, term("cmdstate", s.state || "pending"),
      s.command_error ? ` — ${s.command_error}` : "", s.finished_at ? ` · ${fmtDateTime(s.finished_at, { seconds: true })}` : "");
  return h("dl", { class: "record", id: "mount-port-state" },
    h("dt", {}, t("lease.port")), h("dd", {}, l.port_id, s.meter_device_id ? [" · ", h("a", { href: `#/devices/${encodeURIComponent(s.meter_device_id)}` }, s.meter_device_id), ` #${s.port_no}`] : null),
    h("dt", {}, t("mount.lease.switch_asked")), h("dd", {}, `${s.on ? t("command.switch_on") : t("command.switch_off")} · ${fmtDateTime(s.at, { seconds: true })}`),
    h("dt", {}, t("mount.lease.switch_outcome")), h("dd", { id: "mount-port-outcome" }, outcome));
}

function moveForm(l, ctx, reload) {
  const moves = movesFor(l.state, ctx);
  if (!moves.length) return null;
  const to = h("select", { id: "mount-move-to" }, moves.map((s) => h("option", { value: s }, term("leasestate", s))));
  const note = h("textarea", { id: "mount-move-note", rows: 2, maxlength: 10000 });
  const at = h("input", { id: "mount-move-at", type: "datetime-local", step: 1 });
  const general = h("div");
  const form = h("form", { class: "panel mount-action", "aria-labelledby": "mount-move-h", onsubmit: async (ev) => {
    ev.preventDefault();
    const body = { to: to.value, note: note.value.trim() };
    if (at.value) body.effective_at = zonedIso(at.value, siteZone(ctx));
    try {
      await api.post(`leases/${l.id}/transitions`, body);
      toast(t("mount.lease.moved", { state: term("leasestate", to.value) }));
      reload();
    } catch (err) {
      showFieldErrors(form, err, general);
    }
  } },
  h("h2", { id: "mount-move-h" }, t("mount.lease.move")),
  field(t("mount.lease.next_state"), to, { loc: "to" }),
  field(t("mount.lease.note"), note, { loc: "note" }),
  field(t("mount.lease.effective_at", { tz: siteZone(ctx) }), at, { loc: "effective_at", hint: t("mount.lease.effective_hint") }),
  general,
  h("button", { type: "submit", class: "primary" }, t("mount.lease.do_move")));
  return form;
}

export const one = {
  render(main, ctx, id) {
    const box = h("div", { id: "mount-lease" }, h("p", { class: "muted" }, t("app.loading")));
    page(main, t("mount.lease.title", { id }),
      crumbs([t("mount.nav.leases"), "#/mount/leases"], t("mount.lease.title", { id })), box);
    let stopped = false;
    let meter = null;
    let retry = null;
    async function load() {
      clearTimeout(retry);
      try {
        const [l, history] = await Promise.all([api.get(`leases/${id}`), api.get(`leases/${id}/history`)]);
        if (stopped) return;
        meter = l.port_switch ? l.port_switch.meter_device_id : null;
        // The command's event can come before its outcome is copied onto the lease:
        // while the switch has no final state, look again shortly.
        const s = l.port_switch;
        if (s && s.sent && !["succeeded", "failed", "timed_out"].includes(s.state)) {
          retry = setTimeout(load, 2000);
        }
        replace(box,
          h("h1", {}, t("mount.lease.title", { id: l.id }), " ", h("span", { id: "mount-lease-state" }, stateBadge("leasestate", l.state))),
          h("dl", { class: "record" },
            h("dt", {}, t("lease.tenant")), h("dd", {}, l.tenant_id),
            h("dt", {}, t("lease.pole")), h("dd", {}, h("a", { href: `#/poles/${encodeURIComponent(l.pole_id)}` }, l.pole_id)),
            h("dt", {}, t("lease.slot")), h("dd", {}, l.slot_id || "—"),
            h("dt", {}, t("mount.lease.compartment")), h("dd", {}, l.compartment_id || "—"),
            h("dt", {}, t("mount.lease.quantities")), h("dd", {}, `${fmtNumber(l.load_kg)} kg · ${fmtNumber(l.wind_area_m2)} m² · ${fmtNumber(l.power_w)} W · ${l.cabinet_units} U`),
            h("dt", {}, t("mount.lease.term")), h("dd", {}, `${fmtDate(l.starts_on)} – ${fmtDate(l.ends_on)}`),
            h("dt", {}, t("mount.act.tariff")), h("dd", {}, l.rates && l.rates.tariff ? l.rates.tariff : t("mount.act.tariff_default")),
            l.application_id ? [h("dt", {}, t("mount.lease.application")), h("dd", {}, h("a", { href: `#/mount/applications/${l.application_id}` }, t("mount.app.title", { id: l.application_id })))] : null),
          h("h2", {}, t("lease.port_state")), portState(l),
          moveForm(l, ctx, load),
          h("h2", {}, t("mount.lease.history")),
          stacked(table(t("mount.lease.history"), [t("mount.lease.state_col"), t("mount.lease.since"), t("mount.lease.entered"), t("mount.lease.by"), t("mount.lease.note")],
            history.map((e) => [stateBadge("leasestate", e.state),
              h("time", { datetime: e.since, class: "mount-since" }, fmtDateTime(e.since, { seconds: true })),
              fmtDateTime(e.entered_at, { seconds: true }), e.by === "system" ? term("role", "system") : e.by, e.note || "—"]))));
      } catch (err) {
        errorBox(box, err);
      }
    }
    load();
    const soon = throttle(load, 1000);
    const unsub = live.subscribe("command", (c) => { if (meter && (!c || !c.device_id || c.device_id === meter)) soon(); });
    return () => { stopped = true; clearTimeout(retry); unsub(); };
  },
};
