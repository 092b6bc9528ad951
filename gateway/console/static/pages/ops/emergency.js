// 应急管理: one emergency. Its timeline with author and time, a new entry, the
// linked alarms and work orders, the protective actions and their device
// commands' states as they change, and resolve / close with a report.

import * as api from "../../api.js";
import { h, replace, throttle, toast } from "../../dom.js";
import { fmtDateTime, t, term } from "../../i18n.js";
import * as live from "../../live.js";
import { actionBadge, emStateBadge, field, options, who } from "./common.js";

const CMD_GLYPH = { pending: "…", sent: "→", succeeded: "✓", failed: "!", timed_out: "⏱" };
const cmdBadge = (s) => h("span", { class: `badge cmd-${s}` }, h("span", { class: "glyph", "aria-hidden": "true" }, CMD_GLYPH[s] || "?"), " ", term("cmdstate", s));

export function render(main, ctx, idText) {
  const id = Number(idText);
  document.title = `${t("ops.em.one", { id })} · polegw`;
  const head = h("div");
  const record = h("section", { class: "panel", "aria-labelledby": "em-rec-h" });
  const timeline = h("section", { class: "panel", id: "em-timeline", "aria-labelledby": "em-tl-h" });
  const actions = h("section", { class: "panel", id: "em-actions", "aria-labelledby": "em-act-h" });
  const links = h("section", { class: "panel", id: "em-links", "aria-labelledby": "em-ln-h" });
  const close = h("section", { class: "panel", id: "em-close", "aria-labelledby": "em-cl-h" });
  replace(main, h("section", { class: "page" },
    h("nav", { class: "crumbs", "aria-label": t("app.breadcrumb") }, h("a", { href: "#/emergencies" }, t("ops.nav.emergencies")), " › ", `#${id}`),
    head, h("div", { class: "grid-2" }, h("div", { class: "col" }, record, timeline), h("div", { class: "col" }, close, actions, links))));
  let stopped = false;
  let em = null;
  let acts = [];
  let again = null;
  const cmdCells = new Map(); // command id -> the element showing its state

  const fail = (err) => toast(`${t("error.generic")} ${err.message}`, "error");

  function drawRecord(e) {
    const row = (k, v) => [h("dt", {}, t(k)), h("dd", {}, v)];
    replace(head, h("h1", {}, `#${e.id} ${e.title}`), h("p", { class: "badges", id: "em-state" }, emStateBadge(e.state), " ", h("span", { class: "badge em-type" }, term("emergency_type", e.type))));
    replace(record, h("h2", { id: "em-rec-h" }, t("ops.wo.details")),
      h("dl", { class: "record" },
        row("ops.em.type", term("emergency_type", e.type)),
        row("ops.wo.pole", e.pole_id ? h("a", { href: `#/poles/${encodeURIComponent(e.pole_id)}` }, e.pole_id) : t("ops.em.area_wide")),
        row("ops.em.opened_by", who(e.opened_by)),
        row("ops.em.opened_at", fmtDateTime(e.opened_at)),
        e.resolved_at ? row("ops.em.resolved_at", fmtDateTime(e.resolved_at)) : null,
        e.closed_at ? row("ops.em.closed_at", fmtDateTime(e.closed_at)) : null,
        row("ops.wo.description", e.description || "—"),
        e.report ? row("ops.em.report", h("span", { id: "em-report" }, e.report)) : null));
  }

  function drawTimeline(e) {
    const kind = h("select", {}, options(["note", "dispatched", "action"], (k) => term("ops.emkind", k)));
    const text = h("textarea", { rows: 2, maxlength: 5000, required: true });
    replace(timeline, h("h2", { id: "em-tl-h" }, t("ops.wo.timeline")),
      h("ol", { class: "timeline" }, e.timeline.map((x) => h("li", { dataset: { kind: x.kind } },
        h("div", { class: "tl-head" }, h("time", { datetime: x.at }, fmtDateTime(x.at, { seconds: true })), " · ", who(x.author), " · ", h("strong", {}, term("ops.emkind", x.kind))),
        h("p", {}, x.text)))),
      e.state !== "closed" && ctx.staff ? h("form", { class: "form-grid", "aria-label": t("ops.em.add_entry"), onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          await api.post(`emergencies/${id}/timeline`, { kind: kind.value, text: text.value.trim() });
          text.value = "";
          await refresh();
        } catch (err) {
          fail(err);
        }
      } }, field("em-entry-kind", t("ops.em.entry_kind"), kind), field("em-entry-text", t("ops.em.entry_text"), text),
      h("div", { class: "actions" }, h("button", { type: "submit" }, t("ops.em.add_entry")))) : null);
  }

  function drawClose(e) {
    if (!ctx.manager || e.state === "closed") {
      close.hidden = true;
      return;
    }
    close.hidden = false;
    const text = h("textarea", { rows: 4, required: true, maxlength: e.state === "open" ? 5000 : 20000 });
    const step = e.state === "open" ? "resolve" : "close";
    replace(close, h("h2", { id: "em-cl-h" }, t(`ops.em.${step}_h`)),
      h("form", { class: "form-grid", onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          const body = step === "resolve" ? { text: text.value.trim() } : { report: text.value.trim() };
          em = await api.post(`emergencies/${id}/${step}`, body);
          toast(t("ops.em.now", { state: term("ops.emstate", em.state) }));
          draw();
        } catch (err) {
          fail(err);
        }
      } }, field(`em-${step}-text`, t(`ops.em.${step}_text`), text),
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, t(`ops.em.${step}`)))));
  }

  async function drawLinks(e) {
    const alarmIds = e.alarm_ids;
    const orderIds = e.work_order_ids;
    const [alarms, orders] = await Promise.all([
      Promise.all(alarmIds.map((a) => api.get(`alarms/${a}`).catch(() => ({ id: a })))),
      Promise.all(orderIds.map((o) => api.get(`work-orders/${o}`).catch(() => ({ id: o })))),
    ]);
    if (stopped) return;
    const alarmInput = h("input", { inputmode: "numeric", pattern: "[0-9, ]*" });
    const orderInput = h("input", { inputmode: "numeric", pattern: "[0-9, ]*" });
    const ids = (s) => s.split(/[\s,，]+/).filter(Boolean).map(Number);
    replace(links, h("h2", { id: "em-ln-h" }, t("ops.em.links")),
      h("h3", {}, t("ops.em.alarms")),
      alarms.length ? h("ul", { class: "list" }, alarms.map((a) => h("li", { dataset: { alarm: a.id } },
        h("a", { href: `#/alarms?state=&id=${a.id}` }, `#${a.id}`), " ", a.device_id || "", " ", a.state ? term("alarmstate", a.state) : "")))
        : h("p", { class: "empty" }, t("ops.em.no_alarms")),
      h("h3", {}, t("ops.em.orders")),
      orders.length ? h("ul", { class: "list" }, orders.map((o) => h("li", { dataset: { order: o.id } },
        h("a", { href: `#/work-orders/${o.id}` }, `#${o.id} ${o.title || ""}`), " ", o.state ? term("ops.wostate", o.state) : "")))
        : h("p", { class: "empty" }, t("ops.em.no_orders")),
      ctx.manager ? h("form", { class: "form-inline", onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          em = await api.post(`emergencies/${id}/links`, { alarm_ids: ids(alarmInput.value), work_order_ids: ids(orderInput.value) });
          draw();
        } catch (err) {
          fail(err);
        }
      } }, field("em-link-alarms", t("ops.em.link_alarms"), alarmInput), field("em-link-orders", t("ops.em.link_orders"), orderInput),
      h("button", { type: "submit" }, t("ops.em.link"))) : null);
  }

  async function commandState(cell, a) {
    try {
      const c = await api.get(`devices/${encodeURIComponent(a.device_id)}/commands/${a.command_id}`);
      replace(cell, cmdBadge(c.state));
    } catch {
      replace(cell, "—");
    }
  }

  async function drawActions() {
    try {
      acts = await api.get(`emergencies/${id}/actions`);
    } catch (err) {
      replace(actions, h("p", { class: "error" }, err.message));
      return;
    }
    if (stopped) return;
    // An action settles after its command ends (no event of its own): look again
    // every 2 s while one is unsettled.
    clearTimeout(again);
    if (acts.some((a) => a.state === "pending" || a.state === "running")) again = setTimeout(drawActions, 2000);
    cmdCells.clear();
    replace(actions, h("h2", { id: "em-act-h" }, t("ops.em.actions")),
      acts.length ? h("ul", { class: "list" }, acts.map((a) => {
        const cell = h("span", { class: "cmd-state", role: "status", "aria-live": "polite" }, a.command_id ? "…" : "—");
        if (a.command_id) {
          cmdCells.set(a.command_id, cell);
          commandState(cell, a);
        }
        return h("li", { dataset: { action: a.id } },
          h("strong", {}, term("ops.emaction", a.action)), " ",
          h("a", { href: `#/devices/${encodeURIComponent(a.device_id)}` }, a.device_id), " ",
          h("span", {}, term("command", a.command), Object.keys(a.args).length ? ` ${Object.values(a.args).join(", ")}` : ""), " ",
          actionBadge(a.state), " ", h("span", { class: "muted" }, t("ops.em.command")), cell,
          a.attempts > 1 ? h("span", { class: "muted" }, t("ops.em.attempts", { n: a.attempts })) : null,
          a.last_error ? h("span", { class: "error" }, a.last_error) : null);
      })) : h("p", { class: "empty" }, t("ops.em.no_actions")));
  }

  // A live refresh keeps what is being typed: a form is redrawn only when what
  // it is for changes.
  let shown = {};
  function draw() {
    drawRecord(em);
    const keys = {
      timeline: `${em.state}/${em.timeline.length ? em.timeline[em.timeline.length - 1].id : 0}`,
      close: em.state,
      links: `${em.alarm_ids}/${em.work_order_ids}`,
    };
    if (keys.timeline !== shown.timeline) drawTimeline(em);
    if (keys.close !== shown.close) drawClose(em);
    if (keys.links !== shown.links) drawLinks(em);
    shown = keys;
  }
  async function refresh() {
    try {
      em = await api.get(`emergencies/${id}`);
    } catch (err) {
      replace(head, h("h1", {}, t(err.status === 404 ? "notfound.title" : "error.generic")), h("p", { class: "error" }, err.message));
      return;
    }
    if (stopped) return;
    draw();
    await drawActions();
  }
  refresh();
  const soonActions = throttle(() => { if (!stopped) drawActions(); }, 1000);
  const soon = throttle(() => { if (!stopped) refresh(); }, 1000);
  const unsubs = [
    live.subscribe("emergency", (ev) => { if (ev.id === id) soon(); }),
    live.subscribe("command", (ev) => {
      const cell = cmdCells.get(String(ev.id));
      if (!cell) return;
      replace(cell, cmdBadge(ev.state));
      soonActions();
    }),
  ];
  return () => {
    stopped = true;
    clearTimeout(again);
    unsubs.forEach((u) => u());
  };
}
