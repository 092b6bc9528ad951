"""Change of operator (issue 14): a signed package out of one installation and
into a fresh one, every row equal, the month's bill split at the cut-over.

P0001's port 1 (4 kW) is leased by tn-telecom from 11-03 10:00 (site time);
its meter reads every 15 minutes at hh:07:30 and rises 0.1 kWh each time. The
cut-over, 11-16 00:00, falls half way between two readings: the cut-over
reading is interpolated (+0.05). Prices are multiples of 0.20 yuan and rent
multiples of 30 days, so no line of either part rounds (see docs/decisions.md).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg.types.json import Jsonb
from typer.testing import CliRunner

from gateway.adapters.billing_store import BillingStore
from gateway.adapters.migrate import head, upgrade
from gateway.cli import app
from gateway.core import handover as ho
from gateway.core.profiles import load_catalog
from gateway.errors import HandoverRefused
from gateway.handover import export, import_package, package_bytes
from tests.conftest import _temporary_database
from tests.support import add_user, opened_pool, prepare_database_sync

SITE_PROFILE = (Path(__file__).parent.parent / "devices" / "lamp-controller.yaml").read_bytes()
CST = ZoneInfo("Asia/Shanghai")
TENANT, DEVICE, PORT = "tn-telecom", "P0001-pm", "P0001-port1"
CUTOVER = datetime(2026, 11, 16, tzinfo=CST)
PRICES = {"sharp": "1.40", "peak": "1.00", "flat": "0.60", "valley": "0.20"}
SEASON = {
    "months": [11, 12],
    "ranges": [
        {"period": "valley", "start": 0, "end": 8},
        {"period": "peak", "start": 8, "end": 11},
        {"period": "sharp", "start": 11, "end": 12},
        {"period": "peak", "start": 18, "end": 22},
    ],
}


def readings(start: datetime, end: datetime) -> list[tuple[datetime, float]]:
    """The counter from 10-31 to 12-01 (local), +0.1 kWh every 15 minutes."""
    out = []
    t = datetime(2026, 10, 31, 0, 7, 30, tzinfo=CST)
    counter = Decimal("1000")
    while t < datetime(2026, 12, 1, 12, tzinfo=CST):
        counter += Decimal("0.1")
        if start <= t < end:
            out.append((t.astimezone(UTC), float(counter)))
        t += timedelta(minutes=15)
    return out


def store_readings(url: str, rows: list[tuple[datetime, float]]) -> None:
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO telemetry (ts, device_id, metric, value) VALUES (%s, %s, %s, %s)",
            [(ts, DEVICE, "port1_energy_kwh", v) for ts, v in rows],
        )


def seed(url: str) -> None:
    prepare_database_sync(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO devices (id, pole_id, profile, transport)"
            " VALUES (%s, 'P0001', 'port-meter-4', 'modbus')",
            (DEVICE,),
        )
        conn.execute(
            "INSERT INTO slots (id, pole_id, position, slot_type, max_load_kg,"
            " max_wind_area_m2, max_power_w) VALUES ('P0001-arm', 'P0001', 'arm-east',"
            " 'standard', 30, 1, 4000)"
        )
        conn.execute(
            "INSERT INTO ports (id, pole_id, meter_device_id, port_no, rated_w)"
            " VALUES (%s, 'P0001', %s, 1, 4000), ('P0001-port2', 'P0001', %s, 2, 4000)",
            (PORT, DEVICE, DEVICE),
        )
        definition = {
            "energy": {"prices": PRICES, "seasons": [SEASON]},
            "rent": {"slot_types": {"standard": "300"}},
            "maintenance_fee": "60",
        }
        conn.execute(
            "INSERT INTO tariffs (name, version, valid_from, definition)"
            " VALUES ('city', 1, %s, %s)",
            (datetime(2026, 1, 1, tzinfo=CST), Jsonb(definition)),
        )
        lease = conn.execute(
            "INSERT INTO leases (tenant_id, pole_id, state, slot_id, port_id, rates)"
            " VALUES (%s, 'P0001', 'in_service', 'P0001-arm', %s, %s) RETURNING id",
            (TENANT, PORT, Jsonb({"tariff": "city"})),
        ).fetchone()
        assert lease is not None
        conn.execute(
            "INSERT INTO lease_history (lease_id, state, since) VALUES (%s, 'contracted', %s),"
            " (%s, 'in_service', %s)",
            (
                lease[0],
                datetime(2026, 10, 20, tzinfo=CST),
                lease[0],
                datetime(2026, 11, 3, 10, tzinfo=CST),
            ),
        )
        conn.execute(
            "INSERT INTO audit_log (actor, actor_role, action, resource, resource_id, after)"
            " VALUES ('zhang', 'operator', 'create', 'lease', %s, %s)",
            (str(lease[0]), Jsonb({"state": "in_service"})),
        )
        conn.execute(
            "INSERT INTO work_orders (title, pole_id, priority, state)"
            " VALUES ('Lamp flickers', 'P0001', 'general', 'open')"
        )
    add_user(url, "operator", name="zhang")
    store_readings(
        url, readings(datetime(2026, 10, 1, tzinfo=CST), datetime(2026, 12, 2, tzinfo=CST))
    )


async def november_bill(url: str) -> dict[str, Any]:
    async with opened_pool(url) as pool:
        store = BillingStore(pool, load_catalog(), CST)
        [(bill, _)] = await store.generate("2026-11", TENANT)
    return bill


@dataclass
class Site:
    old: str
    new: str
    package: Path
    public: bytes
    private: bytes
    whole: dict[str, Any]


@pytest.fixture(scope="module")
def site(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    import asyncio

    private, public = ho.new_key_pair()
    folder = tmp_path_factory.mktemp("handover")
    with _temporary_database(pg_admin_url) as old, _temporary_database(pg_admin_url) as new:
        seed(old)
        whole = asyncio.run(november_bill(old))  # one installation all month
        package = folder / "handover.zip"
        profiles = folder / "profiles"  # the site's own device profiles
        profiles.mkdir()
        (profiles / "street-lamp-x.yaml").write_bytes(SITE_PROFILE)
        export(
            old,
            cutover=CUTOVER,
            out=package,
            private_key_pem=private,
            key_file="key",
            catalog=load_catalog(),
            profiles_dir=profiles,
        )
        upgrade(new)  # the fresh installation
        yield Site(old, new, package, public, private, whole)


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def rezip(path: Path, files: dict[str, bytes]) -> None:
    """A package as the exporter writes one, of these members."""
    manifest, signature = files[ho.MANIFEST], files[ho.SIGNATURE]
    rest = {n: d for n, d in files.items() if n not in (ho.MANIFEST, ho.SIGNATURE)}
    path.write_bytes(package_bytes(manifest, signature, rest))


def rows_loaded(url: str) -> int:
    with psycopg.connect(url) as conn:
        return sum(
            conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
            for t in ("poles", "leases", "bills", "work_orders", "users", "telemetry", "handovers")
        )


def test_the_manifest_describes_every_file_and_leaves_credentials_out(site: Site) -> None:
    files = members(site.package)
    manifest = ho.Manifest.model_validate_json(files[ho.MANIFEST])
    assert manifest.schema_version == head()
    assert manifest.cutover == CUTOVER
    for entry in manifest.files:
        assert ho.sha256_hex(files[entry.name]) == entry.sha256
    assert "telemetry" in manifest.omitted_tables
    assert "api_keys" in manifest.omitted_tables
    assert manifest.omitted_columns["users"] == ["password_hash"]
    assert b"password_hash" not in files["tables/users.jsonl"]
    assert b"zhang" in files["csv/users.csv"]
    assert files["profiles/street-lamp-x.yaml"] == SITE_PROFILE  # alarm rules go along
    rows = {f.table: f.rows for f in manifest.files if f.format == "jsonl" and f.table}
    for table in (
        "poles",
        "ports",
        "leases",
        "lease_history",
        "tariffs",
        "bills",
        "bill_lines",
        "work_orders",
        "archive_history",
        "audit_log",
    ):
        assert rows[table] > 0, table  # the site's leases, bills, open work order…
    [cut] = [json.loads(x) for x in files[ho.CUTOVER_FILE].splitlines() if b'"P0001-port1"' in x]
    # 23:52:30 read 1000 + 0.1 x n, 00:07:30 one more 0.1: half of it before the cut-over
    assert cut["how"] == "interpolated"
    assert cut["flagged"] is True
    assert Decimal(cut["value"]) - Decimal(cut["before"]["value"]) == Decimal("0.05")


def refused(site: Site, path: Path, public: bytes | None = None) -> str:
    with pytest.raises(HandoverRefused) as info:
        import_package(
            site.new, path, public_key_pem=public or site.public, key_file="pub", dry_run=False
        )
    assert rows_loaded(site.new) == 0, "nothing is loaded"
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_changed_byte_is_refused(site: Site, tmp_path: Path) -> None:
    files = members(site.package)
    data = bytearray(files["tables/leases.jsonl"])
    data[data.index(b"in_service")] = ord("I")
    bad = tmp_path / "changed.zip"
    rezip(bad, files | {"tables/leases.jsonl": bytes(data)})
    assert "tables/leases.jsonl: SHA-256 does not match" in refused(site, bad)
    # Any byte of the file: in a member, in the zip's headers (a file's time).
    raw = site.package.read_bytes()
    header = raw.index(b"PK\x03\x04", 10) + 10  # the second member's modification time
    for at in (len(raw) // 2, header):
        damaged = tmp_path / "damaged.zip"
        damaged.write_bytes(raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1 :])
        refused(site, damaged)


def test_a_wrong_signature_is_refused(site: Site, tmp_path: Path) -> None:
    _, other_public = ho.new_key_pair()
    assert "signature does not match" in refused(site, site.package, other_public)
    files = members(site.package)
    manifest = json.loads(files[ho.MANIFEST])
    manifest["cutover"] = "2026-11-20T00:00:00+08:00"
    bad = tmp_path / "resigned.zip"
    rezip(bad, files | {ho.MANIFEST: json.dumps(manifest).encode()})
    assert "signature does not match" in refused(site, bad)


def test_an_unknown_schema_version_is_refused(site: Site, tmp_path: Path) -> None:
    files = members(site.package)
    manifest = json.loads(files[ho.MANIFEST])
    manifest["schema_version"] = "0999"
    body = json.dumps(manifest).encode()
    key = ho.load_private_key(site.private, "key")
    bad = tmp_path / "future.zip"
    rezip(bad, files | {ho.MANIFEST: body, ho.SIGNATURE: key.sign(body)})
    assert "unknown schema version '0999'" in refused(site, bad)


def test_the_cli_refuses_in_one_line(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLEGW_DATABASE_URL", site.new)
    wrong = tmp_path / "wrong.pub"
    wrong.write_bytes(ho.new_key_pair()[1])
    result = CliRunner().invoke(
        app, ["handover", "import", str(site.package), "--public-key", str(wrong)]
    )
    assert result.exit_code != 0
    assert result.output.strip().count("\n") == 0
    assert "signature does not match" in result.output
    assert rows_loaded(site.new) == 0


def test_dry_run_then_import_carries_every_row_and_splits_the_bill(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    monkeypatch.setenv("POLEGW_DATABASE_URL", site.new)
    pub = tmp_path / "old.pub"
    pub.write_bytes(site.public)
    dry = CliRunner().invoke(
        app, ["handover", "import", str(site.package), "--public-key", str(pub), "--dry-run"]
    )
    assert dry.exit_code == 0, dry.output
    assert "leases: would load 1 row" in dry.output
    assert rows_loaded(site.new) == 0
    done = CliRunner().invoke(
        app, ["handover", "import", str(site.package), "--public-key", str(pub)]
    )
    assert done.exit_code == 0, done.output
    # Every exported row is there and equal: the new side exports the same tables.
    again = tmp_path / "again.zip"
    export(
        site.new,
        cutover=CUTOVER,
        out=again,
        private_key_pem=site.private,
        key_file="key",
        catalog=load_catalog(),
        record=False,
    )
    first, second = members(site.package), members(again)
    manifest = ho.Manifest.model_validate_json(first[ho.MANIFEST])
    for table in manifest.tables:
        name = f"tables/{table}.jsonl"
        if table == "audit_log":  # and the import's own entry after them
            *before, extra = second[name].splitlines(keepends=True)
            assert b"".join(before) == first[name]
            assert b'"action": "import"' in extra
            assert b'"resource": "handover"' in extra
        else:
            assert second[name] == first[name], table
    with psycopg.connect(site.new) as conn:
        row = conn.execute("SELECT password_hash FROM users WHERE name = 'zhang'").fetchone()
        assert row == (ho.LOCKED,)
    # The poles now report to the new operator: its readings after the cut-over.
    store_readings(site.new, readings(CUTOVER, datetime(2026, 12, 2, tzinfo=CST)))
    old_part = asyncio.run(november_bill(site.old))
    new_part = asyncio.run(november_bill(site.new))
    for key in ("energy_kwh", "energy_amount", "rent_amount", "total_amount"):
        assert old_part[key] + new_part[key] == site.whole[key], key
    assert old_part["energy_kwh"] > 0
    assert new_part["energy_kwh"] > 0
