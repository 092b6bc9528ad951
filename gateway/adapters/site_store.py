"""The site registry in PostgreSQL: import a site file, load the run-time registry."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import orjson
import psycopg
from pydantic import ValidationError

from gateway.adapters.db import libpq_url
from gateway.core.profiles import ProfileCatalog
from gateway.core.registry import DeviceRef, Registry
from gateway.core.site import ModbusEndpoint, SiteSpec

log = logging.getLogger(__name__)


Outcome = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True, slots=True)
class ImportCounts:
    """Rows of the site's records (tenants, poles, devices, slots, compartments, ports)."""

    created: int
    updated: int
    unchanged: int

    def __str__(self) -> str:
        return f"{self.created} created, {self.updated} updated, {self.unchanged} unchanged"


# Each upsert touches a row only when something differs, so importing the same
# file twice changes nothing (not even updated_at). `xmax = 0` tells an insert
# from an update in RETURNING.
_TENANT = """
INSERT INTO tenants (id, name) VALUES (%s, %s)
ON CONFLICT (id) DO UPDATE SET name = excluded.name, updated_at = now()
WHERE tenants.name IS DISTINCT FROM excluded.name
RETURNING (xmax = 0)
"""
_POLE = """
INSERT INTO poles (id, name, road, lat, lon, height_m) VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (id) DO UPDATE SET name = excluded.name, road = excluded.road,
  lat = excluded.lat, lon = excluded.lon, height_m = excluded.height_m, updated_at = now()
WHERE (poles.name, poles.road, poles.lat, poles.lon, poles.height_m)
  IS DISTINCT FROM (excluded.name, excluded.road, excluded.lat, excluded.lon, excluded.height_m)
RETURNING (xmax = 0)
"""
_DEVICE = """
INSERT INTO devices (id, pole_id, profile, transport, modbus) VALUES (%s, %s, %s, %s, %s::jsonb)
ON CONFLICT (id) DO UPDATE SET pole_id = excluded.pole_id, profile = excluded.profile,
  transport = excluded.transport, modbus = excluded.modbus, updated_at = now()
WHERE (devices.pole_id, devices.profile, devices.transport, devices.modbus)
  IS DISTINCT FROM (excluded.pole_id, excluded.profile, excluded.transport, excluded.modbus)
RETURNING (xmax = 0)
"""

# Capacity: only the budgets the file declares are written (a pole without a
# capacity section keeps what the API set).
_BUDGET = """
UPDATE poles SET max_load_kg = %s, max_wind_area_m2 = %s, power_budget_w = %s, updated_at = now()
WHERE id = %s AND (max_load_kg, max_wind_area_m2, power_budget_w) IS DISTINCT FROM (%s, %s, %s)
RETURNING false
"""
_SLOT = """
INSERT INTO slots (id, pole_id, position, slot_type, height_min_m, height_max_m, max_load_kg,
  max_wind_area_m2, max_power_w, supply, voltage_v)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (id) DO UPDATE SET pole_id = excluded.pole_id, position = excluded.position,
  slot_type = excluded.slot_type, height_min_m = excluded.height_min_m,
  height_max_m = excluded.height_max_m, max_load_kg = excluded.max_load_kg,
  max_wind_area_m2 = excluded.max_wind_area_m2, max_power_w = excluded.max_power_w,
  supply = excluded.supply, voltage_v = excluded.voltage_v
WHERE (slots.pole_id, slots.position, slots.slot_type, slots.height_min_m, slots.height_max_m,
  slots.max_load_kg, slots.max_wind_area_m2, slots.max_power_w, slots.supply, slots.voltage_v)
  IS DISTINCT FROM (excluded.pole_id, excluded.position, excluded.slot_type,
  excluded.height_min_m, excluded.height_max_m, excluded.max_load_kg, excluded.max_wind_area_m2,
  excluded.max_power_w, excluded.supply, excluded.voltage_v)
RETURNING (xmax = 0)
"""
_COMPARTMENT = """
INSERT INTO compartments (id, pole_id, name, units) VALUES (%s, %s, %s, %s)
ON CONFLICT (id) DO UPDATE SET pole_id = excluded.pole_id, name = excluded.name,
  units = excluded.units
WHERE (compartments.pole_id, compartments.name, compartments.units)
  IS DISTINCT FROM (excluded.pole_id, excluded.name, excluded.units)
RETURNING (xmax = 0)
"""
_PORT = """
INSERT INTO ports (id, pole_id, meter_device_id, port_no, rated_w, supply)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (id) DO UPDATE SET pole_id = excluded.pole_id,
  meter_device_id = excluded.meter_device_id, port_no = excluded.port_no,
  rated_w = excluded.rated_w, supply = excluded.supply
WHERE (ports.pole_id, ports.meter_device_id, ports.port_no, ports.rated_w, ports.supply)
  IS DISTINCT FROM (excluded.pole_id, excluded.meter_device_id, excluded.port_no,
  excluded.rated_w, excluded.supply)
RETURNING (xmax = 0)
"""


