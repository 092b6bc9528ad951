// 挂载申请: choose poles on the map or from the list (the free capacity of every
// pole in service, and the tenant's own poles marked), describe the equipment,
// see the capacity check's verdict, submit. The same form answers a returned
// application (its content filled in; the answer goes back as submitted).

import * as api from "../../api.js";
import { h, replace, toast } from "../../dom.js";
import { fmtNumber, t } from "../../i18n.js";
import { SiteMap } from "../../sitemap.js";
import { equipmentForm, frame, load, refusal, verdict } from "./common.js";

function capacityLine(p) {
  const parts = [
    t("portal.free.slots", { n: p.slots.length }),
    t("portal.free.ports", { n: p.ports.length }),
    p.free_load_kg === null ? null : t("portal.free.load", { v: fmtNumber(p.free_load_kg) }),
    p.free_wind_area_m2 === null ? null : t("portal.free.wind", { v: fmtNumber(p.free_wind_area_m2) }),
    p.free_power_w === null ? null : t("portal.free.power", { v: fmtNumber(p.free_power_w) }),
    t("portal.free.cabinet", { n: p.free_cabinet_units }),
  ];
  return parts.filter(Boolean).join(" · ");
}

function slotLabel(s) {
  return t("portal.free.slot", {
    id: s.id, position: s.position, load: fmtNumber(s.max_load_kg), wind: fmtNumber(s.max_wind_area_m2),
    power: fmtNumber(s.max_power_w), supply: s.voltage_v ? `${s.supply} ${fmtNumber(s.voltage_v)} V` : s.supply,
  });
}

