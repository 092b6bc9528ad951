// A device as a card: its state in words, each metric's latest value with its
// unit and age, and the commands it accepts as controls whose tracked state
// (pending → sent → succeeded | failed | timed_out) updates live.

import * as api from "./api.js";
import { h, replace, toast } from "./dom.js";
import { fmtAge, fmtDateTime, fmtNumber, metricLabel, t, term } from "./i18n.js";

const DEVICE_GLYPH = { online: "●", offline: "×", unknown: "?" };

export function deviceStateBadge(state, since) {
  return h("span", { class: `badge dev-${state}`, title: since ? fmtDateTime(since) : null },
    h("span", { class: "glyph", "aria-hidden": "true" }, DEVICE_GLYPH[state] || "?"), " ", term("devstate", state),
    since ? h("span", { class: "muted" }, " ", t("device.since", { age: fmtAge(since) })) : null);
}

export function formatValue(name, value) {
  // A switch reads on/off; any other yes/no state (door open, water) reads yes/no.
  if (typeof value === "boolean") return term(/(^|_)on$/.test(name) ? "bool" : "yesno", String(value));
  return fmtNumber(value);
}

export function valuesTable(detail, latest) {
  if (!Object.keys(detail.metrics).length) return h("p", { class: "muted" }, t("device.events_only"));
  const rows = Object.entries(detail.metrics).map(([name, spec]) => {
    const v = latest.values[name];
    return h("tr", { dataset: { metric: name } },
      h("th", { scope: "row" }, metricLabel(name)),
      h("td", { class: "num" }, v ? formatValue(name, v.value) : "—", " ", v && spec.unit ? h("span", { class: "unit" }, spec.unit) : null,
        v && v.quality ? h("span", { class: "badge warn", title: t("device.quality_hint") }, " ", t("device.quality_flag")) : null),
      h("td", { class: "muted", title: v ? fmtDateTime(v.ts, { seconds: true }) : null }, v ? fmtAge(v.ts) : t("device.no_value")));
  });
  return h("div", { class: "table-wrap" }, h("table", { class: "values" },
    h("caption", { class: "visually-hidden" }, t("device.values_of", { id: detail.id })),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, t("device.metric")), h("th", { scope: "col" }, t("device.value")), h("th", { scope: "col" }, t("device.age")))),
    h("tbody", {}, rows)));
}

// Controls for the device's commands. `track(id, el)` lets the page update the
// state element when a `command` event arrives.
export function commandControls(detail, track, { canSend }) {
  if (!canSend || !Object.keys(detail.commands || {}).length) return null;
  const forms = Object.entries(detail.commands).map(([name, cmd]) => {
    const inputs = Object.entries(cmd.args).map(([arg, spec]) => {
      const id = `cmd-${detail.id}-${name}-${arg}`;
      const label = h("label", { for: id }, term("arg", arg));
      let input;
      if (spec.type === "bool") {
        input = h("select", { id, name: arg }, h("option", { value: "true" }, term("bool", "true")), h("option", { value: "false" }, term("bool", "false")));
      } else {
        input = h("input", { id, name: arg, type: "number", required: true, inputmode: "decimal",
          min: spec.min ?? null, max: spec.max ?? null, step: spec.type === "integer" ? 1 : "any",
          value: spec.min ?? "" });
      }
      return h("span", { class: "arg" }, label, input);
    });
    const status = h("span", { class: "cmd-state", role: "status", "aria-live": "polite" });
    const button = h("button", { type: "submit" }, term("command", name));
    const form = h("form", { class: "command", dataset: { command: name } }, inputs, button, status);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const args = {};
      for (const [arg, spec] of Object.entries(cmd.args)) {
        const raw = form.elements[arg].value;
        args[arg] = spec.type === "bool" ? raw === "true" : Number(raw);
      }
      button.disabled = true;
      try {
        const rec = await api.post(`devices/${encodeURIComponent(detail.id)}/commands`, { command: name, args });
        showCommandState(status, rec);
        track(rec.id, status);
      } catch (err) {
        status.dataset.state = "failed";
        status.textContent = `${t("command.refused")}: ${err.message}`;
        toast(`${t("command.refused")}: ${err.message}`, "error");
      } finally {
        button.disabled = false;
      }
    });
    return form;
  });
  return h("div", { class: "commands" }, h("h4", {}, t("device.commands")), forms);
}

export function showCommandState(el, rec) {
  el.dataset.state = rec.state;
  el.dataset.commandId = rec.id;
  replace(el, h("span", { class: `badge cmd-${rec.state}` }, term("cmdstate", rec.state)),
    rec.error ? h("span", { class: "muted" }, ` ${rec.error}`) : null);
}

// Follow a command until it ends: live events say when to look, and a slow poll
// covers a missed event.
export function commandTracker() {
  const watched = new Map();
  async function refresh(deviceId, id) {
    const el = watched.get(id);
    if (!el) return;
    try {
      const rec = await api.get(`devices/${encodeURIComponent(deviceId)}/commands/${id}`);
      showCommandState(el, rec);
      if (["succeeded", "failed", "timed_out"].includes(rec.state)) {
        watched.delete(id);
        const done = el._onDone;
        if (done) {
          done(rec);
          // The value a write changed is stored by the device's next reading.
          setTimeout(() => done(rec), 2500);
        }
      }
    } catch {
      /* try again at the next event or tick */
    }
  }
  return {
    // track(deviceId, onDone) -> (commandId, statusElement) => void
    track(deviceId, onDone) {
      return (id, el) => {
        watched.set(id, el);
        el.dataset.device = deviceId;
        el._onDone = onDone;
      };
    },
    onEvent(ev) {
      const el = watched.get(ev.id);
      if (!el) return;
      showCommandState(el, { id: ev.id, state: ev.state, error: null });
      refresh(el.dataset.device, ev.id);
    },
    poll() {
      for (const [id, el] of watched) refresh(el.dataset.device, id);
    },
  };
}
