// 维护管理: the work orders, filtered and sorted, with their deadlines and an
// overdue mark; a maintainer's own orders first; a manager opens one by hand.

import * as api from "../../api.js";
import { h, replace, throttle, toast } from "../../dom.js";
import { fmtDateTime, t, term } from "../../i18n.js";
import * as live from "../../live.js";
import {
  FAULTS, PRIORITIES, WO_STATES, faultWord, field, myId, options, overdueMark,
  priorityBadge, sitePoles, staffUsers, userName, woStateBadge,
} from "./common.js";

const PRIO_RANK = { urgent: 0, serious: 1, general: 2, single_lamp_out: 3 };
const SORTS = ["newest", "priority", "resolution_due", "response_due"];
const FINISHED = new Set(["closed", "cancelled"]);

const due = (v) => (v ? Date.parse(v) : Infinity);
export function sortOrders(items, how) {
  const by = {
    newest: (a, b) => b.id - a.id,
    priority: (a, b) => (PRIO_RANK[a.priority] - PRIO_RANK[b.priority]) || (b.id - a.id),
    resolution_due: (a, b) => (due(a.resolution_due) - due(b.resolution_due)) || (b.id - a.id),
    response_due: (a, b) => (due(a.response_due) - due(b.response_due)) || (b.id - a.id),
  }[how] || ((a, b) => b.id - a.id);
  return [...items].sort(by);
}

function dueCell(label, at, missed) {
  return h("span", { class: missed ? "due missed" : "due" }, h("span", { class: "muted" }, `${label} `), fmtDateTime(at));
}

export function orderItem(o, users) {
  return h("li", { class: `wo-item${o.overdue ? " is-overdue" : ""}`, dataset: { order: o.id } },
    h("div", { class: "wo-head" },
      h("a", { href: `#/work-orders/${o.id}`, class: "wo-title" }, `#${o.id} ${o.title}`),
      woStateBadge(o.state), priorityBadge(o.priority), o.overdue ? overdueMark() : null),
    h("div", { class: "wo-meta" },
      o.pole_id ? h("a", { href: `#/poles/${encodeURIComponent(o.pole_id)}` }, o.pole_id) : h("span", {}, term("ops.kind", o.kind)),
      o.fault ? h("span", {}, faultWord(o.fault)) : null,
      h("span", {}, h("span", { class: "muted" }, `${t("ops.wo.assignee")} `), userName(users, o.assignee)),
      o.response_due ? dueCell(t("ops.wo.response_due"), o.response_due, o.response_overdue) : null,
      o.resolution_due ? dueCell(t("ops.wo.resolution_due"), o.resolution_due, o.resolution_overdue) : null));
}

