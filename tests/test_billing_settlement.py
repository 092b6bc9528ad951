"""Bill settlement: draft -> issued -> paid | void, credit notes, the database
keeping issued bills as they were, and the CSV and HTML exports (tenants see
only their own).

Two tenants each lease one slot (type standard, 300 CNY a month on tariff
"plain") all of November 2026: each month's invoice is 300.00.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb
from pydantic import Field

from gateway.config import Settings
from tests.support import add_user, api_client, bearer, count, prepare_database

CST = ZoneInfo("Asia/Shanghai")
TENANT, OTHER = "tn-telecom", "tn-other"
PLAIN = {
    "energy": {"prices": {"flat": "0.5"}},
    "rent": {"slot_types": {"standard": "300"}},
}


class IssuerSettings(Settings):
    """Settings with the operator's invoice details (the setting the lead adds)."""

    invoice_issuer: dict[str, str] = Field(
        default_factory=lambda: {
            "name": "Metro Poles & Co.",
            "address": "1 Renmin Rd, Beijing",
            "tax id": "91110000MA00TEST1X",
        }
    )


@dataclass
class Env:
    url: str
    client: httpx.AsyncClient
    manager: dict[str, str]
    maintainer: dict[str, str]
    tenant: dict[str, str]
    other: dict[str, str]
    lease: int


def local(month: int, day: int, hour: int = 0) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=CST)


