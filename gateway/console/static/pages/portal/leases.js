// 挂载服务, the tenant's leases: each with its state history, its power port's
// state (on/off and since when, and whether the switch command went through),
// and a change application for a lease in service.

import * as api from "../../api.js";
import { h, replace, table, toast } from "../../dom.js";
import { fmtDate, fmtDateTime, fmtNumber, t, term } from "../../i18n.js";
import { equipmentForm, frame, leaseBadge, load, portBadge, refusal } from "./common.js";

// The port is energised exactly while the lease is in service; with no switch
// command recorded (a lease entered before the meter could switch, or dated back)
// the lease's state says it, since the state's own start when the history is known.
export function portState(l, history = null) {
  if (!l.port_id) return h("span", { class: "muted" }, t("portal.lease.no_port"));
  const s = l.port_switch;
  if (!s) {
    const on = l.state === "in_service";
    const current = history && history.length ? history[history.length - 1] : null;
    return h("span", {}, portBadge(on),
      current && current.state === l.state ? [" ", t("portal.lease.since", { at: fmtDateTime(current.since) })] : null,
      h("span", { class: "muted" }, ` · ${t("portal.lease.by_state")}`));
  }
  return h("span", {}, portBadge(s.on), " ", t("portal.lease.since", { at: fmtDateTime(s.at) }),
    !s.sent ? h("span", { class: "warn" }, ` · ${t("portal.lease.not_sent")}`)
      : s.state && s.state !== "succeeded" ? h("span", { class: "muted" }, ` · ${term("portal.cmdstate", s.state)}`) : null);
}

export function tenantLeases(main, box) {
  load(main, box, async () => {
    const items = await api.all("leases");
    replace(box, table(t("nav.leases"),
      [t("lease.id"), t("lease.pole"), t("lease.state"), t("lease.slot"), t("lease.port"), t("lease.power"), t("lease.starts_on"), t("lease.ends_on"), t("lease.port_state")],
      items.map((l) => [h("a", { href: `#/portal/leases/${l.id}` }, t("portal.lease.link", { id: l.id })), l.pole_id, leaseBadge(l.state),
        l.slot_id || "—", l.port_id || "—", `${fmtNumber(l.power_w)} W`, fmtDate(l.starts_on), fmtDate(l.ends_on), portState(l)]),
      { empty: t("lease.none") }));
  });
}

export const detail = {
  render(main, ctx, id) {
    const box = h("div", { id: "lease-detail" }, h("p", { class: "muted" }, t("app.loading")));
    frame(main, t("portal.lease.title", { id }), box);
    load(main, box, async () => {
      const [l, history, apps] = await Promise.all([
        api.get(`leases/${encodeURIComponent(id)}`),
        api.get(`leases/${encodeURIComponent(id)}/history`),
        api.all("applications"),
      ]);
      const changes = apps.filter((a) => a.lease_id === l.id).sort((a, b) => b.id - a.id);
      const changeBox = h("div", { id: "lease-change" });
      if (l.state === "in_service") {
        const eq = equipmentForm({}, { change: true });
        const send = h("button", { type: "button", class: "primary", id: "change-submit" }, t("portal.lease.change_send"));
        const out = h("div", { "aria-live": "polite" });
        send.addEventListener("click", async () => {
          send.disabled = true;
          try {
            const app = await api.post(`leases/${l.id}/changes`, eq.read());
            toast(t("portal.apply.submitted", { id: app.id }));
            ctx.navigate(`#/portal/applications/${app.id}`);
          } catch (err) {
            send.disabled = false;
            replace(out, h("p", { class: "error", role: "alert" }, refusal(err)));
          }
        });
        replace(changeBox, h("details", {},
          h("summary", {}, t("portal.lease.change")),
          h("p", { class: "muted" }, t("portal.lease.change_help")),
          eq.el, out, h("p", {}, send)));
      } else {
        replace(changeBox, h("p", { class: "muted" }, t("portal.lease.change_only_in_service")));
      }
      replace(box,
        h("dl", { class: "record" },
          h("dt", {}, t("lease.state")), h("dd", { id: "lease-state" }, leaseBadge(l.state)),
          h("dt", {}, t("lease.pole")), h("dd", {}, l.pole_id),
          h("dt", {}, t("lease.slot")), h("dd", {}, l.slot_id || "—"),
          h("dt", {}, t("portal.lease.compartment")), h("dd", {}, l.compartment_id || "—"),
          h("dt", {}, t("lease.port")), h("dd", {}, l.port_id || "—"),
          h("dt", {}, t("lease.port_state")), h("dd", { id: "lease-port-state" }, portState(l, history)),
          h("dt", {}, t("portal.lease.reserved")), h("dd", {}, t("portal.lease.reserved_figures", {
            load: fmtNumber(l.load_kg), wind: fmtNumber(l.wind_area_m2), power: fmtNumber(l.power_w), units: l.cabinet_units })),
          h("dt", {}, t("portal.form.term")), h("dd", {}, `${fmtDate(l.starts_on)} – ${fmtDate(l.ends_on)}`),
          l.application_id ? [h("dt", {}, t("portal.lease.from_application")), h("dd", {}, h("a", { href: `#/portal/applications/${l.application_id}` }, t("portal.app.link", { id: l.application_id })))] : null),
        h("h2", {}, t("portal.lease.history")),
        table(t("portal.lease.history"), [t("lease.state"), t("portal.lease.since_col"), t("portal.lease.entered"), t("portal.lease.note")],
          history.map((e) => [leaseBadge(e.state), fmtDateTime(e.since), fmtDateTime(e.entered_at), e.note || ""]),
          { empty: t("portal.lease.no_history") }),
        h("h2", {}, t("portal.lease.changes")),
        changes.length ? h("ul", { class: "list" }, changes.map((a) => h("li", {},
          h("a", { href: `#/portal/applications/${a.id}` }, t("portal.app.link", { id: a.id })), " ", term("portal.appstate", a.state)))) : null,
        changeBox);
    });
    return null;
  },
};
