// 计量与计费: a month's bill run (generate the drafts, then the totals per tenant) and
// one bill with its lines; managers issue, void, record the payment and write credit
// notes; the invoice and the CSV of the lines are a link away.

import * as api from "../../api.js";
import { h, replace, table, toast } from "../../dom.js";
import { fmtDate, fmtDateTime, fmtMoney, fmtNumber, t, term } from "../../i18n.js";
import { crumbs, errorBox, failed, field, page, showFieldErrors, siteZone, stacked, stateBadge } from "./common.js";

const cents = (x) => Math.round(Number(x) * 100);

// Per tenant: its bills of the month that count (void ones do not) and their sum.
export function totalsByTenant(bills) {
  const out = new Map();
  for (const b of bills) {
    if (!out.has(b.tenant_id)) out.set(b.tenant_id, { tenant: b.tenant_id, bills: [], cents: 0 });
    const row = out.get(b.tenant_id);
    row.bills.push(b);
    if (b.state !== "void") row.cents += cents(b.total_amount);
  }
  return [...out.values()].sort((a, b) => a.tenant.localeCompare(b.tenant));
}

function lastMonth(tz) {
  const parts = Object.fromEntries(new Intl.DateTimeFormat("en-US", { timeZone: tz, year: "numeric", month: "2-digit" })
    .formatToParts(new Date()).map((p) => [p.type, p.value]));
  let y = Number(parts.year);
  let m = Number(parts.month) - 1;
  if (m === 0) { y -= 1; m = 12; }
  return `${y}-${String(m).padStart(2, "0")}`;
}

function docs(b) {
  return h("span", { class: "links" },
    h("a", { href: `/api/v1/bills/${b.id}/invoice.html`, target: "_blank", rel: "noopener" }, t("bill.invoice")), " · ",
    h("a", { href: `/api/v1/bills/${b.id}/lines.csv`, download: "" }, t("bill.csv")));
}

// The last run's outcome, shown again when the page is redrawn for its month.
let lastRun = null;

function runOutcome(box, done) {
  replace(box, h("p", { class: "ok" }, t("mount.bill.generated", { n: done.length }), " ",
    done.map((g, i) => [i ? "; " : "", `${g.bill.tenant_id}: ${term("mount.outcome", g.outcome)}`])));
}

export const run = {
  render(main, ctx) {
    const month = h("input", { id: "mount-run-month", type: "month", required: true, value: ctx.query.get("month") || lastMonth(siteZone(ctx)) });
    const outcome = h("div", { id: "mount-run-outcome", "aria-live": "polite" });
    const box = h("div", { id: "mount-run" }, h("p", { class: "muted" }, t("app.loading")));
    const general = h("div");
    // A month not yet over is billed only as a provisional draft, which cannot be issued.
    const provisional = h("input", { type: "checkbox", id: "mount-run-provisional" });
    const form = h("form", { class: "filters", onsubmit: (ev) => { ev.preventDefault(); ctx.navigate(`#/mount/bills?month=${month.value}`); } },
      field(t("bill.month"), month, { loc: "month" }),
      h("button", { type: "submit" }, t("mount.bill.show")),
      ctx.manager ? [
        h("label", { class: "check", for: "mount-run-provisional" }, provisional, ` ${t("mount.bill.provisional")}`),
        h("button", { type: "button", class: "primary", id: "mount-generate", onclick: generate }, t("mount.bill.generate")),
      ] : null,
      general);
    page(main, t("mount.nav.bills"), h("h1", {}, t("mount.nav.bills")), form, outcome, box);

    async function generate() {
      try {
        const done = await api.post("bills/generate", { month: month.value, provisional: provisional.checked });
        lastRun = { month: month.value, done };
        runOutcome(outcome, done);
        if (ctx.query.get("month") !== month.value) ctx.navigate(`#/mount/bills?month=${month.value}`);
        else load();
      } catch (err) {
        showFieldErrors(form, err, general);
      }
    }
    if (lastRun && lastRun.month === month.value) runOutcome(outcome, lastRun.done);
    async function load() {
      try {
        const items = await api.all("bills", { month: month.value });
        const totals = totalsByTenant(items);
        replace(box,
          h("h2", {}, t("mount.bill.totals", { month: month.value })),
          table(t("mount.bill.totals", { month: month.value }),
            [t("lease.tenant"), t("mount.bill.count"), t("bill.state"), t("bill.total")],
            totals.map((r) => [r.tenant, String(r.bills.length),
              h("span", {}, r.bills.map((b, i) => [i ? " " : "", stateBadge("billstate", b.state)])),
              h("span", { class: "mount-total", dataset: { tenant: r.tenant, total: (r.cents / 100).toFixed(2) } }, fmtMoney(r.cents / 100))]),
            { empty: t("mount.bill.none_month") }),
          h("h2", {}, t("mount.bill.bills")),
          stacked(table(t("mount.bill.bills"),
            [t("bill.id"), t("lease.tenant"), t("bill.kind"), t("bill.state"), t("bill.energy"), t("bill.total"), t("bill.documents")],
            items.map((b) => [h("a", { href: `#/mount/bills/${b.id}` }, t("mount.bill.title", { id: b.id })), b.tenant_id,
              term("billkind", b.kind), stateBadge("billstate", b.state), `${fmtNumber(Number(b.energy_kwh), 2)} kWh`,
              fmtMoney(b.total_amount, b.currency), docs(b)]),
            { empty: t("mount.bill.none_month") })));
      } catch (err) {
        errorBox(box, err);
      }
    }
    load();
    return null;
  },
};