// mode: "new" (#/portal/apply?poles=…) or "answer" (#/portal/applications/{id}/answer).
function form(main, ctx, { application = null } = {}) {
  const title = application ? t("portal.answer.title", { id: application.id }) : t("portal.apply.title");
  const box = h("div", {}, h("p", { class: "muted" }, t("app.loading")));
  frame(main, title, box);
  let map = null;
  load(main, box, async () => {
    const [free, leases] = await Promise.all([api.get("capacity/free"), api.all("leases")]);
    const mine = new Map();
    for (const l of leases) {
      if (l.state === "terminated" || l.state === "removed") continue;
      if (!mine.has(l.pole_id)) mine.set(l.pole_id, []);
      mine.get(l.pole_id).push(l);
    }
    const wanted = new Map();
    const fromQuery = (ctx.query.get("poles") || "").split(",").filter(Boolean);
    for (const p of application ? application.poles : fromQuery.map((id) => ({ pole_id: id, slots: [] }))) {
      wanted.set(p.pole_id, p.slots || []);
    }
    const byId = new Map(free.map((p) => [p.pole_id, p]));
    const roads = [...new Set(free.map((p) => p.road))].sort();
    const road = h("select", { id: "apply-road" }, h("option", { value: "" }, t("map.all_roads")), roads.map((r) => h("option", { value: r }, r)));
    const onlyFree = h("input", { type: "checkbox", id: "apply-only-free", checked: true });
    const chosen = h("p", { id: "apply-chosen", "aria-live": "polite" });
    const listEl = h("ul", { class: "list pole-choices", id: "apply-poles" });
    const mapEl = h("div", { class: "map", id: "apply-map", role: "region", "aria-label": t("portal.apply.map") });
    const eq = equipmentForm(application || {});
    const checkBtn = h("button", { type: "button", id: "apply-check" }, t("portal.apply.check"));
    const submitBtn = h("button", { type: "button", class: "primary", id: "apply-submit", disabled: true },
      t(application ? "portal.answer.send" : "portal.apply.submit"));
    const note = h("textarea", { id: "apply-note", rows: "2", maxlength: "10000" });
    const verdictBox = h("div", { id: "apply-verdict", "aria-live": "polite" },
      h("p", { class: "muted" }, t("portal.apply.check_first")));
    const poleSelect = new Map(); // pole id -> preferred-slot select

    function body() {
      const poles = [...wanted.keys()].map((id) => {
        const sel = poleSelect.get(id);
        return { pole_id: id, slots: sel && sel.value ? [sel.value] : [] };
      });
      const out = { ...eq.read(), poles };
      if (application) out.attachments = application.attachments || [];
      return out;
    }
    function stale() {
      submitBtn.disabled = true;
      replace(verdictBox, h("p", { class: "muted" }, t("portal.apply.check_first")));
    }
    eq.onChange(stale);

    function markSelection() {
      map.forEachMarker((id, el) => {
        el.classList.toggle("selected", wanted.has(id));
        el.classList.toggle("mine", mine.has(id));
      });
      chosen.textContent = wanted.size ? t("portal.apply.chosen", { poles: [...wanted.keys()].join(", ") }) : t("portal.apply.none_chosen");
    }
    function toggle(id, on) {
      if (on === undefined) on = !wanted.has(id);
      if (on) wanted.set(id, wanted.get(id) || []);
      else wanted.delete(id);
      const cb = document.getElementById(`choose-${id}`);
      if (cb) cb.checked = on;
      const sel = poleSelect.get(id);
      if (sel) sel.disabled = !on;
      markSelection();
      stale();
    }
    function visible(p) {
      return (!road.value || p.road === road.value) && (!onlyFree.checked || p.slots.length > 0 || wanted.has(p.pole_id));
    }
    function drawList() {
      const shown = free.filter(visible);
      map.update(shown.map((p) => ({ id: p.pole_id, name: p.name, road: p.road, lat: p.lat, lon: p.lon, status: "in_service" })));
      replace(listEl, shown.slice(0, 300).map((p) => {
        const id = p.pole_id;
        const cb = h("input", { type: "checkbox", id: `choose-${id}`, checked: wanted.has(id), onchange: (ev) => toggle(id, ev.target.checked) });
        let sel = poleSelect.get(id);
        if (!sel) {
          sel = h("select", { id: `slot-${id}`, onchange: stale },
            h("option", { value: "" }, t("portal.apply.any_slot")),
            p.slots.map((s) => h("option", { value: s.id }, slotLabel(s))));
          const pref = (wanted.get(id) || [])[0];
          if (pref) sel.value = pref;
          poleSelect.set(id, sel);
        }
        sel.disabled = !wanted.has(id);
        const own = mine.get(id);
        return h("li", { dataset: { pole: id } },
          cb, " ", h("label", { for: `choose-${id}` }, t("portal.apply.choose", { pole: `${id} ${p.name}` })),
          " ", h("span", { class: "muted" }, p.road),
          own ? h("span", { class: "badge tone-ok" }, h("span", { class: "glyph", "aria-hidden": "true" }, "★"), " ",
            t("portal.apply.yours", { slots: own.map((l) => l.slot_id || "—").join(", ") })) : null,
          h("div", { class: "small" }, capacityLine(p)),
          h("div", { class: "field inline" }, h("label", { for: `slot-${id}` }, t("portal.apply.slot")), sel));
      }));
      markSelection();
    }

    checkBtn.addEventListener("click", async () => {
      if (!wanted.size) {
        replace(verdictBox, h("p", { class: "error", role: "alert" }, t("portal.apply.none_chosen")));
        return;
      }
      checkBtn.disabled = true;
      try {
        const review = await api.post("applications/check", body());
        replace(verdictBox, verdict(review));
        submitBtn.disabled = false;
      } catch (err) {
        replace(verdictBox, h("p", { class: "error", role: "alert" }, refusal(err)));
      } finally {
        checkBtn.disabled = false;
      }
    });
    submitBtn.addEventListener("click", async () => {
      submitBtn.disabled = true;
      try {
        let app;
        if (application) {
          await api.put(`applications/${application.id}`, body());
          app = await api.post(`applications/${application.id}/transitions`, { to: "submitted", note: note.value });
          toast(t("portal.answer.sent", { id: app.id }));
        } else {
          app = await api.post("applications", body());
          toast(t("portal.apply.submitted", { id: app.id }));
        }
        ctx.navigate(`#/portal/applications/${app.id}`);
      } catch (err) {
        submitBtn.disabled = false;
        replace(verdictBox, h("p", { class: "error", role: "alert" }, refusal(err)));
      }
    });
    road.addEventListener("change", () => { map.refit(); drawList(); });
    onlyFree.addEventListener("change", drawList);

    replace(box,
      application && application.reasons ? h("div", { class: "panel warn-panel", id: "return-reasons" },
        h("h2", {}, t("portal.answer.questions")),
        h("ul", {}, application.reasons.map((r) => h("li", {}, r)))) : null,
      h("h2", {}, t("portal.apply.step_poles")),
      h("p", { class: "muted" }, t("portal.apply.poles_help")),
      h("div", { class: "filters" },
        h("label", { for: "apply-road" }, t("map.road")), road,
        onlyFree, h("label", { for: "apply-only-free" }, t("portal.apply.only_free"))),
      chosen,
      h("div", { class: "grid-2 apply-grid" }, mapEl, h("div", { class: "pole-choice-box" }, listEl)),
      eq.el,
      h("h2", {}, t("portal.apply.step_check")),
      h("p", {}, checkBtn),
      verdictBox,
      application ? h("div", { class: "field" }, h("label", { for: "apply-note" }, t("portal.answer.note")), note) : null,
      h("p", {}, submitBtn));
    map = new SiteMap(mapEl, ctx.config, { onOpen: (id) => toggle(id) });
    map.map.on("zoomend moveend", markSelection);
    drawList();
    for (const id of wanted.keys()) if (!byId.has(id)) wanted.delete(id);
    markSelection();
  });
  return () => { if (map) map.destroy(); };
}

export const apply = {
  render(main, ctx) {
    return form(main, ctx);
  },
};

export const answer = {
  render(main, ctx, id) {
    let cleanup = null;
    const box = h("div", {}, h("p", { class: "muted" }, t("app.loading")));
    frame(main, t("portal.answer.title", { id }), box);
    load(main, box, async () => {
      const application = await api.get(`applications/${encodeURIComponent(id)}`);
      if (application.state !== "returned") {
        ctx.navigate(`#/portal/applications/${application.id}`);
        return;
      }
      cleanup = form(main, ctx, { application });
    });
    return () => { if (cleanup) cleanup(); };
  },
};