export function render(main, ctx) {
  document.title = `${t("ops.nav.work_orders")} · polegw`;
  const q = ctx.query;
  const f = {
    state: h("select", {}, options(WO_STATES, (s) => term("ops.wostate", s), { any: t("ops.any") })),
    priority: h("select", {}, options(PRIORITIES, (p) => term("ops.priority", p), { any: t("ops.any") })),
    pole: h("input", { list: "wo-pole-list", autocomplete: "off", size: 8 }),
    assignee: h("select", {}, h("option", { value: "" }, t("ops.any"))),
    overdue: h("select", {}, h("option", { value: "" }, t("ops.any")), h("option", { value: "true" }, t("ops.wo.only_overdue")), h("option", { value: "false" }, t("ops.wo.not_overdue"))),
    sort: h("select", {}, options(SORTS, (s) => t(`ops.wo.sort_${s}`))),
  };
  for (const k of Object.keys(f)) f[k].value = q.get(k) || (k === "sort" ? "newest" : "");
  const poleList = h("datalist", { id: "wo-pole-list" });
  const mine = h("section", { class: "panel", id: "wo-mine", hidden: true, "aria-labelledby": "wo-mine-h" });
  const listBox = h("div", { id: "wo-list", "aria-live": "polite" });
  const createBox = h("section", { class: "panel", id: "wo-create", hidden: true, "aria-labelledby": "wo-create-h" });
  replace(main, h("section", { class: "page" },
    h("div", { class: "page-head" },
      h("h1", {}, t("ops.nav.work_orders")),
      h("a", { href: "#/inspections" }, t("ops.nav.inspections")),
      ctx.manager ? h("button", { type: "button", class: "primary", onclick: () => { createBox.hidden = !createBox.hidden; if (!createBox.hidden) createBox.querySelector("input")?.focus(); } }, t("ops.wo.new")) : null),
    createBox,
    mine,
    h("form", { class: "filters", "aria-label": t("app.filter"), onsubmit: (ev) => { ev.preventDefault(); apply(); } },
      field("wo-f-state", t("ops.wo.state"), f.state),
      field("wo-f-priority", t("ops.wo.priority"), f.priority),
      field("wo-f-pole", t("ops.wo.pole"), f.pole), poleList,
      field("wo-f-assignee", t("ops.wo.assignee"), f.assignee),
      field("wo-f-overdue", t("ops.wo.overdue_filter"), f.overdue),
      field("wo-f-sort", t("ops.wo.sort"), f.sort),
      h("button", { type: "submit" }, t("app.filter"))),
    h("section", { class: "panel", "aria-labelledby": "wo-all-h" }, h("h2", { id: "wo-all-h" }, t("ops.wo.all")), listBox)));

  let stopped = false;
  let users = new Map();
  let items = [];

  function apply() {
    const p = new URLSearchParams();
    for (const k of Object.keys(f)) if (f[k].value) p.set(k, f[k].value);
    ctx.navigate(`#/work-orders?${p}`);
  }
  function draw() {
    const sorted = sortOrders(items, f.sort.value);
    replace(listBox, sorted.length
      ? h("ul", { class: "list wo-list" }, sorted.map((o) => orderItem(o, users)))
      : h("p", { class: "empty" }, t("ops.wo.none")));
  }
  async function loadMine() {
    if (ctx.me.role !== "maintainer") return;
    const me = await myId(ctx);
    if (me === null) return;
    const own = (await api.all("work-orders", { assignee: me }, { max: 1000 })).filter((o) => !FINISHED.has(o.state));
    if (stopped) return;
    mine.hidden = false;
    replace(mine, h("h2", { id: "wo-mine-h" }, t("ops.wo.mine")),
      own.length ? h("ul", { class: "list wo-list" }, sortOrders(own, "resolution_due").map((o) => orderItem(o, users)))
        : h("p", { class: "empty" }, t("ops.wo.none_mine")));
  }
  async function load() {
    try {
      const query = {
        state: f.state.value || undefined, priority: f.priority.value || undefined,
        pole: f.pole.value.trim() || undefined, assignee: f.assignee.value || undefined,
        overdue: f.overdue.value || undefined,
      };
      const [all] = await Promise.all([api.all("work-orders", query, { max: 2000 }), loadMine()]);
      if (stopped) return;
      items = all;
      draw();
    } catch (err) {
      replace(listBox, h("p", { class: "error" }, err.message));
    }
  }

  function createForm() {
    const c = {
      pole: h("input", { list: "wo-pole-list", required: true, autocomplete: "off" }),
      fault: h("select", {}, h("option", { value: "" }, t("ops.wo.no_fault")), FAULTS.map((x) => h("option", { value: x }, faultWord(x)))),
      priority: h("select", { required: true }, options(PRIORITIES, (p) => term("ops.priority", p))),
      title: h("input", { required: true, maxlength: 200 }),
      description: h("textarea", { rows: 3, maxlength: 10000 }),
      assignee: h("select", {}, h("option", { value: "" }, t("ops.wo.unassigned")), [...users.values()].map((u) => h("option", { value: u.id }, `${u.name} · ${t(`role.${u.role}`)}`))),
    };
    c.priority.value = "general";
    c.fault.addEventListener("change", () => { if (!c.title.value && c.fault.value) c.title.value = faultWord(c.fault.value); });
    replace(createBox,
      h("h2", { id: "wo-create-h" }, t("ops.wo.new")),
      h("form", { class: "form-grid", onsubmit: async (ev) => {
        ev.preventDefault();
        const body = {
          pole_id: c.pole.value.trim(), title: c.title.value.trim(), description: c.description.value.trim(),
          priority: c.priority.value, fault: c.fault.value || null,
          assignee: c.assignee.value ? Number(c.assignee.value) : null,
        };
        try {
          const o = await api.post("work-orders", body);
          toast(t("ops.wo.created", { id: o.id }));
          ctx.navigate(`#/work-orders/${o.id}`);
        } catch (err) {
          toast(`${t("error.generic")} ${err.message}`, "error");
        }
      } },
      field("wo-c-pole", t("ops.wo.pole"), c.pole),
      field("wo-c-fault", t("ops.wo.fault"), c.fault),
      field("wo-c-priority", t("ops.wo.priority"), c.priority),
      field("wo-c-title", t("ops.wo.title"), c.title),
      field("wo-c-description", t("ops.wo.description"), c.description),
      field("wo-c-assignee", t("ops.wo.assign_to"), c.assignee),
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, t("ops.wo.create")))));
  }

  (async () => {
    const [u, site] = await Promise.all([staffUsers(), sitePoles()]);
    if (stopped) return;
    users = u;
    for (const p of site.poles.slice(0, 3000)) poleList.append(h("option", { value: p.id }, `${p.name} · ${p.road}`));
    for (const x of users.values()) f.assignee.append(h("option", { value: x.id }, x.name));
    f.assignee.value = q.get("assignee") || "";
    if (ctx.manager) createForm();
    await load();
  })();
  const soon = throttle(load, 1500);
  const unsub = live.subscribe("work_order", soon);
  return () => {
    stopped = true;
    unsub();
  };
}