function actionForm(id, title, fields, button, send) {
  const general = h("div");
  const form = h("form", { class: "panel mount-action", id, "aria-label": title, onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      await send();
    } catch (err) {
      showFieldErrors(form, err, general);
    }
  } }, h("h3", {}, title), fields, general, h("button", { type: "submit" }, button));
  return form;
}

function actions(b, ctx, reload) {
  if (!ctx.manager) return null;
  const out = [];
  if (b.state === "draft") {
    out.push(h("button", { type: "button", class: "primary", onclick: async () => {
      try {
        await api.post(`bills/${b.id}/issue`);
        toast(t("mount.bill.issued_done", { id: b.id }));
        reload();
      } catch (err) {
        failed(err);
      }
    } }, t("mount.bill.issue")));
  }
  if (b.state === "issued") {
    const paidOn = h("input", { type: "date", required: true });
    const ref = h("input", { type: "text", required: true, maxlength: 200 });
    out.push(actionForm("mount-pay", t("mount.bill.pay_title"),
      [field(t("mount.bill.paid_on"), paidOn, { loc: "paid_on" }), field(t("mount.bill.reference"), ref, { loc: "reference" })],
      t("mount.bill.pay"), async () => {
        await api.post(`bills/${b.id}/pay`, { paid_on: paidOn.value || null, reference: ref.value.trim() });
        toast(t("mount.bill.paid_done", { id: b.id }));
        reload();
      }));
    const why = h("input", { type: "text", required: true, maxlength: 1000 });
    out.push(actionForm("mount-void", t("mount.bill.void_title"), [field(t("mount.bill.reason"), why, { loc: "reason" })],
      t("mount.bill.void"), async () => {
        await api.post(`bills/${b.id}/void`, { reason: why.value.trim() });
        toast(t("mount.bill.voided_done", { id: b.id }));
        reload();
      }));
  }
  if (b.kind === "invoice" && (b.state === "issued" || b.state === "paid")) {
    const why = h("input", { type: "text", required: true, maxlength: 1000 });
    const label = h("input", { type: "text", required: true, maxlength: 500 });
    const amount = h("input", { type: "number", step: "0.01", max: "-0.01", required: true });
    out.push(actionForm("mount-credit", t("mount.bill.credit_title"),
      [field(t("mount.bill.reason"), why, { loc: "reason" }), field(t("mount.bill.line_label"), label, { loc: "lines.0.label" }),
        field(t("mount.bill.line_amount"), amount, { loc: "lines.0.amount", hint: t("mount.bill.line_amount_hint") })],
      t("mount.bill.credit"), async () => {
        const note = await api.post(`bills/${b.id}/credit-notes`, { reason: why.value.trim(), lines: [{ label: label.value.trim(), amount: amount.value || null }] });
        toast(t("mount.bill.credited_done", { id: note.id }));
        ctx.navigate(`#/mount/bills/${note.id}`);
      }));
  }
  return out.length ? [h("h2", {}, t("mount.act.title")), h("div", { class: "mount-actions" }, out)] : null;
}

