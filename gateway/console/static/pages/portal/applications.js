// 受理申请和审核, the tenant's side: its applications, each with its state, its
// timeline, the operator's questions (a returned application is answered), the
// capacity check as it stands now, and withdrawal while it is still open.

import * as api from "../../api.js";
import { h, replace, table, toast } from "../../dom.js";
import { fmtDate, fmtDateTime, t, term } from "../../i18n.js";
import { LIVE_STATES, appBadge, frame, load, verdict } from "./common.js";

function what(app) {
  return app.devices.map((d) => `${d.quantity} × ${d.type}${d.model ? ` ${d.model}` : ""}`).join(", ");
}

export const list = {
  render(main) {
    const box = h("div", { id: "application-list" }, h("p", { class: "muted" }, t("app.loading")));
    frame(main, t("portal.nav.applications"), h("p", {}, h("a", { href: "#/portal/apply", class: "button-link", id: "new-application" }, t("portal.apply.title"))), box);
    load(main, box, async () => {
      const items = await api.all("applications");
      items.sort((a, b) => b.id - a.id);
      replace(box, table(t("portal.nav.applications"),
        [t("portal.app.id"), t("portal.app.kind"), t("portal.app.state"), t("portal.app.poles"), t("portal.app.equipment"), t("portal.app.updated")],
        items.map((a) => [
          h("a", { href: `#/portal/applications/${a.id}` }, t("portal.app.link", { id: a.id })),
          term("portal.appkind", a.kind), appBadge(a.state),
          a.poles.map((p) => p.pole_id).join(", "), what(a), fmtDateTime(a.updated_at)]),
        { empty: t("portal.app.none") }));
    });
    return null;
  },
};

export const detail = {
  render(main, ctx, id) {
    const box = h("div", { id: "application-detail" }, h("p", { class: "muted" }, t("app.loading")));
    frame(main, t("portal.app.title", { id }), box);
    let seen = null;
    const draw = async () => {
      const [app, history] = await Promise.all([
        api.get(`applications/${encodeURIComponent(id)}`),
        api.get(`applications/${encodeURIComponent(id)}/history`),
      ]);
      seen = app.updated_at;
      const open = LIVE_STATES.includes(app.state);
      const reviewBox = h("div", { id: "application-review" });
      const withdrawReason = h("input", { type: "text", id: "withdraw-note", maxlength: "10000" });
      const withdrawBtn = h("button", { type: "button", id: "withdraw" }, t("portal.app.withdraw"));
      withdrawBtn.addEventListener("click", async () => {
        withdrawBtn.disabled = true;
        try {
          await api.post(`applications/${app.id}/transitions`, { to: "withdrawn", note: withdrawReason.value });
          toast(t("portal.app.withdrawn", { id: app.id }));
          await draw();
        } catch (err) {
          withdrawBtn.disabled = false;
          toast(err.message, "error");
        }
      });
      replace(box,
        h("dl", { class: "record" },
          h("dt", {}, t("portal.app.state")), h("dd", { id: "application-state" }, appBadge(app.state)),
          h("dt", {}, t("portal.app.kind")), h("dd", {}, term("portal.appkind", app.kind)),
          app.lease_id ? [h("dt", {}, t("portal.app.lease")), h("dd", {}, h("a", { href: `#/portal/leases/${app.lease_id}` }, t("portal.lease.link", { id: app.lease_id })))] : null,
          h("dt", {}, t("portal.app.poles")), h("dd", {}, app.poles.map((p) => `${p.pole_id}${p.slots && p.slots.length ? ` (${p.slots.join(", ")})` : ""}`).join(", ")),
          h("dt", {}, t("portal.app.equipment")), h("dd", {}, what(app)),
          h("dt", {}, t("portal.form.supply")), h("dd", {}, `${t(`portal.supply.${app.supply}`)}${app.voltage_v ? ` ${app.voltage_v} V` : ""}`),
          h("dt", {}, t("portal.form.cabinet_units")), h("dd", {}, String(app.cabinet_units)),
          h("dt", {}, t("portal.form.fibre_cores")), h("dd", {}, String(app.fibre_cores)),
          h("dt", {}, t("portal.form.term")), h("dd", {}, `${fmtDate(app.term_start)} – ${fmtDate(app.term_end)}`),
          app.description ? [h("dt", {}, t("portal.form.description")), h("dd", {}, app.description)] : null),
        app.state === "returned" ? h("div", { class: "panel warn-panel", id: "return-reasons" },
          h("h2", {}, t("portal.answer.questions")),
          h("ul", {}, (app.reasons || []).map((r) => h("li", {}, r))),
          h("p", {}, h("a", { class: "button-link primary", href: `#/portal/applications/${app.id}/answer`, id: "answer" }, t("portal.answer.open")))) : null,
        app.state === "rejected" && app.reasons ? h("div", { class: "panel" },
          h("h2", {}, t("portal.app.rejected_because")), h("ul", {}, app.reasons.map((r) => h("li", {}, r)))) : null,
        app.state === "approved" && app.decision ? h("p", {}, t("portal.app.approved_leases"), " ",
          (app.decision.lease_ids || []).map((l, i) => [i ? ", " : "", h("a", { href: `#/portal/leases/${l}` }, t("portal.lease.link", { id: l }))])) : null,
        open ? h("div", { class: "panel" },
          h("h2", {}, t("portal.app.withdraw")),
          h("div", { class: "field" }, h("label", { for: "withdraw-note" }, t("portal.app.withdraw_note")), withdrawReason),
          h("p", {}, withdrawBtn)) : null,
        h("h2", {}, t("portal.app.timeline")),
        h("ol", { class: "timeline", id: "application-timeline" }, history.map((e) => h("li", {},
          h("time", { datetime: e.at }, fmtDateTime(e.at)), " ",
          e.to_state ? appBadge(e.to_state) : h("span", {}, t("portal.app.amended")),
          e.reasons && e.reasons.length ? h("span", {}, ` · ${e.reasons.join("; ")}`) : null,
          e.note && e.note !== "submitted" && e.note !== "amended" ? h("span", { class: "muted" }, ` · ${e.note}`) : null))),
        open ? [h("h2", {}, t("portal.app.capacity_now")), reviewBox] : null);
      if (open) {
        try {
          replace(reviewBox, verdict(await api.get(`applications/${app.id}/review`)));
        } catch (err) {
          replace(reviewBox, h("p", { class: "error" }, err.message));
        }
      }
    };
    load(main, box, draw);
    // Staff move it along elsewhere; look again now and then while it is shown.
    const timer = setInterval(async () => {
      if (document.hidden || seen === null) return;
      try {
        const now = await api.get(`applications/${encodeURIComponent(id)}`);
        if (now.updated_at !== seen) await draw();
      } catch {
        /* shown again at the next look */
      }
    }, 15000);
    return () => clearInterval(timer);
  },
};
