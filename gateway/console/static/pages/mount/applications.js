// 受理申请和审核: the queue of mounting applications by state, and one application
// with its equipment, the capacity review per pole (what fits, what does not, with
// the figures), the moves the caller's role may make, and its timeline.

import * as api from "../../api.js";
import { h, replace, table, toast } from "../../dom.js";
import { fmtDate, fmtDateTime, fmtNumber, t, term } from "../../i18n.js";
import { crumbs, errorBox, failed, field, page, stacked, stateBadge } from "./common.js";

// The queue's order: what waits for the operator first.
export const ORDER = ["submitted", "accepted", "under_review", "returned", "approved", "rejected", "withdrawn"];
const UNIT = {
  slot_load: "kg", pole_load: "kg", slot_wind_area: "m²", pole_wind_area: "m²",
  slot_power: "W", pole_power: "W", port_power: "W", cabinet_space: "U",
};
const NOT_OVERRIDABLE = new Set(["slot_free", "port_free"]);

function devicesSummary(a) {
  return a.devices.map((d) => `${d.quantity} × ${d.type}${d.model ? ` ${d.model}` : ""}`).join(", ");
}

export const list = {
  render(main, ctx) {
    const only = ctx.query.get("state") || "";
    const filter = h("select", { id: "mount-app-state" },
      h("option", { value: "" }, t("mount.app.all_states")),
      ORDER.map((s) => h("option", { value: s }, term("mount.appstate", s))));
    filter.value = only;
    filter.addEventListener("change", () => ctx.navigate(filter.value ? `#/mount/applications?state=${filter.value}` : "#/mount/applications"));
    const box = h("div", { id: "mount-app-list", "aria-live": "polite" }, h("p", { class: "muted" }, t("app.loading")));
    page(main, t("mount.nav.applications"),
      h("h1", {}, t("mount.nav.applications")),
      h("div", { class: "filters" }, h("label", { for: "mount-app-state" }, t("mount.app.state")), filter),
      box);
    (async () => {
      try {
        const items = await api.all("applications", only ? { state: only } : {});
        const groups = ORDER.filter((s) => !only || s === only).map((s) => [s, items.filter((a) => a.state === s)]);
        replace(box, groups.filter(([s, rows]) => rows.length || s === "submitted" || s === only).map(([s, rows]) =>
          h("section", { class: "mount-group", dataset: { state: s }, "aria-label": term("mount.appstate", s) },
            h("h2", {}, stateBadge("mount.appstate", s), " ", h("span", { class: "count" }, `(${rows.length})`)),
            table(term("mount.appstate", s),
              [t("mount.app.id"), t("lease.tenant"), t("mount.app.kind"), t("mount.app.poles"), t("mount.app.equipment"), t("mount.app.updated")],
              rows.map((a) => [
                h("a", { href: `#/mount/applications/${a.id}` }, t("mount.app.title", { id: a.id })),
                a.tenant_id, term("mount.appkind", a.kind), a.poles.map((p) => p.pole_id).join(", "),
                devicesSummary(a), fmtDateTime(a.updated_at)]),
              { empty: t("mount.app.none") }))));
      } catch (err) {
        errorBox(box, err);
      }
    })();
    return null;
  },
};

function equipment(a) {
  return [
    h("h2", {}, t("mount.app.equipment")),
    stacked(table(t("mount.app.equipment"),
      [t("mount.dev.type"), t("mount.dev.model"), t("mount.dev.quantity"), t("mount.dev.weight"), t("mount.dev.dimensions"), t("mount.dev.wind_area"), t("mount.dev.power")],
      a.devices.map((d) => [d.type, d.model || "—", String(d.quantity), `${fmtNumber(d.weight_kg)} kg`,
        d.dimensions ? `${fmtNumber(d.dimensions.width_mm)} × ${fmtNumber(d.dimensions.height_mm)} × ${fmtNumber(d.dimensions.depth_mm)} mm` : "—",
        `${fmtNumber(d.wind_area_m2 ?? 0)} m²`, `${fmtNumber(d.power_w ?? 0)} W`]))),
    h("dl", { class: "record" },
      h("dt", {}, t("mount.app.supply")), h("dd", {}, `${a.supply}${a.voltage_v ? ` ${fmtNumber(a.voltage_v)} V` : ""}`),
      h("dt", {}, t("mount.app.height")), h("dd", {}, a.height_m === null ? "—" : `${fmtNumber(a.height_m)} m`),
      h("dt", {}, t("mount.app.cabinet_units")), h("dd", {}, String(a.cabinet_units)),
      h("dt", {}, t("mount.app.fibre_cores")), h("dd", {}, String(a.fibre_cores)),
      h("dt", {}, t("mount.app.bandwidth")), h("dd", {}, a.bandwidth_mbps === null ? "—" : `${fmtNumber(a.bandwidth_mbps)} Mbit/s`),
      h("dt", {}, t("mount.app.term")), h("dd", {}, `${fmtDate(a.term_start)} – ${fmtDate(a.term_end)}`),
      h("dt", {}, t("mount.app.poles")), h("dd", {}, a.poles.map((p) => `${p.pole_id}${p.slots && p.slots.length ? ` (${p.slots.join(", ")})` : ""}`).join("; ")),
      a.description ? [h("dt", {}, t("mount.app.description")), h("dd", {}, a.description)] : null,
      a.attachments.length ? [h("dt", {}, t("mount.app.attachments")), h("dd", {}, a.attachments.map((f, i) => [i ? ", " : "", h("a", { href: f.url, rel: "noopener noreferrer", target: "_blank" }, f.name)]))] : null,
      a.reasons && a.reasons.length ? [h("dt", {}, t("mount.app.reasons")), h("dd", { id: "mount-app-reasons" }, a.reasons.join("; "))] : null),
  ];
}

