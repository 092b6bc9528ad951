"""Emergencies end to end through `run_gateway`: an SOS event over MQTT raises an
alarm, the alarm opens an emergency with its timeline, and the protective action
(lamps to full) is issued as tracked device commands; water in a cabinet opens a
flooding emergency that also cuts the tenant ports."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import psycopg

from gateway.core.site import SiteSpec
from tests.support import gateway, gateway_settings, poles_with, prepare_database, publish


def site() -> SiteSpec:
    return poles_with(
        ("P0001", "P0002"),
        sos="sos-button",
        lamp="lamp-controller",
        ports="port-meter-4",
        cab="cabinet-monitor",
    )


def event(prefix: str, pole: str, device: str, kind: str) -> tuple[str, bytes]:
    ts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    body = {"ts": ts, "device": device, "type": kind, "data": {}}
    return f"{prefix}/{pole}/events", orjson.dumps(body)


async def wait_for(
    api: httpx.AsyncClient, url: str, check: Any, *, within: float = 20
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for _ in range(int(within * 10)):
        got = await api.get(url)
        if got.status_code == 200:
            body = got.json()
            if check(body):
                return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url}: condition not met; last body {body}")


def commands(database_url: str, device: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT id::text, command, args, state FROM device_commands WHERE device_id = %s"
            " ORDER BY created_at, command",
            (device,),
        ).fetchall()
    return [{"id": r[0], "command": r[1], "args": r[2], "state": r[3]} for r in rows]


def actions(detail: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in detail["timeline"] if e["kind"] == "action"]


async def test_sos_event_opens_an_emergency_and_lights_go_full(
    fresh_database_url: str, mqtt_url: str, topic_prefix: str
) -> None:
    db = fresh_database_url
    await prepare_database(db, site())
    settings = gateway_settings(db, mqtt_url, topic_prefix, command_timeout_s=1.0)
    async with (
        gateway(settings) as gw,
        httpx.AsyncClient(base_url=gw.api, headers=gw.headers) as api,
    ):
        await asyncio.to_thread(
            publish, mqtt_url, [event(topic_prefix, "P0001", "P0001-sos", "sos_pressed")]
        )
        listed = await wait_for(
            api, "/api/v1/emergencies?pole=P0001", lambda b: len(b["items"]) == 1
        )
        em = listed["items"][0]
        assert em["type"] == "sos_call"
        assert em["state"] == "open"
        assert em["opened_by"] == "system (gateway)"
        detail = await wait_for(
            api, f"/api/v1/emergencies/{em['id']}", lambda b: len(actions(b)) == 2
        )
        assert detail["timeline"][0]["kind"] == "raised"
        assert [a["data"]["command"] for a in actions(detail)] == ["switch_on", "set_dim"]
        assert all(a["author"] == "system (gateway)" for a in actions(detail))

        # The alarm behind it, linked.
        assert len(detail["alarm_ids"]) == 1
        alarm = (await api.get(f"/api/v1/alarms/{detail['alarm_ids'][0]}")).json()
        assert alarm["rule_key"] == "sos-button/sos"
        assert alarm["severity"] == "critical"
        assert alarm["state"] == "active"
        assert alarm["device_id"] == "P0001-sos"

        # The work order the same alarm opened is linked to the emergency too (issue 16).
        orders = (await api.get("/api/v1/work-orders", params={"pole": "P0001"})).json()
        by_alarm = [o["id"] for o in orders["items"] if o["alarm_id"] == alarm["id"]]
        assert len(by_alarm) == 1, orders
        assert detail["work_order_ids"] == by_alarm

        # The gateway's own doing is audited with its own role, not as an admin.
        made = (await api.get("/api/v1/audit", params={"resource": "emergency"})).json()
        assert [(e["actor"], e["actor_role"]) for e in made["items"]][-1] == (
            "system (gateway)",
            "system",
        )

        # The protective commands are tracked records; no pole answers, so they time out.
        sent = commands(db, "P0001-lamp")
        assert {(c["command"], orjson.dumps(c["args"])) for c in sent} == {
            ("switch_on", b"{}"),
            ("set_dim", b'{"pct":100}'),
        }
        assert {a["data"]["command_id"] for a in actions(detail)} == {c["id"] for c in sent}
        for _ in range(50):
            if all(c["state"] == "timed_out" for c in commands(db, "P0001-lamp")):
                break
            await asyncio.sleep(0.1)
        assert [c["state"] for c in commands(db, "P0001-lamp")] == ["timed_out"] * 2
        assert commands(db, "P0001-ports") == []  # SOS does not cut tenant power
        assert commands(db, "P0002-lamp") == []  # another pole is left alone

        # A second press joins the open emergency; the reset clears the alarm.
        await asyncio.to_thread(
            publish,
            mqtt_url,
            [
                event(topic_prefix, "P0001", "P0001-sos", "sos_pressed"),
                event(topic_prefix, "P0001", "P0001-sos", "sos_cleared"),
            ],
        )
        await wait_for(
            api,
            f"/api/v1/alarms/{alarm['id']}",
            lambda b: b["state"] == "cleared" and b["count"] == 2,
        )
        detail = await wait_for(
            api,
            f"/api/v1/emergencies/{em['id']}",
            lambda b: any(e["text"].endswith("cleared") for e in b["timeline"]),
        )
        listed = (await api.get("/api/v1/emergencies?pole=P0001")).json()
        assert len(listed["items"]) == 1

        # Water in P0002's cabinet: flooding, tenant ports cut, lamps to full.
        await asyncio.to_thread(
            publish, mqtt_url, [event(topic_prefix, "P0002", "P0002-cab", "water")]
        )
        flood = await wait_for(
            api, "/api/v1/emergencies?pole=P0002", lambda b: len(b["items"]) == 1
        )
        fid = flood["items"][0]["id"]
        assert flood["items"][0]["type"] == "flooding"
        detail = await wait_for(api, f"/api/v1/emergencies/{fid}", lambda b: len(actions(b)) == 6)
        cut = [c for c in commands(db, "P0002-ports") if c["command"] == "switch_port"]
        assert sorted(c["args"]["port"] for c in cut) == [1, 2, 3, 4]
        assert all(c["args"]["on"] is False for c in cut)
        assert len(commands(db, "P0002-lamp")) == 2

        # The system's doing is in the audit log.
        audit = (await api.get("/api/v1/audit", params={"resource": "emergency"})).json()
        actors = {(e["actor"], e["action"]) for e in audit["items"]}
        assert ("system (gateway)", "create") in actors
        assert ("system (gateway)", "protect") in actors
