"""The printable invoice in both languages (issue 13): every label of the page in
the language asked for, the service period and the due date, and the language
chosen from `lang` or Accept-Language."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.api.routes.billing import invoice_language
from gateway.core import invoice

TZ = ZoneInfo("Asia/Shanghai")


def bill(**extra: Any) -> dict[str, Any]:
    return {
        "id": 7,
        "kind": "invoice",
        "tenant_id": "tn-a",
        "month": "2026-02",
        "state": "issued",
        "currency": "CNY",
        "issued_at": datetime(2026, 3, 1, 1, 0, tzinfo=UTC),
        "total_amount": Decimal("312.50"),
        "lines": [
            {"kind": "rent", "label": "slot P1-top", "quantity": "28", "unit": "day",
             "unit_price": "10", "amount": "280.00", "estimated": False},
            {"kind": "energy", "label": "port P1-p1 peak", "quantity": "65", "unit": "kWh",
             "unit_price": "0.5", "amount": "32.50", "estimated": True},
        ],
        **extra,
    }  # fmt: skip


def page(lang: str, **extra: Any) -> str:
    return invoice.invoice_html(
        bill(**extra),
        issuer=invoice.Party("Metro Poles", (("address", "1 Renmin Rd"),)),
        tenant=invoice.Party("A Telecom", ((invoice.LABELS[lang]["tenant_id"], "tn-a"),)),
        tz=TZ,
        lang=lang,
        due_days=15,
    )


def test_the_invoice_reads_in_chinese() -> None:
    html = page("zh-CN")
    for text in (
        "<html lang=zh-CN>",
        "账单",
        "服务期间",
        "2026-02-01 至 2026-02-28",
        "付款截止日",
        "2026-03-16",
        "开具方",
        "付款方",
        "使用单位编号",
        "挂载租金",
        "电费",
        "(估算)",
        "合计(CNY)",
        "312.50",
        "已开具",
        "Metro Poles",
    ):
        assert text in html, text  # fmt: skip
    for english in ("Invoice", "Due date", "Bill to", "Rent", "Electricity", "Total"):
        assert english not in html, english


def test_the_invoice_reads_in_english_with_period_and_due_date() -> None:
    html = page("en")
    for text in (
        "<html lang=en>",
        "Invoice no.",
        "Service period",
        "2026-02-01 to 2026-02-28",
        "Due date",
        "2026-03-16",
        "From",
        "Bill to",
        "Tenant id",
        "Rent",
        "Electricity",
        "(estimated)",
        "Total (CNY)",
        "issued",
    ):
        assert text in html, text  # fmt: skip
    assert "账单" not in html
    draft = page("en", state="draft", issued_at=None)
    assert "not issued (draft)" in draft
    assert "15 days after issue" in draft


def test_the_service_period_of_december_ends_with_the_year() -> None:
    first, last = invoice.service_period("2026-12")
    assert (first.isoformat(), last.isoformat()) == ("2026-12-01", "2026-12-31")


@pytest.mark.parametrize(
    ("lang", "header", "chosen"),
    [
        ("en", "zh-CN,zh;q=0.9", "en"),
        ("zh-CN", None, "zh-CN"),
        (None, "zh-CN,zh;q=0.9,en;q=0.8", "zh-CN"),
        (None, "en-GB,en;q=0.9", "en"),
        (None, "fr-FR,en;q=0.5,zh;q=0.8", "zh-CN"),
        (None, "fr-FR", "en"),
        (None, None, "en"),
        (None, "zh;q=bad,en", "en"),
    ],
)
def test_the_language_comes_from_lang_then_accept_language(
    lang: str | None, header: str | None, chosen: str
) -> None:
    assert invoice_language(lang, header) == chosen
