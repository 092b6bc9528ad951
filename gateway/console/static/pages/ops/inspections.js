// 维护管理 · 巡检: inspection plans (which poles, how often, what to check), the
// inspection orders they open, and the checklist filled in per pole.

import * as api from "../../api.js";
import { h, replace, table, throttle, toast } from "../../dom.js";
import { fmtDate, fmtDateTime, t, term } from "../../i18n.js";
import * as live from "../../live.js";
import { PRIORITIES, field, options, sitePoles, staffUsers, userName } from "./common.js";
import { orderItem } from "./workorders.js";

const passBadge = (ok) => h("span", { class: `badge ${ok ? "pass" : "fail"}` },
  h("span", { class: "glyph", "aria-hidden": "true" }, ok ? "✓" : "✗"), " ", t(ok ? "ops.insp.pass" : "ops.insp.fail"));

// The poles a plan covers: its list, or every pole of its road.
async function planPoles(plan) {
  if (plan.pole_ids) return plan.pole_ids;
  const site = await sitePoles();
  return site.poles.filter((p) => p.road === plan.road).map((p) => p.id);
}

// On an inspection order's page: per pole of its plan, the record or a checklist to fill in.
export async function checklistPanel(box, order, { mayRecord }) {
  try {
    const [plan, records] = await Promise.all([
      api.get(`inspections/plans/${order.plan_id}`),
      api.all("inspections/records", { work_order: order.id }, { max: 10000 }),
    ]);
    const poles = await planPoles(plan);
    const done = new Map(records.map((r) => [r.pole_id, r]));
    const redraw = () => checklistPanel(box, order, { mayRecord });
    replace(box, h("h2", { id: "insp-rec-h" }, t("ops.insp.checklist_of", { name: plan.name })),
      h("p", { class: "muted" }, t("ops.insp.progress", { done: done.size, total: poles.length })),
      h("ul", { class: "list insp-poles" }, poles.map((pid) => {
        const r = done.get(pid);
        if (r) {
          return h("li", { dataset: { pole: pid } }, h("strong", {}, pid), " ", passBadge(r.passed),
            h("span", { class: "muted" }, fmtDateTime(r.at)),
            h("ul", { class: "checks" }, plan.checklist.map((item) => {
              const res = r.results[item];
              return h("li", {}, res && res.ok ? "✓ " : "✗ ", item, res && res.note ? ` — ${res.note}` : "");
            })), r.note ? h("p", {}, r.note) : null);
        }
        if (!mayRecord) return h("li", { dataset: { pole: pid } }, h("strong", {}, pid), " ", h("span", { class: "muted" }, t("ops.insp.not_yet")));
        const checks = plan.checklist.map((item, i) => ({
          item,
          ok: h("input", { type: "checkbox", id: `chk-${pid}-${i}`, checked: true }),
          note: h("input", { maxlength: 2000, "aria-label": `${item} · ${t("ops.wo.note")}`, placeholder: t("ops.wo.note") }),
        }));
        const note = h("input", { maxlength: 10000 });
        return h("li", { dataset: { pole: pid } }, h("form", { class: "checklist", "aria-label": t("ops.insp.checklist_for", { pole: pid }), onsubmit: async (ev) => {
          ev.preventDefault();
          const results = Object.fromEntries(checks.map((c) => [c.item, { ok: c.ok.checked, note: c.note.value.trim() }]));
          try {
            await api.post("inspections/records", { work_order_id: order.id, pole_id: pid, results, note: note.value.trim() });
            toast(t("ops.insp.recorded", { pole: pid }));
            redraw();
          } catch (err) {
            toast(`${t("error.generic")} ${err.message}`, "error");
          }
        } },
        h("fieldset", {}, h("legend", {}, pid),
          checks.map((c) => h("div", { class: "check" }, c.ok, h("label", { for: c.ok.id }, c.item), c.note)),
          field(`chk-${pid}-note`, t("ops.wo.note"), note),
          h("button", { type: "submit" }, t("ops.insp.record")))));
      })));
  } catch (err) {
    replace(box, h("p", { class: "error" }, err.message));
  }
}

