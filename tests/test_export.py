"""CSV exports: streamed from a server-side stream, header and rows, range bound enforced."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from psycopg import sql

from gateway.api.routes.export import CHUNK_BYTES, _rows_as_csv
from gateway.config import Settings
from tests.support import api_client, auth_headers, opened_pool, prepare_database

T0 = datetime(2026, 11, 20, 0, tzinfo=UTC)
MINUTES = 2 * 24 * 60  # two days of one-minute readings


@pytest.fixture(scope="module")
async def api(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    await prepare_database(database_url)
    copy_sql = "COPY telemetry (ts, device_id, metric, value, quality) FROM STDIN"
    with psycopg.connect(database_url) as conn, conn.cursor().copy(copy_sql) as copy:
        for minute in range(MINUTES):
            ts = T0 + timedelta(minutes=minute)
            copy.write_row((ts, "P0001-lamp", "power_w", float(minute % 100), 0))
            copy.write_row((ts, "P0001-lamp", "lamp_on", float(minute % 2), 0))
            copy.write_row((ts, "P0002-env", "pm25_ugm3", 35.5, 1))
    # Every export of this module comes from one user in quick succession: the
    # per-user limit (tests/test_api_hardening.py) is off here.
    settings = Settings(database_url=database_url, export_max_range_d=2, api_expensive_per_min=0)
    async with api_client(settings, headers=auth_headers(database_url, "maintainer")) as client:
        yield client


def rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


async def test_telemetry_csv_header_and_rows(api: httpx.AsyncClient) -> None:
    params = {"start": "2026-11-20T00:00:00Z", "end": "2026-11-21T00:00:00Z"}
    r = await api.get("/api/v1/export/telemetry.csv", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert "telemetry_20261120T000000Z_20261121T000000Z.csv" in r.headers["content-disposition"]
    assert r.text.endswith("\n")
    table = rows(r.text)
    assert table[0] == ["ts", "device_id", "metric", "value", "quality"]
    assert len(table) == 1 + 3 * 24 * 60  # the end is exclusive
    # Ordered by device, metric, time.
    assert table[1] == ["2026-11-20T00:00:00+00:00", "P0001-lamp", "lamp_on", "0.0", "0"]
    assert table[-1] == ["2026-11-20T23:59:00+00:00", "P0002-env", "pm25_ugm3", "35.5", "1"]


async def test_telemetry_csv_filters(api: httpx.AsyncClient) -> None:
    params = {
        "start": "2026-11-20T01:00:00Z",
        "end": "2026-11-20T02:00:00Z",
        "device": "P0001-lamp",
        "metric": "power_w",
    }
    table = rows((await api.get("/api/v1/export/telemetry.csv", params=params)).text)
    assert len(table) == 61
    assert {(row[1], row[2]) for row in table[1:]} == {("P0001-lamp", "power_w")}
    assert [float(row[3]) for row in table[1:4]] == [60.0, 61.0, 62.0]
    empty = rows(
        (await api.get("/api/v1/export/telemetry.csv", params={**params, "device": "x"})).text
    )
    assert empty == [["ts", "device_id", "metric", "value", "quality"]]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": "2026-11-17T00:00:00Z", "end": "2026-11-20T00:00:00Z"}, "start"),  # 3 days
        ({"start": "2026-11-21T00:00:00Z", "end": "2026-11-20T00:00:00Z"}, "start"),
        ({"start": "2026-11-20T00:00:00"}, "start"),  # no offset
        ({"end": "yesterday"}, "end"),
    ],
)
async def test_telemetry_range_is_bounded(
    api: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    r = await api.get("/api/v1/export/telemetry.csv", params=params)
    assert r.status_code == 422, r.text
    assert any(e["loc"][-1] == field for e in r.json()["detail"]), r.json()


async def test_exports_are_for_staff(api: httpx.AsyncClient, database_url: str) -> None:
    tenant = auth_headers(database_url, "tenant", tenant="tn-telecom")
    for path in ("telemetry.csv", "alarms.csv", "work-orders.csv"):
        r = await api.get(f"/api/v1/export/{path}", headers=tenant)
        assert r.status_code == 403, path
        assert (
            await api.get(f"/api/v1/export/{path}", headers={"Authorization": ""})
        ).status_code in (401, 403)


async def test_streamed_in_bounded_chunks(api: httpx.AsyncClient, database_url: str) -> None:
    """The body comes as a series of chunks of about CHUNK_BYTES, not as one string."""
    async with opened_pool(database_url) as pool:
        query = sql.SQL("SELECT ts, device_id, metric, value FROM telemetry ORDER BY 2, 3, 1")
        chunks = [c async for c in _rows_as_csv(pool, query, (), header=("a", "b", "c", "d"))]
    assert len(chunks) >= 5
    assert max(len(c.encode()) for c in chunks) < CHUNK_BYTES + 200
    assert sum(c.count("\n") for c in chunks) == 1 + 3 * MINUTES
    # And through the API, the response streams (httpx reads it in parts).
    params = {"start": "2026-11-20T00:00:00Z", "end": "2026-11-22T00:00:00Z"}
    async with api.stream("GET", "/api/v1/export/telemetry.csv", params=params) as r:
        assert r.status_code == 200
        lines = 0
        async for text in r.aiter_text():
            lines += text.count("\n")
    assert lines == 1 + 3 * MINUTES


SEED = {
    "alarms": "INSERT INTO alarms (rule_key, fault, severity, pole_id, device_id, first_seen,"
    " last_seen, message) VALUES ('lamp-controller/lamp_failure', 'lamp_failure', 'major',"
    " 'P0001', 'P0001-lamp', %(at)s, %(at)s, 'lamp, \"failed\"'),"
    " ('lamp-controller/x', 'x', 'minor', 'P0001', 'P0001-lamp', %(old)s, %(old)s, '')",
    "work_orders": "INSERT INTO work_orders (title, pole_id, priority, created_at) VALUES"
    " ('Replace lamp, \"arm A\"', 'P0001', 'general', %(at)s),"
    " ('old', 'P0001', 'general', %(old)s)",
}


@pytest.mark.parametrize(
    ("path", "table"), [("alarms.csv", "alarms"), ("work-orders.csv", "work_orders")]
)
async def test_record_exports(
    api: httpx.AsyncClient, database_url: str, path: str, table: str
) -> None:
    with psycopg.connect(database_url) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() != (None,)
        if exists:
            at, old = T0 + timedelta(hours=1), T0 - timedelta(days=400)
            conn.execute(SEED[table], {"at": at, "old": old})
    params = {"start": "2026-11-20T00:00:00Z", "end": "2026-11-21T00:00:00Z"}
    r = await api.get(f"/api/v1/export/{path}", params=params)
    if not exists:
        assert r.status_code == 503
        assert table in r.json()["detail"]
        return
    assert r.status_code == 200, r.text
    table_rows = rows(r.text)
    header = table_rows[0]
    assert header[0] == "id"
    assert len(table_rows) == 2  # the old one is outside the range
    record = dict(zip(header, table_rows[1], strict=True))
    text = record["message"] if table == "alarms" else record["title"]
    assert text.endswith('"arm A"') or text.endswith('"failed"')  # quoted and read back
    assert record["created_at" if table == "work_orders" else "first_seen"].startswith(
        "2026-11-20T01:00:00"
    )
    r = await api.get(f"/api/v1/export/{path}", params={"start": "2025-01-01T00:00:00Z"})
    assert r.status_code == 422