function verdict(c) {
  if (c.ok) return h("span", { class: "badge mount-fit", dataset: { verdict: "fits" } }, h("span", { class: "glyph", "aria-hidden": "true" }, "✓"), " ", t("mount.check.fits"));
  if (c.overridden) return h("span", { class: "badge mount-waived", dataset: { verdict: "waived" } }, h("span", { class: "glyph", "aria-hidden": "true" }, "⚑"), " ", t("mount.check.waived"));
  return h("span", { class: "badge mount-nofit", dataset: { verdict: "does_not_fit" } }, h("span", { class: "glyph", "aria-hidden": "true" }, "✗"), " ", t("mount.check.does_not_fit"));
}

function figure(v, name) {
  if (v === null || v === undefined) return "—";
  return UNIT[name] ? `${fmtNumber(v)} ${UNIT[name]}` : fmtNumber(v);
}

function reviewSection(app, review, ctx, reload) {
  const canWaive = ctx.staff && ["accepted", "under_review"].includes(app.state);
  return [
    h("h2", { id: "mount-review-h" }, t("mount.review.title")),
    h("p", { id: "mount-review-verdict", class: review.approvable ? "ok" : "error" },
      review.approvable ? t("mount.review.all_fit") : t("mount.review.some_fail")),
    review.poles.map((p) => h("section", { class: "panel mount-pole", dataset: { pole: p.pole_id }, "aria-labelledby": `mount-pole-${p.pole_id}` },
      h("h3", { id: `mount-pole-${p.pole_id}` }, t("mount.review.pole", { pole: p.pole_id }), " ",
        p.approvable ? verdict({ ok: true }) : verdict({ ok: false })),
      h("p", { class: "muted" }, t("mount.review.assignment", {
        slot: p.assignment.slot_id || "—", compartment: p.assignment.compartment_id || "—", port: p.assignment.port_id || "—",
      })),
      stacked(table(t("mount.review.pole", { pole: p.pole_id }),
        [t("mount.review.check"), t("mount.review.needed"), t("mount.review.available"), t("mount.review.verdict"), t("mount.review.detail")],
        p.checks.map((c) => {
          const row = [term("mount.check", c.name), figure(c.needed, c.name), figure(c.available, c.name), verdict(c),
            h("span", {}, h("span", { lang: "en" }, c.message), c.overridden ? ` — ${t("mount.review.waived_because", { reason: c.overridden.reason, at: fmtDateTime(c.overridden.at) })}` : "")];
          if (canWaive && !c.ok && !c.overridden && !NOT_OVERRIDABLE.has(c.name)) {
            const reason = h("input", { type: "text", maxlength: 2000, required: true });
            row[4].append(h("form", { class: "inline-form", onsubmit: async (ev) => {
              ev.preventDefault();
              try {
                await api.post(`applications/${app.id}/overrides`, { pole_id: p.pole_id, check: c.name, reason: reason.value.trim() });
                toast(t("mount.review.waived_done"));
                reload();
              } catch (err) {
                failed(err);
              }
            } }, field(t("mount.review.waive_reason", { check: term("mount.check", c.name) }), reason),
            h("button", { type: "submit" }, t("mount.review.waive"))));
          }
          return row;
        }))))),
  ];
}

async function move(app, to, body, reload) {
  try {
    await api.post(`applications/${app.id}/transitions`, { to, ...body });
    toast(t("mount.app.moved", { state: term("mount.appstate", to) }));
    reload();
  } catch (err) {
    failed(err);
  }
}

