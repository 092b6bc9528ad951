// 应急管理 · 预案 and drills: by emergency type; managers store a plan or record a drill.

import * as api from "../../api.js";
import { h, replace, table, toast } from "../../dom.js";
import { fmtDateTime, t, term } from "../../i18n.js";
import { EMERGENCY_TYPES, field, options, siteTimeToISO } from "./common.js";

export function render(main, ctx) {
  document.title = `${t("ops.nav.emergency_plans")} · polegw`;
  const type = h("select", {}, options(EMERGENCY_TYPES, (x) => term("emergency_type", x), { any: t("ops.any") }));
  type.value = ctx.query.get("type") || "";
  const plansBox = h("section", { class: "panel", id: "em-plans", "aria-labelledby": "em-plans-h" });
  const drillsBox = h("section", { class: "panel", id: "em-drills", "aria-labelledby": "em-drills-h" });
  replace(main, h("section", { class: "page" },
    h("nav", { class: "crumbs", "aria-label": t("app.breadcrumb") }, h("a", { href: "#/emergencies" }, t("ops.nav.emergencies")), " › ", t("ops.nav.emergency_plans")),
    h("h1", {}, t("ops.nav.emergency_plans")),
    h("form", { class: "filters", "aria-label": t("app.filter"), onsubmit: (ev) => {
      ev.preventDefault();
      ctx.navigate(type.value ? `#/emergency-plans?type=${type.value}` : "#/emergency-plans");
    } }, field("ep-type", t("ops.em.type"), type), h("button", { type: "submit" }, t("app.filter"))),
    plansBox, drillsBox));
  let stopped = false;
  const fail = (err) => toast(`${t("error.generic")} ${err.message}`, "error");

  function planForm() {
    const c = {
      type: h("select", {}, options(EMERGENCY_TYPES, (x) => term("emergency_type", x))),
      title: h("input", { required: true, maxlength: 200 }),
      version: h("input", { maxlength: 32, value: "1" }),
      body: h("textarea", { rows: 5, required: true }),
    };
    if (type.value) c.type.value = type.value;
    return h("details", {}, h("summary", {}, t("ops.ep.new_plan")),
      h("form", { class: "form-grid", onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          await api.post("emergencies/plans", { type: c.type.value, title: c.title.value.trim(), version: c.version.value.trim() || "1", body: c.body.value });
          toast(t("ops.ep.plan_saved"));
          load();
        } catch (err) {
          fail(err);
        }
      } }, field("ep-p-type", t("ops.em.type"), c.type), field("ep-p-title", t("ops.wo.title"), c.title),
      field("ep-p-version", t("ops.ep.version"), c.version), field("ep-p-body", t("ops.ep.body"), c.body),
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, t("ops.ep.save_plan")))));
  }

  function drillForm(plans) {
    const c = {
      type: h("select", {}, options(EMERGENCY_TYPES, (x) => term("emergency_type", x))),
      plan: h("select", {}, h("option", { value: "" }, t("ops.ep.no_plan")), plans.map((p) => h("option", { value: p.id }, `${p.title} (${p.version})`))),
      held: h("input", { type: "datetime-local", required: true }),
      location: h("input", { maxlength: 200 }),
      participants: h("input", {}),
      report: h("textarea", { rows: 3 }),
    };
    if (type.value) c.type.value = type.value;
    return h("details", {}, h("summary", {}, t("ops.ep.new_drill")),
      h("form", { class: "form-grid", onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          await api.post("emergencies/drills", {
            type: c.type.value, plan_id: c.plan.value ? Number(c.plan.value) : null,
            held_at: siteTimeToISO(c.held.value, ctx.config.site_timezone), location: c.location.value.trim(),
            participants: c.participants.value.split(/[,，]/).map((s) => s.trim()).filter(Boolean), report: c.report.value,
          });
          toast(t("ops.ep.drill_saved"));
          load();
        } catch (err) {
          fail(err);
        }
      } }, field("ep-d-type", t("ops.em.type"), c.type), field("ep-d-plan", t("ops.ep.plan"), c.plan),
      field("ep-d-held", t("ops.ep.held_at"), c.held), field("ep-d-location", t("ops.ep.location"), c.location),
      field("ep-d-participants", t("ops.ep.participants"), c.participants), field("ep-d-report", t("ops.em.report"), c.report),
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, t("ops.ep.save_drill")))));
  }

  async function load() {
    try {
      const q = { type: type.value || undefined };
      const [plans, drills] = await Promise.all([api.all("emergencies/plans", q, { max: 1000 }), api.all("emergencies/drills", q, { max: 1000 })]);
      if (stopped) return;
      const titles = new Map(plans.map((p) => [p.id, p.title]));
      replace(plansBox, h("h2", { id: "em-plans-h" }, t("ops.ep.plans")),
        plans.length ? h("ul", { class: "list" }, plans.map((p) => h("li", { class: "plan", dataset: { plan: p.id } },
          h("details", {}, h("summary", {}, h("strong", {}, p.title), ` · ${term("emergency_type", p.type)} · ${t("ops.ep.version")} ${p.version} · ${p.created_by} · ${fmtDateTime(p.created_at)}`),
            h("p", { class: "plan-body" }, p.body)))))
          : h("p", { class: "empty" }, t("ops.ep.no_plans")),
        ctx.manager ? planForm() : null);
      replace(drillsBox, h("h2", { id: "em-drills-h" }, t("ops.ep.drills")),
        table(t("ops.ep.drills"), [t("ops.ep.held_at"), t("ops.em.type"), t("ops.ep.plan"), t("ops.ep.location"), t("ops.ep.participants"), t("ops.em.report")],
          drills.map((d) => [fmtDateTime(d.held_at), term("emergency_type", d.type), d.plan_id ? (titles.get(d.plan_id) || `#${d.plan_id}`) : "—", d.location || "—", d.participants.join(", ") || "—", d.report || "—"]),
          { empty: t("ops.ep.no_drills") }),
        ctx.manager ? drillForm(plans) : null);
    } catch (err) {
      replace(plansBox, h("p", { class: "error" }, err.message));
    }
  }
  load();
  return () => {
    stopped = true;
  };
}
