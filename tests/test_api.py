"""The read API against a real database: shapes, paging, ranges, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from gateway.api.app import create_app
from gateway.config import Settings
from gateway.service import open_pool
from tests.support import api_client, api_context, auth_headers, prepare_database

T0 = datetime(2026, 11, 22, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
async def api(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    await prepare_database(database_url)
    copy_sql = "COPY telemetry (ts, device_id, metric, value) FROM STDIN"
    with psycopg.connect(database_url) as conn, conn.cursor().copy(copy_sql) as copy:
        for minute in range(24 * 60):  # one day of 1-minute power and lamp state
            ts = T0 + timedelta(minutes=minute)
            copy.write_row((ts, "P0001-lamp", "power_w", float(minute % 100)))
            copy.write_row((ts, "P0001-lamp", "lamp_on", float(minute < 360)))
    settings = Settings(database_url=database_url, api_max_raw_range_h=48)
    headers = auth_headers(database_url, "operator")
    async with api_client(settings, headers=headers) as client:
        yield client


async def test_health_ready_metrics_openapi(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "mqtt": "ok"}
    assert "polegw_readings_stored_total" in (await api.get("/metrics")).text
    paths = (await api.get("/openapi.json")).json()["paths"]
    assert "/api/v1/devices/{device_id}/telemetry" in paths


async def test_poles_are_paged(api: httpx.AsyncClient) -> None:
    first = (await api.get("/api/v1/poles", params={"limit": 2})).json()
    assert [p["id"] for p in first["items"]] == ["P0001", "P0002"]
    second = (await api.get("/api/v1/poles", params={"limit": 2, "after": first["next"]})).json()
    assert [p["id"] for p in second["items"]] == ["P0003"]
    assert second["next"] is None


async def test_devices_of_a_pole_and_detail(api: httpx.AsyncClient) -> None:
    page = (await api.get("/api/v1/devices", params={"pole": "P0002"})).json()
    assert {d["id"] for d in page["items"]} == {"P0002-lamp", "P0002-env", "P0002-cab"}
    detail = (await api.get("/api/v1/devices/P0001-lamp")).json()
    assert detail["metrics"]["power_w"]["unit"] == "W"
    assert detail["last_seen"] == "2026-11-22T23:59:00Z"


async def test_latest_renders_booleans(api: httpx.AsyncClient) -> None:
    values = (await api.get("/api/v1/devices/P0001-lamp/latest")).json()["values"]
    assert values["lamp_on"]["value"] is False
    assert values["power_w"] == {
        "value": 39.0,
        "ts": "2026-11-22T23:59:00Z",
        "unit": "W",
        "quality": 0,
    }


async def test_raw_points_page_through_a_day(api: httpx.AsyncClient) -> None:
    params = {"metric": "power_w", "start": "2026-11-22T00:00:00Z", "end": "2026-11-23T00:00:00Z"}
    seen, after = 0, None
    while True:
        r = await api.get(
            "/api/v1/devices/P0001-lamp/telemetry",
            params={**params, "limit": 500, **({"after": after} if after else {})},
        )
        body = r.json()
        seen += len(body["points"])
        after = body["next"]
        if after is None:
            break
    assert seen == 24 * 60


async def test_buckets(api: httpx.AsyncClient) -> None:
    r = await api.get(
        "/api/v1/devices/P0001-lamp/telemetry",
        params={
            "metric": "power_w",
            "start": "2026-11-22T00:00:00Z",
            "end": "2026-11-22T03:00:00Z",
            "bucket": "1h",
        },
    )
    buckets = r.json()["buckets"]
    assert [b["samples"] for b in buckets] == [60, 60, 60]
    # minutes 60..119 carry 60..99 then 0..19
    assert (buckets[1]["min"], buckets[1]["max"], buckets[1]["last"]) == (0, 99, 19)


@pytest.mark.parametrize(
    ("path", "params", "status", "field"),
    [
        ("/api/v1/poles/NOPE", {}, 404, None),
        ("/api/v1/devices/NOPE", {}, 404, None),
        ("/api/v1/devices/NOPE/latest", {}, 404, None),
        ("/api/v1/devices/NOPE/telemetry", {"metric": "x"}, 404, None),
        ("/api/v1/devices/P0001-lamp/telemetry", {}, 422, "metric"),
        ("/api/v1/devices/P0001-lamp/telemetry", {"metric": "nope"}, 422, "metric"),
        (
            "/api/v1/devices/P0001-lamp/telemetry",
            {"metric": "power_w", "bucket": "5 minutes"},
            422,
            "bucket",
        ),
        (
            "/api/v1/devices/P0001-lamp/telemetry",
            {"metric": "power_w", "start": "2026-11-22T00:00:00"},
            422,
            "start",
        ),
        (
            "/api/v1/devices/P0001-lamp/telemetry",
            {"metric": "power_w", "start": "2026-11-23T00:00:00Z", "end": "2026-11-22T00:00:00Z"},
            422,
            "start",
        ),
        (
            "/api/v1/devices/P0001-lamp/telemetry",
            {"metric": "power_w", "start": "2026-01-01T00:00:00Z", "end": "2026-11-22T00:00:00Z"},
            422,
            "start",
        ),
        ("/api/v1/poles", {"limit": 0}, 422, "limit"),
        (
            "/api/v1/devices/P0001-lamp/telemetry",
            {"metric": "power_w", "start": "2026-01-01T00:00:00Z", "bucket": "1s"},
            422,
            "bucket",
        ),
    ],
)
async def test_errors_are_json_and_name_the_field(
    api: httpx.AsyncClient, path: str, params: dict[str, str], status: int, field: str | None
) -> None:
    r = await api.get(path, params=params)
    assert r.status_code == status, r.text
    body = r.json()
    if field is None:
        assert "not found" in body["detail"]
    else:
        assert any(err["loc"][-1] == field for err in body["detail"]), body


async def test_readiness_reports_a_dead_database() -> None:
    settings = Settings(database_url="postgresql://postgres@127.0.0.1:1/none")
    pool = open_pool(settings.database_url or "")
    await pool.open(wait=False)
    try:
        ctx = api_context(settings, pool, mqtt_connected=lambda: False)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(ctx)), base_url="http://api"
        ) as c:
            r = await c.get("/readyz")
    finally:
        await pool.close()
    assert r.status_code == 503
    assert r.json()["checks"]["mqtt"] == "disconnected"
    assert r.json()["checks"]["database"].startswith("unreachable")
