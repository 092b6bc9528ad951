"""The demo site: a few roads of poles in central Chengdu, and its site file.

Every pole's port meter is a Modbus RTU device on its road's RS-485 line, reached
through one serial-to-TCP converter per road (127.0.0.1, port `modbus_base_port`
+ the road's index); its unit id is the pole's place on the road (1, 2, …). A
road of more than 247 poles (more unit ids than a line has) gets one more
converter for each further 247, on the ports after the last road's. The other
devices talk MQTT through the pole's edge controller.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

from gateway.core.site import (
    DeviceSpec,
    Location,
    ModbusEndpoint,
    PoleSpec,
    SiteSpec,
    TenantSpec,
)

CENTRE = (30.657, 104.066)  # lat, lon
MODBUS_HOST = "127.0.0.1"  # where the roads' serial-to-TCP converters answer
MODBUS_BASE_PORT = 15020  # the first road's converter; the next roads' follow
UNITS_PER_LINE = 247  # Modbus unit ids 1…247: a longer road needs another converter
METER_INTERVAL_S = 5.0
SPACING_M = 40.0
_M_PER_DEG_LAT = 111_320.0

# Road name, bearing (degrees from north) and where its first pole stands, in metres
# east and north of CENTRE.
ROADS: tuple[tuple[str, float, tuple[float, float]], ...] = (
    ("Renmin Rd", 0.0, (0.0, -150.0)),
    ("Tianfu Ave", 90.0, (-200.0, 80.0)),
    ("Shuncheng St", 45.0, (120.0, 150.0)),
)

TENANTS = (
    TenantSpec(id="tn-telecom", name="City Telecom"),
    TenantSpec(id="tn-police", name="City Police Traffic"),
)


def _place(east_m: float, north_m: float) -> Location:
    lat = CENTRE[0] + north_m / _M_PER_DEG_LAT
    lon = CENTRE[1] + east_m / (_M_PER_DEG_LAT * math.cos(math.radians(CENTRE[0])))
    return Location(lat=round(lat, 6), lon=round(lon, 6))


def _devices(pole_id: str, number: int, meter: ModbusEndpoint) -> list[DeviceSpec]:
    """Every pole: lamp, cabinet, tilt, port meter (on Modbus at `meter`); env station on
    every second pole and an SOS button on every fifth, counting from the first."""
    kinds = [("lamp", "lamp-controller")]
    if number % 2 == 1:
        kinds.append(("env", "env-station"))
    kinds += [("cab", "cabinet-monitor"), ("tilt", "pole-tilt")]
    if number % 5 == 1:
        kinds.append(("sos", "sos-button"))
    devices = [DeviceSpec(id=f"{pole_id}-{suffix}", profile=profile) for suffix, profile in kinds]
    devices.append(
        DeviceSpec(id=f"{pole_id}-meter", profile="port-meter-4", transport="modbus", modbus=meter)
    )
    return devices


def demo_site(poles: int = 20, *, modbus_base_port: int = MODBUS_BASE_PORT) -> SiteSpec:
    """`poles` poles P0001… spread in blocks along up to three roads, 40 m apart; the port
    meters of road k (0, 1, 2) answer on 127.0.0.1:`modbus_base_port` + k."""
    if poles < 0:
        raise ValueError("the number of poles cannot be negative")
    roads = ROADS[: max(1, min(len(ROADS), poles))]
    per_road = math.ceil(poles / len(roads)) if poles else 0
    lines = len(roads) * max(1, math.ceil(per_road / UNITS_PER_LINE))
    if not 1 <= modbus_base_port <= 65536 - lines:
        raise ValueError(
            f"the Modbus base port must be 1..{65536 - lines} ({lines} converters follow it)"
        )
    specs = []
    for index in range(poles):
        number = index + 1
        road_index = index // per_road
        road, bearing, (east0, north0) = roads[road_index]
        along = index % per_road
        line, place = divmod(along, UNITS_PER_LINE)
        meter = ModbusEndpoint(
            host=MODBUS_HOST,
            port=modbus_base_port + road_index + line * len(roads),
            unit=place + 1,
            framer="rtu",
            interval_s=METER_INTERVAL_S,
        )
        pole_id = f"P{number:04d}"
        distance = along * SPACING_M
        b = math.radians(bearing)
        specs.append(
            PoleSpec(
                id=pole_id,
                name=f"{road} {along + 1}",
                road=road,
                location=_place(east0 + distance * math.sin(b), north0 + distance * math.cos(b)),
                height_m=10.0 + number % 3,
                devices=_devices(pole_id, number, meter),
            )
        )
    return SiteSpec(tenants=list(TENANTS), poles=specs)


class _FlowDict(dict[str, Any]):
    """A mapping written on one line: `{id: P0001-lamp, profile: lamp-controller}`."""


class _Dumper(yaml.SafeDumper):
    pass


def _flow(dumper: yaml.SafeDumper, data: _FlowDict) -> yaml.Node:
    return dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=True)


_Dumper.add_representer(_FlowDict, _flow)


def site_to_yaml(site: SiteSpec) -> str:
    """A site file `polegw site import` accepts, with one line per device."""
    data = site.model_dump(mode="json", exclude_none=True)
    for pole in data["poles"]:
        if "location" in pole:
            pole["location"] = _FlowDict(pole["location"])
        pole["devices"] = [
            _FlowDict({**d, "modbus": _FlowDict(d["modbus"])} if "modbus" in d else d)
            for d in pole["devices"]
        ]
    header = "# polegw site file: tenants, poles and their devices (polegw site import FILE)\n"
    body = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
    return header + body
