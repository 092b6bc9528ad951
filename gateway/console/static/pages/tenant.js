// 挂载服务, the lists of leases and bills. A tenant sees its own (the API filters
// by the caller's tenant), each opening the portal's page of the lease or bill;
// staff see every tenant's.

import * as api from "../api.js";
import { h, replace, table } from "../dom.js";
import { fmtDate, fmtDateTime, fmtMoney, fmtNumber, t, term } from "../i18n.js";
import { documents } from "./portal/bills.js";
import { tenantLeases } from "./portal/leases.js";

function page(main, titleKey, ...body) {
  document.title = `${t(titleKey)} · polegw`;
  replace(main, h("section", { class: "page" }, h("h1", {}, t(titleKey)), ...body));
}

export const leases = {
  render(main, ctx) {
    const box = h("div", { id: "lease-list" }, h("p", { class: "muted" }, t("app.loading")));
    if (!ctx.staff) {
      page(main, "nav.leases", box);
      tenantLeases(main, box);
      return null;
    }
    page(main, "nav.leases", box);
    (async () => {
      try {
        const items = await api.all("leases");
        replace(box, table(t("nav.leases"),
          [t("lease.id"), t("lease.tenant"), t("lease.pole"), t("lease.state"), t("lease.slot"), t("lease.port"), t("lease.power"), t("lease.starts_on"), t("lease.ends_on"), t("lease.port_state")],
          items.map((l) => [String(l.id), l.tenant_id,
            h("a", { href: `#/poles/${encodeURIComponent(l.pole_id)}` }, l.pole_id),
            term("leasestate", l.state), l.slot_id || "—", l.port_id || "—", `${fmtNumber(l.power_w)} W`,
            fmtDate(l.starts_on), fmtDate(l.ends_on),
            l.port_switch ? `${term("bool", String(l.port_switch.on))} · ${fmtDateTime(l.port_switch.at)}` : "—"]),
          { empty: t("lease.none") }));
      } catch (err) {
        replace(box, h("p", { class: "error" }, err.message));
      }
    })();
    return null;
  },
};

export const bills = {
  render(main, ctx) {
    const box = h("div", { id: "bill-list" }, h("p", { class: "muted" }, t("app.loading")));
    page(main, "nav.bills", box);
    (async () => {
      try {
        const items = await api.all("bills");
        replace(box, table(t("nav.bills"),
          [t("bill.id"), ...(ctx.staff ? [t("lease.tenant")] : []), t("bill.month"), t("bill.kind"), t("bill.state"), t("bill.energy"), t("bill.total"), t("bill.documents")],
          items.map((b) => [h("a", { href: `#/bills/${b.id}` }, t("portal.bill.link", { id: b.id })), ...(ctx.staff ? [b.tenant_id] : []), b.month, term("billkind", b.kind), term("billstate", b.state),
            `${fmtNumber(Number(b.energy_kwh), 2)} kWh`, fmtMoney(b.total_amount, b.currency), documents(b)]),
          { empty: t("bill.none") }));
      } catch (err) {
        replace(box, h("p", { class: "error" }, err.message));
      }
    })();
    return null;
  },
};