function reasonForm(id, label, button, onSend) {
  const text = h("textarea", { id, rows: 2, maxlength: 2000, required: true });
  return h("form", { class: "mount-action", onsubmit: (ev) => { ev.preventDefault(); if (text.value.trim()) onSend(text.value.trim()); } },
    field(label, text), h("button", { type: "submit" }, button));
}

function actions(app, ctx, tariffs, reload) {
  if (!ctx.staff) return null;
  const out = [];
  if (app.state === "submitted") {
    out.push(h("button", { type: "button", class: "primary", onclick: () => move(app, "accepted", { note: "" }, reload) }, t("mount.act.accept")));
    out.push(reasonForm("mount-return-reason", t("mount.act.return_question"), t("mount.act.return"),
      (q) => move(app, "returned", { reasons: [q] }, reload)));
  }
  if (app.state === "accepted") {
    out.push(h("button", { type: "button", class: "primary", onclick: () => move(app, "under_review", { note: "" }, reload) }, t("mount.act.start_review")));
  }
  if (app.state === "under_review") {
    if (ctx.manager) {
      const note = h("textarea", { id: "mount-approve-note", rows: 2, maxlength: 10000 });
      const tariff = h("select", { id: "mount-approve-tariff" }, h("option", { value: "" }, t("mount.act.tariff_default")),
        tariffs.map((n) => h("option", { value: n }, n)));
      out.push(h("form", { class: "mount-action", onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          const done = await api.post(`applications/${app.id}/approve`, {
            note: note.value.trim(), rates: tariff.value ? { tariff: tariff.value } : null,
          });
          toast(t("mount.act.approved", { leases: done.lease_ids.join(", ") }));
          reload();
        } catch (err) {
          failed(err);
        }
      } }, field(t("mount.act.tariff"), tariff), field(t("mount.act.note"), note),
      h("button", { type: "submit", class: "primary" }, t("mount.act.approve"))));
    }
    out.push(reasonForm("mount-reject-reason", t("mount.act.reject_reason"), t("mount.act.reject"),
      (r) => move(app, "rejected", { reasons: [r] }, reload)));
  }
  if (!out.length) return null;
  return [h("h2", {}, t("mount.act.title")), h("div", { class: "mount-actions" }, out)];
}

function timeline(history) {
  return [
    h("h2", {}, t("mount.app.timeline")),
    h("ol", { class: "timeline", id: "mount-app-timeline" }, history.map((e) => h("li", {},
      h("time", { datetime: e.at }, fmtDateTime(e.at)), " ",
      e.to_state ? stateBadge("mount.appstate", e.to_state) : h("span", {}, term("mount.note", e.note) ),
      e.by !== null ? h("span", { class: "muted" }, ` ${t("mount.app.by_user", { id: e.by })}`) : null,
      e.reasons && e.reasons.length ? h("span", {}, ` — ${e.reasons.join("; ")}`) : null,
      e.note && e.to_state && e.note !== "submitted" ? h("span", { class: "muted" }, ` — ${e.note}`) : null))),
  ];
}

export const one = {
  render(main, ctx, id) {
    const box = h("div", { id: "mount-app" }, h("p", { class: "muted" }, t("app.loading")));
    page(main, t("mount.app.title", { id }),
      crumbs([t("mount.nav.applications"), "#/mount/applications"], t("mount.app.title", { id })), box);
    let stopped = false;
    async function load() {
      try {
        const [app, review, history, tariffs] = await Promise.all([
          api.get(`applications/${id}`), api.get(`applications/${id}/review`), api.get(`applications/${id}/history`),
          ctx.manager ? api.all("tariffs").then((ts) => [...new Set(ts.map((x) => x.name))]) : Promise.resolve([]),
        ]);
        if (stopped) return;
        const leases = app.decision && app.decision.lease_ids ? app.decision.lease_ids : [];
        replace(box,
          h("h1", {}, t("mount.app.title", { id: app.id }), " ", h("span", { id: "mount-app-state" }, stateBadge("mount.appstate", app.state))),
          h("p", {}, `${t("lease.tenant")}: ${app.tenant_id} · ${term("mount.appkind", app.kind)}`,
            app.lease_id ? [" · ", h("a", { href: `#/mount/leases/${app.lease_id}` }, t("mount.lease.title", { id: app.lease_id }))] : null),
          leases.length ? h("p", { id: "mount-app-leases" }, t("mount.app.leases"), " ",
            leases.map((l, i) => [i ? ", " : "", h("a", { href: `#/mount/leases/${l}` }, t("mount.lease.title", { id: l }))])) : null,
          actions(app, ctx, tariffs, load),
          equipment(app),
          reviewSection(app, review, ctx, load),
          timeline(history));
      } catch (err) {
        errorBox(box, err);
      }
    }
    load();
    return () => { stopped = true; };
  },
};
