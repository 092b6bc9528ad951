// 维护管理: one work order. Assign (managers), move it through its states with a
// note, photos from the phone's camera, spare parts, and the timeline of notes.

import * as api from "../../api.js";
import { h, replace, table, throttle, toast } from "../../dom.js";
import { fmtDateTime, fmtNumber, t, term } from "../../i18n.js";
import * as live from "../../live.js";
import { checklistPanel } from "./inspections.js";
import { faultWord, field, myId, overdueMark, priorityBadge, staffUsers, userName, woStateBadge } from "./common.js";

// The moves the API allows from each state (gateway/core/maintenance.py).
const MOVES = {
  open: ["assigned", "cancelled"],
  assigned: ["assigned", "in_progress", "cancelled"],
  in_progress: ["assigned", "resolved", "cancelled"],
  resolved: ["closed", "in_progress"],
  closed: [],
  cancelled: [],
};
const ASSIGNEE_MOVES = new Set(["assigned>in_progress", "in_progress>resolved"]);

function moveLabel(from, to) {
  if (to === "assigned") return t(from === "open" ? "ops.wo.move_assign" : "ops.wo.move_reassign");
  if (to === "in_progress") return t(from === "resolved" ? "ops.wo.move_reopen" : "ops.wo.move_start");
  return t(`ops.wo.move_${to}`);
}

function csrf() {
  const m = document.cookie.split(";").map((p) => p.trim()).find((p) => p.startsWith("polegw_csrf="));
  return m ? decodeURIComponent(m.slice("polegw_csrf=".length)) : "";
}

// The attachment upload is multipart (the API's upload route), not JSON.
async function upload(orderId, file) {
  const body = new FormData();
  body.append("file", file, file.name || "photo.jpg");
  const res = await fetch(`/api/v1/work-orders/${orderId}/attachments`, {
    method: "POST", body, credentials: "same-origin", headers: { "X-CSRF-Token": csrf(), Accept: "application/json" },
  });
  if (!res.ok) {
    let detail = res.statusText;
    try {
      detail = (await res.json()).detail ?? detail;
    } catch {
      /* not JSON */
    }
    throw new api.ApiError(res.status, detail);
  }
  return res.json();
}