export function render(main, ctx) {
  document.title = `${t("ops.nav.inspections")} · polegw`;
  const plansBox = h("section", { class: "panel", "aria-labelledby": "insp-plans-h" });
  const ordersBox = h("section", { class: "panel", "aria-labelledby": "insp-orders-h" });
  const recordsBox = h("section", { class: "panel", "aria-labelledby": "insp-records-h" });
  const createBox = h("section", { class: "panel", hidden: true, "aria-labelledby": "insp-new-h" });
  replace(main, h("section", { class: "page" },
    h("nav", { class: "crumbs", "aria-label": t("app.breadcrumb") }, h("a", { href: "#/work-orders" }, t("ops.nav.work_orders")), " › ", t("ops.nav.inspections")),
    h("div", { class: "page-head" }, h("h1", {}, t("ops.nav.inspections")),
      ctx.manager ? h("button", { type: "button", class: "primary", onclick: () => { createBox.hidden = !createBox.hidden; } }, t("ops.insp.new")) : null),
    createBox, ordersBox, plansBox, recordsBox));
  let stopped = false;
  let users = new Map();

  function drawCreate(roads) {
    const c = {
      name: h("input", { required: true, maxlength: 200 }),
      road: h("select", {}, h("option", { value: "" }, t("ops.insp.by_poles")), roads.map((r) => h("option", { value: r }, r))),
      poles: h("input", { placeholder: "P0001, P0002" }),
      every: h("input", { type: "number", min: 1, max: 3660, value: 30, required: true }),
      starts: h("input", { type: "date", required: true, value: new Date().toISOString().slice(0, 10) }),
      checklist: h("textarea", { rows: 4, required: true }),
      priority: h("select", {}, options(PRIORITIES, (p) => term("ops.priority", p))),
    };
    c.priority.value = "general";
    replace(createBox, h("h2", { id: "insp-new-h" }, t("ops.insp.new")),
      h("form", { class: "form-grid", onsubmit: async (ev) => {
        ev.preventDefault();
        const body = {
          name: c.name.value.trim(), every_days: Number(c.every.value), starts_on: c.starts.value,
          checklist: c.checklist.value.split("\n").map((s) => s.trim()).filter(Boolean), priority: c.priority.value,
        };
        if (c.road.value) body.road = c.road.value;
        else body.pole_ids = c.poles.value.split(/[\s,，]+/).filter(Boolean);
        try {
          await api.post("inspections/plans", body);
          toast(t("ops.insp.created"));
          createBox.hidden = true;
          load();
        } catch (err) {
          toast(`${t("error.generic")} ${err.message}`, "error");
        }
      } },
      field("insp-name", t("ops.insp.name"), c.name), field("insp-road", t("ops.insp.road"), c.road),
      field("insp-poles", t("ops.insp.poles"), c.poles), field("insp-every", t("ops.insp.every_days"), c.every),
      field("insp-starts", t("ops.insp.starts_on"), c.starts), field("insp-priority", t("ops.wo.priority"), c.priority),
      field("insp-checklist", t("ops.insp.checklist_lines"), c.checklist),
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, t("ops.insp.create")))));
  }

  async function load() {
    try {
      const [plans, orders, records] = await Promise.all([
        api.all("inspections/plans", {}, { max: 1000 }),
        api.all("work-orders", { kind: "inspection" }, { max: 500 }),
        api.get("inspections/records", { limit: 100 }),
      ]);
      if (stopped) return;
      const open = orders.filter((o) => !["closed", "cancelled"].includes(o.state));
      replace(ordersBox, h("h2", { id: "insp-orders-h" }, t("ops.insp.open_orders")),
        open.length ? h("ul", { class: "list wo-list" }, open.map((o) => orderItem(o, users))) : h("p", { class: "empty" }, t("ops.wo.none")));
      replace(plansBox, h("h2", { id: "insp-plans-h" }, t("ops.insp.plans")),
        table(t("ops.insp.plans"), [t("ops.insp.name"), t("ops.insp.scope"), t("ops.insp.every_days"), t("ops.insp.next_due"), t("ops.insp.checklist"), t("ops.insp.active")],
          plans.map((p) => [p.name, p.road || (p.pole_ids || []).join(", "), String(p.every_days), fmtDate(p.next_due), p.checklist.join(" · "), p.active ? `✓ ${t("ops.yes")}` : `✗ ${t("ops.no")}`]),
          { empty: t("ops.insp.no_plans") }));
      replace(recordsBox, h("h2", { id: "insp-records-h" }, t("ops.insp.records")),
        table(t("ops.insp.records"), [t("ops.wo.pole"), t("ops.insp.result"), t("ops.wo.order_col"), t("ops.insp.by"), t("ops.insp.at")],
          records.items.map((r) => [r.pole_id, passBadge(r.passed), h("a", { href: `#/work-orders/${r.work_order_id}` }, `#${r.work_order_id}`), userName(users, r.by), fmtDateTime(r.at)]),
          { empty: t("ops.insp.no_records") }));
    } catch (err) {
      replace(plansBox, h("p", { class: "error" }, err.message));
    }
  }
  (async () => {
    const [u, site] = await Promise.all([staffUsers(), ctx.manager ? sitePoles() : Promise.resolve({ roads: [] })]);
    users = u;
    if (ctx.manager) drawCreate(site.roads);
    await load();
  })();
  const unsub = live.subscribe("work_order", throttle(() => { if (!stopped) load(); }, 2000));
  return () => {
    stopped = true;
    unsub();
  };
}
