"""GET /api/v1/overview: the dashboard's numbers match a seeded site."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest

from gateway.config import Settings
from tests.support import add_user, api_client, auth_headers, prepare_database

TZ = "Asia/Shanghai"


def table_exists(conn: psycopg.Connection[tuple[object, ...]], table: str) -> bool:
    return conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() != (None,)


def seed(url: str) -> None:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        now = row[0]
        assert isinstance(now, datetime)
        since = now.astimezone(ZoneInfo(TZ)).replace(hour=0, minute=0, second=0, microsecond=0)
        step = (now - since) / 10  # readings "today" are between midnight and now

        def at(k: int) -> datetime:
            return since + step * k

        # Poles: P0003 faulty, P0009 retired (not counted).
        conn.execute("UPDATE poles SET status = 'faulty' WHERE id = 'P0003'")
        conn.execute("INSERT INTO poles (id, status) VALUES ('P0009', 'retired')")
        # Devices: a polled port meter on P0001 (offline), P0003's cabinet retired.
        conn.execute(
            "INSERT INTO devices (id, pole_id, profile, transport) VALUES"
            " ('P0001-pm', 'P0001', 'port-meter-4', 'modbus')"
        )
        conn.execute("UPDATE devices SET status = 'retired' WHERE id = 'P0003-cab'")
        conn.execute(
            "INSERT INTO device_state (device_id, online, since) VALUES ('P0001-pm', false, now())"
        )
        conn.execute(
            "INSERT INTO pole_presence (pole_id, state, since) VALUES"
            " ('P0001', 'online', now()), ('P0002', 'offline', now())"
        )
        rows = [
            # lamps: P0001 on (online) -> lit; P0002 on but its pole offline; P0003 off now
            ("P0001-lamp", "lamp_on", at(1), 1.0),
            ("P0002-lamp", "lamp_on", at(1), 1.0),
            ("P0003-lamp", "lamp_on", at(1), 1.0),
            ("P0003-lamp", "lamp_on", at(2), 0.0),
            # energy: baseline an hour before midnight, then +1.2 today
            ("P0001-lamp", "energy_kwh", since - timedelta(hours=1), 100.0),
            ("P0001-lamp", "energy_kwh", at(1), 100.5),
            ("P0001-lamp", "energy_kwh", at(2), 101.0),
            ("P0001-lamp", "energy_kwh", at(3), 101.2),
            # a baseline older than 24 h does not count: +2 today
            ("P0001-pm", "port1_energy_kwh", since - timedelta(hours=30), 10.0),
            ("P0001-pm", "port1_energy_kwh", at(1), 50.0),
            ("P0001-pm", "port1_energy_kwh", at(2), 52.0),
            # a meter reset: +2, reset (dropped), +1
            ("P0001-pm", "port2_energy_kwh", at(1), 5.0),
            ("P0001-pm", "port2_energy_kwh", at(2), 7.0),
            ("P0001-pm", "port2_energy_kwh", at(3), 0.5),
            ("P0001-pm", "port2_energy_kwh", at(4), 1.5),
            # yesterday only
            ("P0002-lamp", "energy_kwh", since - timedelta(hours=2), 7.0),
            ("P0002-lamp", "energy_kwh", since - timedelta(hours=1), 9.0),
            # a gauge is not energy
            ("P0001-lamp", "power_w", at(1), 500.0),
        ]
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO telemetry (device_id, metric, ts, value) VALUES (%s, %s, %s, %s)",
                rows,
            )
        if table_exists(conn, "alarms"):
            conn.execute(
                "INSERT INTO alarms (rule_key, fault, severity, pole_id, device_id, state,"
                " first_seen, last_seen, cleared_at) VALUES"
                " ('r1', 'f', 'critical', 'P0001', 'P0001-lamp', 'active', now(), now(), NULL),"
                " ('r2', 'f', 'critical', 'P0002', 'P0002-lamp', 'active', now(), now(), NULL),"
                " ('r3', 'f', 'major', 'P0001', 'P0001-lamp', 'acknowledged', now(), now(), NULL),"
                " ('r4', 'f', 'minor', 'P0001', 'P0001-lamp', 'cleared', now(), now(), now())"
            )
        if table_exists(conn, "work_orders"):
            user = add_user(url, "maintainer").user_id
            conn.execute(
                "INSERT INTO work_orders (title, pole_id, priority, state, assignee,"
                " response_due, resolution_due, started_at) VALUES"
                # open, past its resolution deadline: overdue
                " ('a', 'P0001', 'general', 'open', NULL, now() - interval '2 h',"
                "  now() - interval '1 h', NULL),"
                # assigned, not started by the response deadline: overdue
                " ('b', 'P0001', 'general', 'assigned', %(u)s, now() - interval '1 h',"
                "  now() + interval '1 d', NULL),"
                # in progress, started in time, resolution ahead: not overdue
                " ('c', 'P0002', 'general', 'in_progress', %(u)s, now() - interval '1 h',"
                "  now() + interval '1 d', now() - interval '2 h'),"
                # resolved and closed ones are not open
                " ('d', 'P0002', 'general', 'resolved', %(u)s, NULL, now() - interval '1 d', NULL),"
                " ('e', 'P0002', 'general', 'closed', %(u)s, NULL, now() - interval '1 d', NULL)",
                {"u": user},
            )
        if table_exists(conn, "emergencies"):
            conn.execute(
                "INSERT INTO emergencies (type, state, title, opened_by, resolved_at) VALUES"
                " ('flooding', 'open', 'x', 'op', NULL), ('sos_call', 'open', 'y', 'op', NULL),"
                " ('leakage', 'resolved', 'z', 'op', now())"
            )


@pytest.fixture(scope="module")
async def api(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    await prepare_database(database_url)
    seed(database_url)
    settings = Settings(database_url=database_url, site_timezone=TZ)
    async with api_client(settings, headers=auth_headers(database_url, "maintainer")) as client:
        yield client


async def test_overview_numbers(api: httpx.AsyncClient, database_url: str) -> None:
    r = await api.get("/api/v1/overview")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["poles"] == 3
    assert body["poles_by_status"] == {"in_service": 2, "faulty": 1, "retired": 1}
    assert body["devices"] == {"total": 9, "online": 3, "offline": 4, "unknown": 2}
    assert body["lamps"] == {"total": 3, "lit": 1}
    assert body["energy"]["kwh_today"] == pytest.approx(1.2 + 2 + 3)
    since = datetime.fromisoformat(body["energy"]["since"]).astimezone(ZoneInfo(TZ))
    assert (since.hour, since.minute) == (0, 0)
    with psycopg.connect(database_url) as conn:
        tables = {t: table_exists(conn, t) for t in ("alarms", "work_orders", "emergencies")}
    if tables["alarms"]:
        assert body["alarms_active"] == {"critical": 2, "major": 1}
    else:
        assert body["alarms_active"] is None
    if tables["work_orders"]:
        assert body["work_orders"] == {"open": 3, "overdue": 2}
    else:
        assert body["work_orders"] is None
    if tables["emergencies"]:
        assert body["emergencies_open"] == 2
    else:
        assert body["emergencies_open"] is None


async def test_overview_is_for_staff(api: httpx.AsyncClient, database_url: str) -> None:
    tenant = auth_headers(database_url, "tenant", tenant="tn-telecom")
    assert (await api.get("/api/v1/overview", headers=tenant)).status_code == 403
    assert (await api.get("/api/v1/overview", headers={"Authorization": ""})).status_code == 401


async def test_the_site_map_has_every_pole_with_its_worst_state(
    api: httpx.AsyncClient, database_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE poles SET road = CASE id WHEN 'P0003' THEN 'Jiefang Rd' ELSE 'Renmin Rd' END,"
            " lat = 39.9 + length(id) / 1000.0, lon = 116.4"
        )
        has_alarms = table_exists(conn, "alarms")
    r = await api.get("/api/v1/overview/poles")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["roads"] == ["Jiefang Rd", "Renmin Rd"]  # the retired P0009 has none
    poles = {p["id"]: p for p in body["poles"]}
    assert list(poles) == ["P0001", "P0002", "P0003"]  # not the retired pole
    counts = ("devices_total", "devices_offline", "devices_unknown", "lamps_lit", "lamps_total")
    got = {pid: tuple(p[k] for k in counts) for pid, p in poles.items()}
    assert got == {
        "P0001": (4, 1, 0, 1, 1),  # the polled meter is offline; the lamp is on
        "P0002": (3, 3, 0, 0, 1),  # the pole is offline: so are its devices, the lamp unlit
        "P0003": (2, 0, 2, 0, 1),  # no presence yet: unknown; the cabinet is retired
    }
    p1 = poles["P0001"]
    assert (p1["name"], p1["road"], p1["status"]) == ("Renmin Rd 1", "Renmin Rd", "in_service")
    assert p1["lat"] == pytest.approx(39.905)
    assert p1["lon"] == pytest.approx(116.4)
    assert poles["P0003"]["status"] == "faulty"
    worst = {pid: (p["worst_alarm"], p["alarms_active"]) for pid, p in poles.items()}
    if has_alarms:
        # critical beats the acknowledged major; the cleared minor does not count
        assert worst == {"P0001": ("critical", 2), "P0002": ("critical", 1), "P0003": (None, 0)}
    else:
        assert set(worst.values()) == {(None, 0)}
    tenant = auth_headers(database_url, "tenant", tenant="tn-telecom")
    assert (await api.get("/api/v1/overview/poles", headers=tenant)).status_code == 403
