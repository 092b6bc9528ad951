"""A bill as a CSV of its lines and as a printable HTML invoice (pure).

The HTML is one self-contained page (inline CSS, print-friendly, A4), built
with every value escaped by `html.escape`: labels and reasons can be typed by
users. CSV cells that a spreadsheet would run as a formula (= + - @ at the
start of text) are prefixed with an apostrophe; numbers are left as numbers.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from html import escape
from typing import Any
from zoneinfo import ZoneInfo

from gateway.core.tariffs import unit_price

CSV_COLUMNS = (
    "bill_id",
    "bill_kind",
    "tenant_id",
    "month",
    "line",
    "kind",
    "label",
    "lease_id",
    "port_id",
    "slot_id",
    "compartment_id",
    "tariff_id",
    "period",
    "emergency_id",
    "outage_id",
    "quantity",
    "unit",
    "unit_price",
    "amount",
    "estimated",
    "flags",
)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
TITLES = {"invoice": "Invoice", "credit_note": "Credit note"}
KINDS = {
    "energy": "Electricity",
    "rent": "Rent",
    "maintenance": "Maintenance",
    "credit": "Credit",
    "correction": "Correction",
}


@dataclass(frozen=True, slots=True)
class Party:
    """Who issues or receives the invoice: a name and labelled details
    (address, tax id, bank account, contact…), printed in order."""

    name: str
    details: Sequence[tuple[str, str]] = field(default_factory=tuple)


def _text_cell(value: str) -> str:
    return "'" + value if value.startswith(FORMULA_START) else value


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal | int):
        return str(value)
    if isinstance(value, list | tuple):
        return _text_cell(";".join(str(v) for v in value))
    return _text_cell(str(value))


def lines_csv(bill: Mapping[str, Any]) -> str:
    """One row per line of the bill, in order, with the bill's identity on each, then
    a last row of kind `total` with the bill's total amount (and no line number)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for n, ln in enumerate(bill["lines"], start=1):
        head = {
            "bill_id": bill["id"],
            "bill_kind": bill["kind"],
            "tenant_id": bill["tenant_id"],
            "month": bill["month"],
            "line": n,
        }
        shown = {**ln, "unit_price": unit_price(Decimal(ln["unit_price"]))}
        writer.writerow([_cell(head[c] if c in head else shown.get(c)) for c in CSV_COLUMNS])
    total = {
        "bill_id": bill["id"],
        "bill_kind": bill["kind"],
        "tenant_id": bill["tenant_id"],
        "month": bill["month"],
        "kind": "total",
        "label": "Total",
        "amount": Decimal(bill["total_amount"]).quantize(Decimal("0.01")),
    }
    writer.writerow([_cell(total.get(c)) for c in CSV_COLUMNS])
    return out.getvalue()


def _num(value: Decimal, places: str | None = None) -> str:
    if places is not None:
        value = value.quantize(Decimal(places))
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text and places is None else text


def _when(value: datetime | date | None, tz: ZoneInfo) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(tz).strftime("%Y-%m-%d %H:%M")
    return value.isoformat()


def _party(title: str, party: Party) -> str:
    rows = "".join(
        f"<div><span class=k>{escape(k)}</span> {escape(v)}</div>" for k, v in party.details
    )
    return (
        f"<section class=party><h2>{escape(title)}</h2>"
        f"<p class=name>{escape(party.name)}</p>{rows}</section>"
    )


STYLE = """
@page { size: A4; margin: 18mm; }
body { font-family: "Noto Sans", "PingFang SC", "Microsoft YaHei", sans-serif; font-size: 10pt;
       color: #111; max-width: 190mm; margin: 0 auto; }
h1 { font-size: 18pt; margin: 0 0 4mm; }
h2 { font-size: 10pt; text-transform: uppercase; color: #555; margin: 0 0 1mm; }
.parties { display: flex; gap: 10mm; margin: 6mm 0; }
.party { flex: 1; }
.party .name { font-weight: bold; margin: 0 0 1mm; }
.k { color: #555; }
table { width: 100%; border-collapse: collapse; }
th, td { border-bottom: 1px solid #ccc; padding: 1.5mm 1mm; vertical-align: top; }
th { text-align: left; background: #f2f2f2; }
td.n, th.n { text-align: right; white-space: nowrap; }
tfoot td { font-weight: bold; border-bottom: none; }
.meta td { border: none; padding: 0.5mm 4mm 0.5mm 0; }
.state { font-weight: bold; text-transform: uppercase; }
.note { margin-top: 6mm; color: #555; }
"""


