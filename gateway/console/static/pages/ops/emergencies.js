// 应急管理: the emergencies, open ones first; a manager opens one by hand.

import * as api from "../../api.js";
import { h, replace, throttle, toast } from "../../dom.js";
import { fmtAge, fmtDateTime, t, term } from "../../i18n.js";
import * as live from "../../live.js";
import { EMERGENCY_TYPES, emStateBadge, field, options, sitePoles, who } from "./common.js";

const STATE_RANK = { open: 0, resolved: 1, closed: 2 };

export function emergencyItem(e) {
  return h("li", { class: `em-item em-row-${e.state}`, dataset: { emergency: e.id } },
    h("div", { class: "wo-head" },
      h("a", { href: `#/emergencies/${e.id}`, class: "wo-title" }, `#${e.id} ${e.title}`),
      emStateBadge(e.state), h("span", { class: "badge em-type" }, term("emergency_type", e.type))),
    h("div", { class: "wo-meta" },
      e.pole_id ? h("a", { href: `#/poles/${encodeURIComponent(e.pole_id)}` }, e.pole_id) : h("span", {}, t("ops.em.area_wide")),
      h("span", {}, `${t("ops.em.opened_by")} ${who(e.opened_by)}`),
      h("span", { title: fmtDateTime(e.opened_at) }, fmtDateTime(e.opened_at), " · ", fmtAge(e.opened_at))));
}

export function render(main, ctx) {
  document.title = `${t("ops.nav.emergencies")} · polegw`;
  const q = ctx.query;
  const f = {
    state: h("select", {}, options(["open", "resolved", "closed"], (s) => term("ops.emstate", s), { any: t("ops.any") })),
    type: h("select", {}, options(EMERGENCY_TYPES, (x) => term("emergency_type", x), { any: t("ops.any") })),
  };
  f.state.value = q.get("state") || "";
  f.type.value = q.get("type") || "";
  const listBox = h("div", { id: "em-list", "aria-live": "polite" });
  const createBox = h("section", { class: "panel", id: "em-create", hidden: true, "aria-labelledby": "em-new-h" });
  replace(main, h("section", { class: "page" },
    h("div", { class: "page-head" }, h("h1", {}, t("ops.nav.emergencies")),
      h("a", { href: "#/emergency-plans" }, t("ops.nav.emergency_plans")),
      ctx.manager ? h("button", { type: "button", class: "primary", onclick: () => { createBox.hidden = !createBox.hidden; } }, t("ops.em.new")) : null),
    createBox,
    h("form", { class: "filters", "aria-label": t("app.filter"), onsubmit: (ev) => {
      ev.preventDefault();
      const p = new URLSearchParams();
      if (f.state.value) p.set("state", f.state.value);
      if (f.type.value) p.set("type", f.type.value);
      ctx.navigate(`#/emergencies?${p}`);
    } }, field("em-f-state", t("ops.em.state"), f.state), field("em-f-type", t("ops.em.type"), f.type), h("button", { type: "submit" }, t("app.filter"))),
    h("section", { class: "panel" }, listBox)));
  let stopped = false;

  async function load() {
    try {
      const items = await api.all("emergencies", { state: f.state.value || undefined, type: f.type.value || undefined }, { max: 2000 });
      if (stopped) return;
      items.sort((a, b) => (STATE_RANK[a.state] - STATE_RANK[b.state]) || (b.id - a.id));
      replace(listBox, items.length ? h("ul", { class: "list wo-list" }, items.map(emergencyItem)) : h("p", { class: "empty" }, t("ops.em.none")));
    } catch (err) {
      replace(listBox, h("p", { class: "error" }, err.message));
    }
  }

  async function drawCreate() {
    const site = await sitePoles();
    const c = {
      type: h("select", {}, options(EMERGENCY_TYPES, (x) => term("emergency_type", x))),
      pole: h("input", { list: "em-pole-list", autocomplete: "off" }),
      title: h("input", { required: true, maxlength: 200 }),
      description: h("textarea", { rows: 3, maxlength: 5000 }),
      protect: h("input", { type: "checkbox", checked: true }),
    };
    replace(createBox, h("h2", { id: "em-new-h" }, t("ops.em.new")),
      h("form", { class: "form-grid", onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          const e = await api.post("emergencies", {
            type: c.type.value, pole_id: c.pole.value.trim() || null, title: c.title.value.trim(),
            description: c.description.value.trim(), protect: c.protect.checked,
          });
          ctx.navigate(`#/emergencies/${e.id}`);
        } catch (err) {
          toast(`${t("error.generic")} ${err.message}`, "error");
        }
      } },
      field("em-c-type", t("ops.em.type"), c.type), field("em-c-pole", t("ops.em.pole_optional"), c.pole),
      h("datalist", { id: "em-pole-list" }, site.poles.slice(0, 3000).map((p) => h("option", { value: p.id }, `${p.name} · ${p.road}`))),
      field("em-c-title", t("ops.wo.title"), c.title), field("em-c-description", t("ops.wo.description"), c.description),
      h("div", { class: "check" }, c.protect, h("label", { for: "em-c-protect" }, t("ops.em.protect"))),
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, t("ops.em.open_it")))));
    c.protect.id = "em-c-protect";
  }

  if (ctx.manager) drawCreate();
  load();
  const unsub = live.subscribe("emergency", throttle(() => { if (!stopped) load(); }, 1500));
  return () => {
    stopped = true;
    unsub();
  };
}