def seed(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO tenants (id, name) VALUES (%s, 'Other <b>Co</b>')", (OTHER,))
        conn.execute(
            "INSERT INTO slots (id, pole_id, position, slot_type, max_load_kg,"
            " max_wind_area_m2, max_power_w) VALUES"
            " ('P0001-arm', 'P0001', 'arm', 'standard', 30, 1, 1000),"
            " ('P0002-arm', 'P0002', 'arm', 'standard', 30, 1, 1000)"
        )
        conn.execute(
            "INSERT INTO tariffs (name, version, valid_from, definition)"
            " VALUES ('plain', 1, %s, %s)",
            (local(1, 1), Jsonb(PLAIN)),
        )
        ids = []
        for tenant, pole in ((TENANT, "P0001"), (OTHER, "P0002")):
            row = conn.execute(
                "INSERT INTO leases (tenant_id, pole_id, state, slot_id, rates)"
                " VALUES (%s, %s, 'in_service', %s, %s) RETURNING id",
                (tenant, pole, f"{pole}-arm", Jsonb({"tariff": "plain"})),
            ).fetchone()
            assert row is not None
            ids.append(row[0])
            conn.execute(
                "INSERT INTO lease_history (lease_id, state, since) VALUES (%s, 'in_service', %s)",
                (row[0], local(10, 1)),
            )
    return int(ids[0])


@pytest.fixture(scope="module")
async def env(database_url: str) -> AsyncIterator[Env]:
    await prepare_database(database_url)
    lease = seed(database_url)
    settings = IssuerSettings(database_url=database_url)
    async with api_client(settings, base_url="http://api/api/v1") as client:
        yield Env(
            database_url,
            client,
            bearer(add_user(database_url, "operator")),
            bearer(add_user(database_url, "maintainer")),
            bearer(add_user(database_url, "tenant", tenant=TENANT)),
            bearer(add_user(database_url, "tenant", tenant=OTHER)),
            lease,
        )


async def generate(env: Env) -> dict[str, dict[str, Any]]:
    r = await env.client.post("/bills/generate", json={"month": "2026-11"}, headers=env.manager)
    assert r.status_code == 200, r.text
    return {g["bill"]["tenant_id"]: g for g in r.json()}


async def post(env: Env, path: str, body: Any = None, **kw: Any) -> httpx.Response:
    return await env.client.post(path, json=body, headers=kw.get("headers", env.manager))


def refused(r: httpx.Response, *words: str) -> dict[str, Any]:
    assert r.status_code == 409, r.text
    detail: dict[str, Any] = r.json()["detail"]
    for word in words:
        assert word in detail["msg"], (word, detail)
    return detail


PAY = {"paid_on": "2026-12-10", "reference": "ICBC 8812-0457"}
NOTE = {"reason": "slot out of use for two days", "lines": [{"label": "rent", "amount": "-20.00"}]}


async def test_moves_with_their_refusals(env: Env) -> None:
    generated = await generate(env)
    bill = generated[TENANT]["bill"]
    assert (bill["state"], bill["kind"], bill["total_amount"]) == ("draft", "invoice", "300.00")
    bid = bill["id"]

    # A draft is neither paid, voided nor corrected.
    assert refused(await post(env, f"/bills/{bid}/pay", PAY), "issued")["state"] == "draft"
    refused(await post(env, f"/bills/{bid}/void", {"reason": "x"}), "regenerate")
    refused(await post(env, f"/bills/{bid}/credit-notes", NOTE), "regenerate")
    assert (await post(env, f"/bills/{bid}/pay", PAY, headers=env.tenant)).status_code == 403
    assert (await post(env, "/bills/999999/pay", PAY)).status_code == 404

    r = await post(env, f"/bills/{bid}/issue")
    assert r.status_code == 200, r.text
    assert r.json()["issued_by"].startswith("operator-")
    refused(await post(env, f"/bills/{bid}/issue"), "not a draft")

    # Credit notes: negative lines on leases of the invoice, never above its total.
    r = await post(env, f"/bills/{bid}/credit-notes", NOTE, headers=env.maintainer)
    assert r.status_code == 403
    wrong_lease = {"reason": "x", "lines": [{"label": "x", "amount": "-1", "lease_id": 999999}]}
    r = await post(env, f"/bills/{bid}/credit-notes", wrong_lease)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "lines", 0, "lease_id"]
    positive = {"reason": "x", "lines": [{"label": "x", "amount": "5"}]}
    r = await post(env, f"/bills/{bid}/credit-notes", positive)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"][:3] == ["body", "lines", 0]
    too_much = {"reason": "x", "lines": [{"label": "x", "amount": "-300.01"}]}
    assert refused(await post(env, f"/bills/{bid}/credit-notes", too_much))["at_most"] == "300.00"
    note_body = NOTE | {
        "lines": [
            {"label": "rent, 2 days", "amount": "-20.00", "lease_id": env.lease},
            {"label": "goodwill", "amount": "-0.55"},
        ]
    }
    r = await post(env, f"/bills/{bid}/credit-notes", note_body)
    assert r.status_code == 201, r.text
    note = r.json()
    assert (note["kind"], note["state"], note["corrects_bill_id"]) == ("credit_note", "issued", bid)
    assert (note["tenant_id"], note["month"], note["total_amount"]) == (TENANT, "2026-11", "-20.55")
    assert note["reason"] == NOTE["reason"]
    assert [ln["kind"] for ln in note["lines"]] == ["correction", "correction"]
    r = await env.client.get(f"/bills/{bid}", headers=env.tenant)
    assert r.json()["credit_notes"] == [note["id"]]
    # At most 300.00 - 20.55 more.
    rest = {"reason": "x", "lines": [{"label": "x", "amount": "-279.46"}]}
    assert refused(await post(env, f"/bills/{bid}/credit-notes", rest))["at_most"] == "279.45"
    refused(await post(env, f"/bills/{note['id']}/credit-notes", NOTE), "not another credit note")

    # Voiding: an invoice with a live credit note is refused; void the note first.
    detail = refused(await post(env, f"/bills/{bid}/void", {"reason": "wrong tenant"}))
    assert detail["credit_notes"] == [note["id"]]
    r = await post(env, f"/bills/{note['id']}/void", {"reason": "superseded"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "void"
    r = await post(env, f"/bills/{bid}/void", {"reason": "wrong tenant"})
    assert r.status_code == 200, r.text
    voided = r.json()
    assert (voided["state"], voided["void_reason"]) == ("void", "wrong tenant")
    assert voided["voided_by"].startswith("operator-")
    assert voided["voided_at"]
    refused(await post(env, f"/bills/{bid}/void", {"reason": "again"}), "void already")
    refused(await post(env, f"/bills/{bid}/pay", PAY), "void")
    refused(await post(env, f"/bills/{bid}/credit-notes", NOTE), "void")
    r = await post(env, f"/bills/{bid}/void", {"reason": ""})
    assert r.status_code == 422

    # The month of a void invoice is generated anew; the void one stays as it was.
    again = await generate(env)
    assert again[TENANT]["outcome"] == "created"
    new_id = again[TENANT]["bill"]["id"]
    assert new_id != bid
    assert (await env.client.get(f"/bills/{bid}", headers=env.manager)).json() == voided | {
        "credit_notes": [note["id"]]
    }
    assert (await post(env, f"/bills/{new_id}/issue")).status_code == 200
    r = await post(env, f"/bills/{new_id}/pay", PAY)
    assert r.status_code == 200, r.text
    paid = r.json()
    assert (paid["state"], paid["paid_on"], paid["payment_reference"]) == (
        "paid",
        "2026-12-10",
        "ICBC 8812-0457",
    )
    assert paid["paid_by"].startswith("operator-")
    assert paid["paid_at"]
    refused(await post(env, f"/bills/{new_id}/pay", PAY), "paid")
    refused(await post(env, f"/bills/{new_id}/void", {"reason": "x"}), "credit note")
    # A paid invoice is corrected with a credit note.
    r = await post(env, f"/bills/{new_id}/credit-notes", NOTE)
    assert r.status_code == 201, r.text
    r = await post(env, f"/bills/{new_id}/pay", {"paid_on": "12/10/2026", "reference": "x"})
    assert r.status_code == 422

    r = await env.client.get("/bills?kind=credit_note", headers=env.tenant)
    assert [b["state"] for b in r.json()["items"]] == ["void", "issued"]
    assert (await env.client.get("/bills?state=paid", headers=env.other)).json()["items"] == []
    audited = (
        "SELECT count(*) FROM audit_log WHERE resource = 'bill'"
        " AND action IN ('issue', 'pay', 'void', 'credit_note')"
    )
    assert count(env.url, audited) == 7  # 2 issues, 1 payment, 2 voids, 2 credit notes


async def test_the_database_keeps_issued_bills_as_issued(env: Env) -> None:
    paid = count(env.url, "SELECT id FROM bills WHERE state = 'paid'")
    issued = count(env.url, "SELECT id FROM bills WHERE state = 'issued' ORDER BY id LIMIT 1")
    draft = count(env.url, "SELECT id FROM bills WHERE state = 'draft'")  # tn-other's
    forbidden = [
        ("UPDATE bills SET total_amount = 1 WHERE id = %s", paid),
        ("UPDATE bills SET total_amount = 1 WHERE id = %s", issued),
        ("UPDATE bills SET state = 'issued' WHERE id = %s", paid),
        (
            "UPDATE bills SET state = 'void', void_reason = 'x', voided_at = now() WHERE id = %s",
            paid,
        ),
        ("UPDATE bills SET state = 'draft' WHERE id = %s", issued),
        (
            "UPDATE bills SET state = 'paid', paid_on = now(), paid_at = now(),"
            " payment_reference = 'x', total_amount = 0 WHERE id = %s",
            issued,
        ),
        ("DELETE FROM bills WHERE id = %s", issued),
        ("UPDATE bill_lines SET amount = amount - 1 WHERE bill_id = %s", paid),
        ("DELETE FROM bill_lines WHERE bill_id = %s", issued),
        (
            "INSERT INTO bill_lines (bill_id, kind, label, quantity, unit, unit_price, amount)"
            " VALUES (%s, 'rent', 'extra', 1, 'day', 1, 1)",
            issued,
        ),
        (
            "UPDATE bills SET state = 'paid', paid_on = now(), paid_at = now(),"
            " payment_reference = 'x' WHERE id = %s",
            draft,
        ),
    ]
    for sql, bill_id in forbidden:
        with psycopg.connect(env.url) as conn, pytest.raises(psycopg.errors.CheckViolation) as e:
            conn.execute(sql, (bill_id,))
        assert e.value.diag.constraint_name in (
            "bills_issued_immutable",
            "bill_lines_issued_immutable",
        )
    # What is allowed: the settlement of an issued bill, and anything on a draft.
    with psycopg.connect(env.url) as conn:
        conn.execute(
            "UPDATE bills SET state = 'paid', paid_on = now(), paid_at = now(),"
            " payment_reference = 'bank' WHERE id = %s",
            (issued,),
        )
        conn.execute("UPDATE bill_lines SET label = label WHERE bill_id = %s", (draft,))
        conn.rollback()
    # A paid bill without its payment's details is refused by a check.
    with psycopg.connect(env.url) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE bills SET state = 'paid' WHERE id = %s", (issued,))


async def test_csv_and_html_exports_for_the_tenant_only(env: Env) -> None:
    (paid,) = (await env.client.get("/bills?state=paid", headers=env.tenant)).json()["items"]
    bid = paid["id"]
    r = await post(
        env,
        f"/bills/{bid}/credit-notes",
        {
            "reason": "<script>alert('x')</script>",
            "lines": [{"label": '=HYPERLINK("http://evil")', "amount": "-1.00"}],
        },
    )
    assert r.status_code == 201, r.text
    note = r.json()

    r = await env.client.get(f"/bills/{bid}/lines.csv", headers=env.tenant)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    assert f"invoice-{bid}-2026-11.csv" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [(x["kind"], x["quantity"], x["unit_price"], x["amount"]) for x in rows] == [
        ("rent", "30", "10.0000", "300.00"),  # a unit price to 4 decimals (issue 16)
        ("total", "", "", "300.00"),  # the last row: the bill's total (issue 16, item 18)
    ]
    assert (rows[-1]["line"], rows[-1]["label"], rows[-1]["bill_id"]) == ("", "Total", str(bid))
    assert rows[0]["bill_id"] == str(bid)
    assert rows[0]["tenant_id"] == TENANT
    r = await env.client.get(f"/bills/{note['id']}/lines.csv", headers=env.tenant)
    row, total = list(csv.DictReader(io.StringIO(r.text)))
    assert (total["kind"], total["amount"]) == ("total", "-1.00")
    assert row["label"] == '\'=HYPERLINK("http://evil")'  # not a formula in a spreadsheet
    assert row["amount"] == "-1.00"  # numbers stay numbers

    r = await env.client.get(f"/bills/{bid}/invoice.html", headers=env.tenant)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    page = r.text
    for text in (
        "Metro Poles &amp; Co.",
        "1 Renmin Rd, Beijing",
        "91110000MA00TEST1X",
        "City Telecom",
        TENANT,
        "300.00",
        "ICBC 8812-0457",
        "2026-11",
    ):
        assert text in page, text
    r = await env.client.get(f"/bills/{note['id']}/invoice.html", headers=env.tenant)
    assert "<script>" not in r.text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in r.text
    assert "Credit note" in r.text
    assert "Corrects invoice no." in r.text

    (theirs,) = (await env.client.get("/bills", headers=env.other)).json()["items"]
    r = await env.client.get(f"/bills/{theirs['id']}/invoice.html", headers=env.other)
    assert "Other &lt;b&gt;Co&lt;/b&gt;" in r.text
    for path in ("lines.csv", "invoice.html"):
        for bill_id in (bid, note["id"]):
            r = await env.client.get(f"/bills/{bill_id}/{path}", headers=env.other)
            assert r.status_code == 404, path
            assert "not found" in r.json()["detail"]
        r = await env.client.get(f"/bills/{theirs['id']}/{path}", headers=env.tenant)
        assert r.status_code == 404
        r = await env.client.get(f"/bills/{bid}/{path}", headers=env.maintainer)
        assert r.status_code == 200