# Every word of the printed invoice, per language (zh-CN uses the terms of the
# console's catalogues: 计量与计费, 挂载服务).
LANGS = ("zh-CN", "en")
LABELS: dict[str, dict[str, str]] = {
    "en": {
        "title.invoice": "Invoice",
        "title.credit_note": "Credit note",
        "title.bill": "Bill",
        "no": "{title} no.",
        "month": "Month",
        "period": "Service period",
        "range": "{first} to {last}",
        "state": "State",
        "issued": "Issued",
        "draft": "not issued (draft)",
        "due": "Due date",
        "due_draft": "{days} days after issue",
        "corrects": "Corrects invoice no.",
        "reason": "Reason",
        "paid_on": "Paid on",
        "payment_reference": "Payment reference",
        "voided": "Voided",
        "void_reason": "Void reason",
        "credit_notes": "Corrected by credit notes",
        "from": "From",
        "bill_to": "Bill to",
        "tenant_id": "Tenant id",
        "lines": "Lines",
        "kind": "Kind",
        "description": "Description",
        "quantity": "Quantity",
        "unit_price": "Unit price ({currency})",
        "amount": "Amount ({currency})",
        "total": "Total ({currency})",
        "estimated": "(estimated)",
        "kind.energy": "Electricity",
        "kind.rent": "Rent",
        "kind.maintenance": "Maintenance",
        "kind.credit": "Credit",
        "kind.correction": "Correction",
        "state.draft": "draft",
        "state.issued": "issued",
        "state.paid": "paid",
        "state.void": "void",
        "note": "Amounts are rounded once per line, half up, to 0.01; the total is"
        " the sum of the rounded lines. Credits are for hours a leased port or slot was"
        " unusable.",
    },
    "zh-CN": {
        "title.invoice": "账单",
        "title.credit_note": "贷项通知单",
        "title.bill": "账单",
        "no": "{title}编号",
        "month": "账期",
        "period": "服务期间",
        "range": "{first} 至 {last}",
        "state": "状态",
        "issued": "开具时间",
        "draft": "未开具(草稿)",
        "due": "付款截止日",
        "due_draft": "开具后 {days} 天",
        "corrects": "更正账单编号",
        "reason": "原因",
        "paid_on": "付款日期",
        "payment_reference": "付款凭证号",
        "voided": "作废时间",
        "void_reason": "作废原因",
        "credit_notes": "已由贷项通知单更正",
        "from": "开具方",
        "bill_to": "付款方",
        "tenant_id": "使用单位编号",
        "lines": "明细",
        "kind": "类别",
        "description": "说明",
        "quantity": "数量",
        "unit_price": "单价({currency})",
        "amount": "金额({currency})",
        "total": "合计({currency})",
        "estimated": "(估算)",
        "kind.energy": "电费",
        "kind.rent": "挂载租金",
        "kind.maintenance": "维护费",
        "kind.credit": "扣减",
        "kind.correction": "更正",
        "state.draft": "草稿",
        "state.issued": "已开具",
        "state.paid": "已付款",
        "state.void": "已作废",
        "note": "金额按每行四舍五入到 0.01。合计为各行舍入后金额之和。"
        "扣减用于租约的用电接口或挂载位不可用的时段。",
    },
}


def service_period(month: str) -> tuple[date, date]:
    """The first and last day of a bill's month ("2026-11")."""
    year, mon = (int(x) for x in month.split("-"))
    first = date(year, mon, 1)
    following = date(year + (mon == 12), mon % 12 + 1, 1)
    return first, following - timedelta(days=1)


def due_date(bill: Mapping[str, Any], days: int, tz: ZoneInfo) -> date | None:
    """`days` after the bill was issued (None while it is a draft)."""
    issued = bill.get("issued_at")
    if issued is None:
        return None
    day = issued.astimezone(tz).date() if isinstance(issued, datetime) else issued
    return day + timedelta(days=days)