async def import_site(database_url: str, site: SiteSpec) -> ImportCounts:
    """Upsert everything in the site in one transaction (all or nothing).

    Records missing from the file are left alone: a site file adds and changes,
    it never deletes (retiring a pole is an operator's decision, not a diff).
    """
    created = updated = unchanged = 0

    async def run(
        cur: psycopg.AsyncCursor[tuple[object, ...]], sql: str, args: tuple[object, ...]
    ) -> Outcome:
        nonlocal created, updated, unchanged
        await cur.execute(sql, args)
        row = await cur.fetchone()
        if row is None:
            unchanged += 1
            return "unchanged"
        if row[0]:
            created += 1
            return "created"
        updated += 1
        return "updated"

    conn = await psycopg.AsyncConnection.connect(libpq_url(database_url))
    async with conn, conn.transaction(), conn.cursor() as cur:
        for t in site.tenants:
            await run(cur, _TENANT, (t.id, t.name))
        poles: dict[str, Outcome] = {}
        for p in site.poles:
            loc = p.location
            poles[p.id] = await run(
                cur,
                _POLE,
                (
                    p.id,
                    p.name,
                    p.road,
                    loc.lat if loc else None,
                    loc.lon if loc else None,
                    p.height_m,
                ),
            )
        for p in site.poles:
            for d in p.devices:
                modbus = orjson.dumps(d.modbus.model_dump()).decode() if d.modbus else None
                await run(cur, _DEVICE, (d.id, p.id, d.profile, d.transport, modbus))
        for p in site.poles:
            if p.capacity is not None:
                c = p.capacity
                budget = (c.max_load_kg, c.max_wind_area_m2, c.power_budget_w)
                await cur.execute(_BUDGET, (*budget, p.id, *budget))
                # The budget is part of the pole's row: a pole created or updated
                # by this import is counted once, an unchanged one becomes updated.
                if await cur.fetchone() is not None and poles[p.id] == "unchanged":
                    unchanged -= 1
                    updated += 1
            for sl in p.slots:
                await run(
                    cur,
                    _SLOT,
                    (
                        sl.id,
                        p.id,
                        sl.position,
                        sl.slot_type,
                        sl.height_min_m,
                        sl.height_max_m,
                        sl.max_load_kg,
                        sl.max_wind_area_m2,
                        sl.max_power_w,
                        sl.supply,
                        sl.voltage_v,
                    ),
                )
            for cm in p.compartments:
                await run(cur, _COMPARTMENT, (cm.id, p.id, cm.name, cm.units))
            for pt in p.ports:
                await run(cur, _PORT, (pt.id, p.id, pt.meter, pt.port, pt.rated_w, pt.supply))
    return ImportCounts(created, updated, unchanged)


@dataclass(frozen=True, slots=True)
class SiteRows:
    """What the run-time registry is built from, as stored (JSON-able: the
    gateway caches it beside its spool, see RegistrySource)."""

    poles: list[str]
    # id, pole_id, profile, transport, modbus (the endpoint as stored, or None)
    devices: list[dict[str, object]]


async def fetch_site_rows(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> SiteRows:
    poles = [str(r[0]) for r in await (await conn.execute("SELECT id FROM poles")).fetchall()]
    rows = await (
        await conn.execute("SELECT id, pole_id, profile, transport, modbus FROM devices")
    ).fetchall()
    devices: list[dict[str, object]] = [
        {
            "id": str(device_id),
            "pole_id": str(pole_id),
            "profile": str(profile),
            "transport": str(transport),
            "modbus": modbus,
        }
        for device_id, pole_id, profile, transport, modbus in rows
    ]
    return SiteRows(sorted(poles), sorted(devices, key=lambda d: str(d["id"])))


def registry_from_rows(rows: SiteRows, catalog: ProfileCatalog) -> Registry:
    """The registry of `rows`; devices with a profile this gateway lacks are skipped."""
    devices = []
    for row in rows.devices:
        device_id, profile, modbus = row["id"], row["profile"], row["modbus"]
        spec = catalog.get(str(profile))
        try:
            endpoint = ModbusEndpoint.model_validate(modbus) if modbus is not None else None
        except ValidationError as exc:
            log.warning("device %s has an unusable modbus endpoint; not polled: %s", device_id, exc)
            endpoint = None
        if spec is None:
            log.warning(
                "device %s has unknown profile %r; its data will be refused", device_id, profile
            )
            continue
        devices.append(
            DeviceRef(str(device_id), str(row["pole_id"]), spec, str(row["transport"]), endpoint)
        )
    return Registry(rows.poles, devices)


async def load_registry(
    conn: psycopg.AsyncConnection[tuple[object, ...]], catalog: ProfileCatalog
) -> Registry:
    """The registry as stored; devices with a profile this gateway lacks are skipped."""
    return registry_from_rows(await fetch_site_rows(conn), catalog)
