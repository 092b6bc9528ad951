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
from datetime import date, datetime
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


def invoice_html(bill: Mapping[str, Any], *, issuer: Party, tenant: Party, tz: ZoneInfo) -> str:
    """A printable page: issuer and tenant, the bill's identity and state, every
    line, the totals by kind, and the settlement (paid, void, corrections)."""
    title = TITLES.get(bill["kind"], "Bill")
    currency = escape(bill["currency"])
    meta: list[tuple[str, str]] = [
        (f"{title} no.", str(bill["id"])),
        ("Month", bill["month"]),
        ("State", bill["state"]),
        ("Issued", _when(bill.get("issued_at"), tz) or "not issued (draft)"),
    ]
    if bill.get("corrects_bill_id") is not None:
        meta.append(("Corrects invoice no.", str(bill["corrects_bill_id"])))
    if bill.get("reason"):
        meta.append(("Reason", bill["reason"]))
    if bill["state"] == "paid":
        meta.append(("Paid on", _when(bill.get("paid_on"), tz)))
        meta.append(("Payment reference", bill.get("payment_reference") or ""))
    if bill["state"] == "void":
        meta.append(("Voided", _when(bill.get("voided_at"), tz)))
        meta.append(("Void reason", bill.get("void_reason") or ""))
    if bill.get("credit_notes"):
        meta.append(("Corrected by credit notes", ", ".join(map(str, bill["credit_notes"]))))
    meta_rows = "".join(
        f"<tr><td class=k>{escape(k)}</td><td{' class=state' if k == 'State' else ''}>"
        f"{escape(v)}</td></tr>"
        for k, v in meta
    )
    body = []
    for n, ln in enumerate(bill["lines"], start=1):
        label = escape(ln["label"]) + (" <em>(estimated)</em>" if ln.get("estimated") else "")
        body.append(
            f"<tr><td class=n>{n}</td><td>{escape(KINDS.get(ln['kind'], ln['kind']))}</td>"
            f"<td>{label}</td><td class=n>{escape(_num(Decimal(ln['quantity'])))}"
            f" {escape(ln['unit'])}</td>"
            f"<td class=n>{escape(_num(Decimal(ln['unit_price']), '0.0001'))}</td>"
            f"<td class=n>{escape(_num(Decimal(ln['amount']), '0.01'))}</td></tr>"
        )
    totals: list[tuple[str, Decimal]] = []
    for kind in KINDS:
        amounts = [Decimal(ln["amount"]) for ln in bill["lines"] if ln["kind"] == kind]
        if amounts:
            totals.append((KINDS[kind], sum(amounts, Decimal("0.00"))))
    foot = "".join(
        f"<tr><td colspan=5 class=n>{escape(name)}</td>"
        f"<td class=n>{escape(_num(amount, '0.01'))}</td></tr>"
        for name, amount in totals
    )
    total = _num(Decimal(bill["total_amount"]), "0.01")
    foot += (
        f"<tr><td colspan=5 class=n>Total ({currency})</td><td class=n>{escape(total)}</td></tr>"
    )
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)} {bill['id']} · {escape(bill['month'])}</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f"<div class=parties>{_party('From', issuer)}{_party('Bill to', tenant)}</div>"
        f"<table class=meta>{meta_rows}</table>"
        "<h2 style='margin-top:6mm'>Lines</h2>"
        "<table><thead><tr><th class=n>#</th><th>Kind</th><th>Description</th>"
        f"<th class=n>Quantity</th><th class=n>Unit price ({currency})</th>"
        f"<th class=n>Amount ({currency})</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody><tfoot>{foot}</tfoot></table>"
        "<p class=note>Amounts are rounded once per line, half up, to 0.01; the total is"
        " the sum of the rounded lines. Credits are for hours a leased port or slot was"
        " unusable.</p>"
        "</body></html>\n"
    )