def invoice_html(
    bill: Mapping[str, Any],
    *,
    issuer: Party,
    tenant: Party,
    tz: ZoneInfo,
    lang: str = "en",
    due_days: int = 30,
) -> str:
    """A printable page in `lang` (en or zh-CN): issuer and tenant, the bill's
    identity, service period, due date and state, every line, the totals by kind,
    and the settlement (paid, void, corrections)."""
    words = LABELS.get(lang, LABELS["en"])

    def w(key: str, **values: object) -> str:
        return words[key].format(**values) if values else words[key]

    title = w(f"title.{bill['kind']}") if f"title.{bill['kind']}" in words else w("title.bill")
    currency = bill["currency"]
    first, last = service_period(bill["month"])
    due = due_date(bill, due_days, tz)
    meta: list[tuple[str, str, str]] = [
        ("", w("no", title=title), str(bill["id"])),
        ("", w("month"), bill["month"]),
        ("", w("period"), w("range", first=first.isoformat(), last=last.isoformat())),
        ("state", w("state"), words.get(f"state.{bill['state']}", bill["state"])),
        ("", w("issued"), _when(bill.get("issued_at"), tz) or w("draft")),
        ("", w("due"), due.isoformat() if due else w("due_draft", days=due_days)),
    ]
    if bill.get("corrects_bill_id") is not None:
        meta.append(("", w("corrects"), str(bill["corrects_bill_id"])))
    if bill.get("reason"):
        meta.append(("", w("reason"), bill["reason"]))
    if bill["state"] == "paid":
        meta.append(("", w("paid_on"), _when(bill.get("paid_on"), tz)))
        meta.append(("", w("payment_reference"), bill.get("payment_reference") or ""))
    if bill["state"] == "void":
        meta.append(("", w("voided"), _when(bill.get("voided_at"), tz)))
        meta.append(("", w("void_reason"), bill.get("void_reason") or ""))
    if bill.get("credit_notes"):
        meta.append(("", w("credit_notes"), ", ".join(map(str, bill["credit_notes"]))))
    meta_rows = "".join(
        f"<tr><td class=k>{escape(k)}</td><td{' class=state' if cls else ''}>{escape(v)}</td></tr>"
        for cls, k, v in meta
    )

    def kind_name(kind: str) -> str:
        return words.get(f"kind.{kind}", kind)

    body = []
    for n, ln in enumerate(bill["lines"], start=1):
        estimated = f" <em>{escape(w('estimated'))}</em>" if ln.get("estimated") else ""
        body.append(
            f"<tr><td class=n>{n}</td><td>{escape(kind_name(ln['kind']))}</td>"
            f"<td>{escape(ln['label'])}{estimated}</td>"
            f"<td class=n>{escape(_num(Decimal(ln['quantity'])))}"
            f" {escape(ln['unit'])}</td>"
            f"<td class=n>{escape(_num(Decimal(ln['unit_price']), '0.0001'))}</td>"
            f"<td class=n>{escape(_num(Decimal(ln['amount']), '0.01'))}</td></tr>"
        )
    totals: list[tuple[str, Decimal]] = []
    for kind in KINDS:
        amounts = [Decimal(ln["amount"]) for ln in bill["lines"] if ln["kind"] == kind]
        if amounts:
            totals.append((kind_name(kind), sum(amounts, Decimal("0.00"))))
    foot = "".join(
        f"<tr><td colspan=5 class=n>{escape(name)}</td>"
        f"<td class=n>{escape(_num(amount, '0.01'))}</td></tr>"
        for name, amount in totals
    )
    total = _num(Decimal(bill["total_amount"]), "0.01")
    foot += (
        f"<tr><td colspan=5 class=n>{escape(w('total', currency=currency))}</td>"
        f"<td class=n>{escape(total)}</td></tr>"
    )
    html_lang = "zh-CN" if lang == "zh-CN" else "en"
    return (
        f"<!DOCTYPE html>\n<html lang={html_lang}><head><meta charset=utf-8>"
        f"<title>{escape(title)} {bill['id']} · {escape(bill['month'])}</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f"<div class=parties>{_party(w('from'), issuer)}{_party(w('bill_to'), tenant)}</div>"
        f"<table class=meta>{meta_rows}</table>"
        f"<h2 style='margin-top:6mm'>{escape(w('lines'))}</h2>"
        f"<table><thead><tr><th class=n>#</th><th>{escape(w('kind'))}</th>"
        f"<th>{escape(w('description'))}</th><th class=n>{escape(w('quantity'))}</th>"
        f"<th class=n>{escape(w('unit_price', currency=currency))}</th>"
        f"<th class=n>{escape(w('amount', currency=currency))}</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody><tfoot>{foot}</tfoot></table>"
        f"<p class=note>{escape(w('note'))}</p>"
        "</body></html>\n"
    )
