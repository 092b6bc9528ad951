"""Issue 16 item 15, end to end: a pole that publishes readings but never a status
message has its devices online in /overview and /devices/{id}; when it stops,
they go offline once their profile's report interval x after_intervals has
passed (shortened here to 2 s)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import orjson
from psycopg_pool import AsyncConnectionPool

from gateway.core.profiles import ProfileCatalog, load_catalog
from gateway.service import run_gateway
from tests.support import POLES, auth_headers, gateway_settings, publish, wait_for_port


def quick_catalog() -> ProfileCatalog:
    """The shipped profiles, with a 1 s report interval and 2 intervals to offline."""
    out = []
    for name, profile in load_catalog().items():
        del name
        section = profile.alarms
        if section is not None and section.offline is not None:
            offline = section.offline.model_copy(update={"interval_s": 1.0, "after_intervals": 2})
            profile = profile.model_copy(
                update={"alarms": section.model_copy(update={"offline": offline})}
            )
        out.append(profile)
    return ProfileCatalog(out)


def reading(pole: str) -> bytes:
    ts = datetime.now(UTC).isoformat()
    return orjson.dumps({"ts": ts, "devices": {f"{pole}-env": {"temp_c": 12.5}}})


async def test_data_without_status_makes_devices_online_and_silence_offline(
    database_url: str, pool: AsyncConnectionPool, mqtt_url: str, topic_prefix: str
) -> None:
    settings = gateway_settings(database_url, mqtt_url, topic_prefix)
    stop, subscribed = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_gateway(settings, stop, catalog=quick_catalog(), subscribed=subscribed)
    )
    pole = POLES[0]
    device = f"{pole}-env"
    headers = auth_headers(database_url)
    api = f"http://127.0.0.1:{settings.api_port}/api/v1"
    try:
        await asyncio.wait_for(subscribed.wait(), 15)
        await wait_for_port(settings.api_port)
        async with httpx.AsyncClient(base_url=api, headers=headers, timeout=5) as http:
            before = (await http.get("/overview")).json()["devices"]
            assert before["online"] == 0
            assert (await http.get(f"/devices/{device}")).json()["state"] == "unknown"

            for _ in range(4):  # readings, no status message
                await asyncio.to_thread(
                    publish, mqtt_url, [(f"{topic_prefix}/{pole}/telemetry", reading(pole))]
                )
                await asyncio.sleep(0.3)
            for _ in range(30):
                detail = (await http.get(f"/devices/{device}")).json()
                if detail["state"] == "online":
                    break
                await asyncio.sleep(0.1)
            assert detail["state"] == "online", detail
            assert detail["pole_presence"] is None  # no status message was ever sent
            devices = (await http.get("/overview")).json()["devices"]
            assert devices["online"] == 1, devices
            assert devices["unknown"] == before["unknown"] - 1

            # Silent from now on: offline 2 s after the last reading (+ the 1 s timer).
            for _ in range(60):
                detail = (await http.get(f"/devices/{device}")).json()
                if detail["state"] == "offline":
                    break
                await asyncio.sleep(0.1)
            assert detail["state"] == "offline", detail
            assert detail["state_detail"] == "no data for 2 s"
            devices = (await http.get("/overview")).json()["devices"]
            assert devices["online"] == 0
            assert devices["offline"] == 1, devices
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
