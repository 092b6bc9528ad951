// 计量与计费, one bill: its lines, its totals and state, the printable invoice in
// the reader's language (opened with the browser session) and the CSV of its lines.

import * as api from "../../api.js";
import { h, replace, table } from "../../dom.js";
import { fmtDate, fmtDateTime, fmtMoney, fmtNumber, language, t, term } from "../../i18n.js";
import { frame, load } from "./common.js";

export function documents(b) {
  return h("span", { class: "links" },
    h("a", { href: `/api/v1/bills/${b.id}/invoice.html?lang=${encodeURIComponent(language())}`, target: "_blank", rel: "noopener" }, t("bill.invoice")), " · ",
    h("a", { href: `/api/v1/bills/${b.id}/lines.csv`, download: "" }, t("bill.csv")));
}

export const detail = {
  render(main, ctx, id) {
    const box = h("div", { id: "bill-detail" }, h("p", { class: "muted" }, t("app.loading")));
    frame(main, t("portal.bill.title", { id }), box);
    load(main, box, async () => {
      const b = await api.get(`bills/${encodeURIComponent(id)}`);
      replace(box,
        h("dl", { class: "record" },
          h("dt", {}, t("bill.kind")), h("dd", {}, term("billkind", b.kind)),
          ctx.staff ? [h("dt", {}, t("lease.tenant")), h("dd", {}, b.tenant_id)] : null,
          h("dt", {}, t("bill.month")), h("dd", {}, b.month),
          h("dt", {}, t("bill.state")), h("dd", { id: "bill-state" }, term("billstate", b.state)),
          h("dt", {}, t("portal.bill.issued")), h("dd", {}, b.issued_at ? fmtDateTime(b.issued_at) : t("portal.bill.not_issued")),
          b.paid_on ? [h("dt", {}, t("portal.bill.paid_on")), h("dd", {}, fmtDate(b.paid_on))] : null,
          b.corrects_bill_id ? [h("dt", {}, t("portal.bill.corrects")), h("dd", {}, h("a", { href: `#/bills/${b.corrects_bill_id}` }, t("portal.bill.link", { id: b.corrects_bill_id })))] : null,
          b.reason ? [h("dt", {}, t("portal.bill.reason")), h("dd", {}, b.reason)] : null,
          b.credit_notes.length ? [h("dt", {}, t("portal.bill.credit_notes")), h("dd", {}, b.credit_notes.map((n, i) => [i ? ", " : "", h("a", { href: `#/bills/${n}` }, t("portal.bill.link", { id: n }))]))] : null,
          h("dt", {}, t("bill.energy")), h("dd", {}, `${fmtNumber(Number(b.energy_kwh), 2)} kWh · ${fmtMoney(b.energy_amount, b.currency)}`),
          h("dt", {}, t("portal.bill.rent")), h("dd", {}, fmtMoney(b.rent_amount, b.currency)),
          h("dt", {}, t("portal.bill.maintenance")), h("dd", {}, fmtMoney(b.maintenance_amount, b.currency)),
          h("dt", {}, t("portal.bill.credit")), h("dd", {}, fmtMoney(b.credit_amount, b.currency)),
          h("dt", {}, t("bill.total")), h("dd", { id: "bill-total" }, h("strong", {}, fmtMoney(b.total_amount, b.currency))),
          h("dt", {}, t("bill.documents")), h("dd", {}, documents(b))),
        h("h2", {}, t("portal.bill.lines")),
        table(t("portal.bill.lines"),
          ["#", t("bill.kind"), t("portal.bill.label"), t("portal.bill.quantity"), t("portal.bill.unit_price"), t("portal.bill.amount")],
          b.lines.map((ln, i) => [String(i + 1), term("portal.linekind", ln.kind),
            [ln.label, ln.estimated ? h("em", {}, ` ${t("portal.bill.estimated")}`) : null,
              ln.flags.length ? h("span", { class: "muted" }, ` · ${ln.flags.map((f) => term("portal.flag", f)).join(", ")}`) : null],
            `${fmtNumber(Number(ln.quantity))} ${ln.unit}`, fmtNumber(Number(ln.unit_price), 4), fmtMoney(ln.amount, b.currency)]),
          { empty: t("portal.bill.no_lines") }));
    });
    return null;
  },
};