export function render(main, ctx, idText) {
  const id = Number(idText);
  document.title = `${t("ops.wo.order", { id })} · polegw`;
  const head = h("div", { id: "wo-head" });
  const record = h("section", { class: "panel", "aria-labelledby": "wo-rec-h" });
  const act = h("section", { class: "panel", id: "wo-actions", "aria-labelledby": "wo-act-h" });
  const photos = h("section", { class: "panel", id: "wo-photos", "aria-labelledby": "wo-ph-h" });
  const parts = h("section", { class: "panel", id: "wo-parts", "aria-labelledby": "wo-sp-h" });
  const checklist = h("section", { class: "panel", id: "wo-checklist", hidden: true, "aria-labelledby": "insp-rec-h" });
  const timeline = h("section", { class: "panel", id: "wo-timeline", "aria-labelledby": "wo-tl-h" });
  replace(main, h("section", { class: "page" },
    h("nav", { class: "crumbs", "aria-label": t("app.breadcrumb") }, h("a", { href: "#/work-orders" }, t("ops.nav.work_orders")), " › ", `#${id}`),
    head, h("div", { class: "grid-2" }, h("div", { class: "col" }, record, checklist, timeline), h("div", { class: "col" }, act, photos, parts))));

  let stopped = false;
  let users = new Map();
  let order = null;
  let shownMoves = null;
  let shownParts = null;

  const mayWork = (o) => ctx.manager || (ctx.me.role === "maintainer" && o.assignee === ctx.me.id);
  const mayMove = (o, to) => ctx.manager || (o.assignee === ctx.me.id && ASSIGNEE_MOVES.has(`${o.state}>${to}`));

  function drawHead(o) {
    replace(head, h("h1", {}, `#${o.id} ${o.title}`),
      h("p", { class: "badges", id: "wo-state" }, woStateBadge(o.state), " ", priorityBadge(o.priority), " ", o.overdue ? overdueMark() : null));
  }
  function drawRecord(o) {
    const row = (k, v) => [h("dt", {}, t(k)), h("dd", {}, v)];
    replace(record, h("h2", { id: "wo-rec-h" }, t("ops.wo.details")),
      h("dl", { class: "record" },
        row("ops.wo.kind", `${term("ops.kind", o.kind)} · ${term("ops.source", o.source)}`),
        o.pole_id ? row("ops.wo.pole", h("a", { href: `#/poles/${encodeURIComponent(o.pole_id)}` }, o.pole_id)) : null,
        o.device_id ? row("ops.wo.device", h("a", { href: `#/devices/${encodeURIComponent(o.device_id)}` }, o.device_id)) : null,
        row("ops.wo.fault", faultWord(o.fault)),
        o.alarm_id ? row("ops.wo.alarm", h("a", { href: `#/alarms?state=&id=${o.alarm_id}` }, `#${o.alarm_id}`)) : null,
        row("ops.wo.assignee", h("span", { id: "wo-assignee" }, userName(users, o.assignee))),
        row("ops.wo.created_at", fmtDateTime(o.created_at)),
        row("ops.wo.response_due", h("span", { class: o.response_overdue ? "due missed" : "due" }, fmtDateTime(o.response_due), o.response_overdue ? [" ", overdueMark()] : null)),
        row("ops.wo.resolution_due", h("span", { class: o.resolution_overdue ? "due missed" : "due" }, fmtDateTime(o.resolution_due), o.resolution_overdue ? [" ", overdueMark()] : null)),
        o.assigned_at ? row("ops.wo.assigned_at", fmtDateTime(o.assigned_at)) : null,
        o.started_at ? row("ops.wo.started_at", fmtDateTime(o.started_at)) : null,
        o.resolved_at ? row("ops.wo.resolved_at", fmtDateTime(o.resolved_at)) : null,
        o.closed_at ? row("ops.wo.closed_at", fmtDateTime(o.closed_at)) : null,
        o.resolution ? row("ops.wo.resolution", o.resolution) : null,
        row("ops.wo.description", o.description || "—")));
  }

  async function move(to, extra) {
    try {
      order = await api.post(`work-orders/${id}/transitions`, { to, ...extra });
      toast(t("ops.wo.moved", { state: term("ops.wostate", order.state) }));
      await refresh();
    } catch (err) {
      toast(`${t("error.generic")} ${err.message}`, "error");
    }
  }

  function drawActions(o) {
    const moves = MOVES[o.state].filter((to) => mayMove(o, to));
    if (!moves.length) {
      replace(act, h("h2", { id: "wo-act-h" }, t("ops.wo.actions")), h("p", { class: "muted" }, t("ops.wo.no_moves")));
      return;
    }
    const note = h("textarea", { rows: 2, maxlength: 10000 });
    const resolution = h("textarea", { rows: 2, maxlength: 10000 });
    const who = h("select", {}, [...users.values()].map((u) => h("option", { value: u.id }, `${u.name} · ${t(`role.${u.role}`)}`)));
    if (o.assignee) who.value = String(o.assignee);
    const buttons = moves.map((to) => h("button", {
      type: "button", class: to === "cancelled" ? "danger" : "primary", dataset: { to },
      onclick: () => {
        const extra = { note: note.value.trim() };
        if (to === "assigned") extra.assignee = Number(who.value);
        if (to === "resolved") {
          if (!resolution.value.trim()) {
            toast(t("ops.wo.resolution_needed"), "error");
            resolution.focus();
            return;
          }
          extra.resolution = resolution.value.trim();
        }
        move(to, extra);
      },
    }, moveLabel(o.state, to)));
    replace(act, h("h2", { id: "wo-act-h" }, t("ops.wo.actions")),
      h("div", { class: "form-grid" },
        moves.includes("assigned") ? field("wo-assign-to", t("ops.wo.assign_to"), who) : null,
        moves.includes("resolved") ? field("wo-resolution", t("ops.wo.resolution"), resolution) : null,
        field("wo-move-note", t("ops.wo.note"), note),
        h("div", { class: "actions" }, buttons)));
  }

  async function drawPhotos(o) {
    const list = await api.get(`work-orders/${id}/attachments`);
    if (stopped) return;
    const input = h("input", { type: "file", accept: "image/*", capture: "environment", id: "wo-photo" });
    const status = h("p", { role: "status", class: "muted" });
    input.addEventListener("change", async () => {
      const files = [...input.files];
      for (const file of files) {
        status.textContent = t("ops.wo.uploading", { name: file.name });
        try {
          await upload(id, file);
          status.textContent = t("ops.wo.uploaded", { name: file.name });
        } catch (err) {
          status.textContent = `${t("error.generic")} ${err.message}`;
        }
      }
      input.value = "";
      drawPhotos(order);
    });
    const href = (a) => `/api/v1/work-orders/${id}/attachments/${a.id}`;
    replace(photos, h("h2", { id: "wo-ph-h" }, t("ops.wo.photos")),
      list.length
        ? h("ul", { class: "list thumbs" }, list.map((a) => h("li", { dataset: { attachment: a.id } },
          h("a", { href: href(a), target: "_blank", rel: "noopener" },
            a.content_type.startsWith("image/") ? h("img", { src: href(a), alt: a.filename, loading: "lazy" }) : null,
            a.filename),
          h("span", { class: "muted" }, `${fmtNumber(a.size / 1024, 0)} KB · ${userName(users, a.uploaded_by)} · ${fmtDateTime(a.created_at)}`))))
        : h("p", { class: "empty" }, t("ops.wo.no_photos")),
      mayWork(o) && !["closed", "cancelled"].includes(o.state)
        ? h("div", { class: "field" }, h("label", { for: "wo-photo" }, t("ops.wo.add_photo")), input, status)
        : null);
  }

  function drawParts(o) {
    const canEdit = mayWork(o) && !["closed", "cancelled"].includes(o.state);
    const save = async (list) => {
      try {
        order = await api.request("PATCH", `work-orders/${id}`, { body: { spare_parts: list } });
        toast(t("ops.wo.parts_saved"));
        drawParts(order);
      } catch (err) {
        toast(`${t("error.generic")} ${err.message}`, "error");
      }
    };
    const rows = o.spare_parts.map((p, i) => [p.part, `${fmtNumber(p.qty)} ${p.unit}`,
      canEdit ? h("button", { type: "button", class: "link-button", onclick: () => save(o.spare_parts.filter((_, j) => j !== i)) }, t("ops.remove")) : ""]);
    const part = h("input", { required: true, maxlength: 200 });
    const qty = h("input", { type: "number", min: "0.001", step: "any", required: true, value: "1", inputmode: "decimal" });
    const unit = h("input", { maxlength: 20, value: "pcs", size: 5 });
    replace(parts, h("h2", { id: "wo-sp-h" }, t("ops.wo.spare_parts")),
      table(t("ops.wo.spare_parts"), [t("ops.wo.part"), t("ops.wo.qty"), ""], rows, { empty: t("ops.wo.no_parts") }),
      canEdit ? h("form", { class: "form-inline", onsubmit: (ev) => {
        ev.preventDefault();
        save([...o.spare_parts, { part: part.value.trim(), qty: Number(qty.value), unit: unit.value.trim() || "pcs" }]);
      } }, field("wo-part", t("ops.wo.part"), part), field("wo-qty", t("ops.wo.qty"), qty), field("wo-unit", t("ops.wo.unit"), unit),
      h("button", { type: "submit" }, t("ops.wo.add_part"))) : null);
  }

  async function drawTimeline(o) {
    const notes = await api.all(`work-orders/${id}/notes`, {}, { max: 2000 });
    if (stopped) return;
    const text = h("textarea", { rows: 2, maxlength: 10000, required: true });
    replace(timeline, h("h2", { id: "wo-tl-h" }, t("ops.wo.timeline")),
      notes.length ? h("ol", { class: "timeline" }, notes.map((n) => h("li", { dataset: { kind: n.kind } },
        h("div", { class: "tl-head" },
          h("time", { datetime: n.at }, fmtDateTime(n.at)), " · ",
          h("span", {}, n.author === null ? t("role.system") : userName(users, n.author)),
          n.kind === "transition" ? [" · ", term("ops.wostate", n.from_state), " → ", term("ops.wostate", n.to_state)] : null,
          n.kind === "alarm" && n.alarm_id ? [" · ", h("a", { href: `#/alarms?state=&id=${n.alarm_id}` }, t("ops.wo.alarm_n", { id: n.alarm_id }))] : null),
        n.text ? h("p", {}, n.text) : null)))
        : h("p", { class: "empty" }, t("ops.wo.no_notes")),
      mayWork(o) ? h("form", { class: "form-grid", onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          await api.post(`work-orders/${id}/notes`, { text: text.value.trim() });
          drawTimeline(order);
        } catch (err) {
          toast(`${t("error.generic")} ${err.message}`, "error");
        }
      } }, field("wo-note", t("ops.wo.add_note"), text), h("div", { class: "actions" }, h("button", { type: "submit" }, t("ops.wo.add_note_button")))) : null);
  }

  async function refresh() {
    try {
      order = await api.get(`work-orders/${id}`);
    } catch (err) {
      replace(head, h("h1", {}, t(err.status === 404 ? "notfound.title" : "error.generic")), h("p", { class: "error" }, err.message));
      return;
    }
    if (stopped) return;
    drawHead(order);
    drawRecord(order);
    // A live refresh keeps what is being typed unless the moves change.
    const moves = `${order.state}/${order.assignee}`;
    const movesChanged = moves !== shownMoves;
    if (movesChanged) {
      shownMoves = moves;
      drawActions(order);
    }
    const partsNow = JSON.stringify(order.spare_parts) + order.state;
    if (partsNow !== shownParts) {
      shownParts = partsNow;
      drawParts(order);
    }
    if (order.kind === "inspection" && movesChanged) {
      checklist.hidden = false;
      checklistPanel(checklist, order, { mayRecord: mayWork(order) && ["assigned", "in_progress"].includes(order.state) });
    }
    await Promise.all([drawPhotos(order), drawTimeline(order)]);
  }

  (async () => {
    [users] = await Promise.all([staffUsers(), myId(ctx)]);
    await refresh();
  })();
  const soon = throttle(() => { if (!stopped) refresh(); }, 1500);
  const unsub = live.subscribe("work_order", (ev) => { if (ev.id === id) soon(); });
  return () => {
    stopped = true;
    unsub();
  };
}