export const one = {
  render(main, ctx, id) {
    const box = h("div", { id: "mount-bill" }, h("p", { class: "muted" }, t("app.loading")));
    page(main, t("mount.bill.title", { id }), crumbs([t("mount.nav.bills"), "#/mount/bills"], t("mount.bill.title", { id })), box);
    async function load() {
      try {
        const b = await api.get(`bills/${id}`);
        replace(box,
          h("h1", {}, t("mount.bill.title", { id: b.id }), " ", h("span", { id: "mount-bill-state" }, stateBadge("billstate", b.state)), " ", term("billkind", b.kind)),
          h("p", {}, h("a", { href: `#/mount/bills?month=${b.month}` }, t("mount.bill.back_to_run", { month: b.month })), " · ", docs(b)),
          h("dl", { class: "record" },
            h("dt", {}, t("lease.tenant")), h("dd", {}, b.tenant_id),
            h("dt", {}, t("bill.month")), h("dd", {}, b.month),
            h("dt", {}, t("mount.bill.generated_at")), h("dd", {}, fmtDateTime(b.generated_at)),
            b.issued_at ? [h("dt", {}, t("mount.bill.issued_at")), h("dd", {}, `${fmtDateTime(b.issued_at)} · ${b.issued_by}`)] : null,
            b.paid_on ? [h("dt", {}, t("mount.bill.paid_on")), h("dd", {}, `${fmtDate(b.paid_on)} · ${b.payment_reference}`)] : null,
            b.voided_at ? [h("dt", {}, t("mount.bill.voided_at")), h("dd", {}, `${fmtDateTime(b.voided_at)} · ${b.voided_by} — ${b.void_reason}`)] : null,
            b.corrects_bill_id ? [h("dt", {}, t("mount.bill.corrects")), h("dd", {}, h("a", { href: `#/mount/bills/${b.corrects_bill_id}` }, t("mount.bill.title", { id: b.corrects_bill_id })), b.reason ? ` — ${b.reason}` : "")] : null,
            b.credit_notes.length ? [h("dt", {}, t("mount.bill.credit_notes")), h("dd", {}, b.credit_notes.map((n, i) => [i ? ", " : "", h("a", { href: `#/mount/bills/${n}` }, t("mount.bill.title", { id: n }))]))] : null,
            h("dt", {}, t("bill.energy")), h("dd", {}, `${fmtNumber(Number(b.energy_kwh), 2)} kWh · ${fmtMoney(b.energy_amount, b.currency)}`),
            h("dt", {}, t("mount.bill.rent")), h("dd", {}, fmtMoney(b.rent_amount, b.currency)),
            h("dt", {}, t("mount.bill.maintenance")), h("dd", {}, fmtMoney(b.maintenance_amount, b.currency)),
            h("dt", {}, t("mount.bill.credits")), h("dd", {}, fmtMoney(b.credit_amount, b.currency)),
            h("dt", {}, t("bill.total")), h("dd", { id: "mount-bill-total" }, fmtMoney(b.total_amount, b.currency))),
          actions(b, ctx, load),
          h("h2", {}, t("mount.bill.lines")),
          stacked(table(t("mount.bill.lines"),
            [t("mount.bill.line_kind"), t("mount.bill.line_label"), t("mount.bill.quantity"), t("mount.bill.unit_price"), t("mount.bill.amount")],
            b.lines.map((l) => [term("mount.linekind", l.kind), h("span", {}, l.label, l.estimated ? h("span", { class: "badge" }, ` ${t("mount.bill.estimated")}`) : null),
              `${fmtNumber(Number(l.quantity))} ${l.unit}`, fmtNumber(Number(l.unit_price), 4), fmtMoney(l.amount, b.currency)]),
            { empty: t("mount.bill.no_lines") })));
      } catch (err) {
        errorBox(box, err);
      }
    }
    load();
    return null;
  },
};
