"""The site file for `polegw site import`: tenants, poles and their devices."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.core.profiles import ProfileCatalog
from gateway.core.yamlsource import YamlSyntaxError, load_yaml, problems_from_validation
from gateway.errors import SiteError, SourceProblem

# Ids become MQTT topic levels and URL path segments: no '/', '+', '#' or spaces.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
Id = Annotated[str, Field(pattern=ID_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Location(_Strict):
    lat: Annotated[float, Field(ge=-90, le=90)]
    lon: Annotated[float, Field(ge=-180, le=180)]


class ModbusEndpoint(_Strict):
    """Where a Modbus device answers: a TCP endpoint and the unit id behind it."""

    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    unit: Annotated[int, Field(ge=0, le=247)] = 1
    framer: Literal["socket", "rtu"] = "socket"
    interval_s: Annotated[float, Field(gt=0, le=86400)] = 60.0


class DeviceSpec(_Strict):
    id: Id
    profile: str
    transport: Literal["mqtt", "modbus"] = "mqtt"
    modbus: ModbusEndpoint | None = None

    @model_validator(mode="after")
    def _endpoint_matches_transport(self) -> Self:
        if self.transport == "modbus" and self.modbus is None:
            raise ValueError("transport: modbus needs a modbus: {host, port, unit} section")
        if self.transport == "mqtt" and self.modbus is not None:
            raise ValueError("a modbus: section is only valid with transport: modbus")
        return self


class CapacitySpec(_Strict):
    """The pole's own budget for everything mounted on it (omitted: not checked)."""

    max_load_kg: Annotated[float, Field(gt=0)] | None = None
    max_wind_area_m2: Annotated[float, Field(gt=0)] | None = None
    power_budget_w: Annotated[float, Field(gt=0)] | None = None


class SlotSpec(_Strict):
    """A mounting position on the pole with its own limits."""

    id: Id
    position: Annotated[str, Field(min_length=1, max_length=64)]
    slot_type: Annotated[str, Field(min_length=1, max_length=64)] = "standard"
    height_min_m: Annotated[float, Field(ge=0, le=100)] | None = None
    height_max_m: Annotated[float, Field(ge=0, le=100)] | None = None
    max_load_kg: Annotated[float, Field(ge=0)]
    max_wind_area_m2: Annotated[float, Field(ge=0)]
    max_power_w: Annotated[float, Field(ge=0)]
    supply: Literal["AC", "DC"] = "AC"
    voltage_v: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _height_range(self) -> Self:
        lo, hi = self.height_min_m, self.height_max_m
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"height_min_m ({lo:g}) is above height_max_m ({hi:g})")
        return self


class CompartmentSpec(_Strict):
    """Space in the pole's cabinet, in rack units (or positions)."""

    id: Id
    name: Annotated[str, Field(min_length=1, max_length=64)]
    units: Annotated[int, Field(ge=1, le=100)]


class PortSpec(_Strict):
    """A tenant power port: channel `port` of the meter device `meter` on this pole."""

    id: Id
    meter: Id
    port: Annotated[int, Field(ge=1)]
    rated_w: Annotated[float, Field(gt=0)]
    supply: Literal["AC", "DC"] = "AC"


class PoleSpec(_Strict):
    id: Id
    name: str = ""
    location: Location | None = None
    height_m: Annotated[float, Field(gt=0, le=100)] | None = None
    road: str = ""
    devices: list[DeviceSpec] = Field(default_factory=list)
    capacity: CapacitySpec | None = None
    slots: list[SlotSpec] = Field(default_factory=list)
    compartments: list[CompartmentSpec] = Field(default_factory=list)
    ports: list[PortSpec] = Field(default_factory=list)


class TenantSpec(_Strict):
    id: Id
    name: Annotated[str, Field(min_length=1)]


class SiteSpec(_Strict):
    tenants: list[TenantSpec] = Field(default_factory=list)
    poles: list[PoleSpec] = Field(default_factory=list)


def _duplicates(
    items: Sequence[tuple[tuple[str | int, ...], str]], what: str
) -> list[tuple[tuple[str | int, ...], str]]:
    seen: dict[str, tuple[str | int, ...]] = {}
    out = []
    for loc, ident in items:
        if ident in seen:
            out.append((loc, f"duplicate {what} id {ident!r} (first at {_fmt(seen[ident])})"))
        else:
            seen[ident] = loc
    return out


def _fmt(loc: tuple[str | int, ...]) -> str:
    from gateway.core.yamlsource import format_loc

    return format_loc(loc)


def _entries(data: object, key: str) -> list[tuple[int, dict[str, Any]]]:
    """(index, item) of the mappings in the list under `key` of the raw document."""
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list):
        return []
    return [(i, item) for i, item in enumerate(items) if isinstance(item, dict)]


def _cross_references(
    data: object, catalog: ProfileCatalog
) -> list[tuple[tuple[str | int, ...], str]]:
    """Duplicate ids and unknown profiles, read from the raw document so that they are
    reported together with the schema's problems, not only after those are fixed."""
    tenants = [(("tenants", i), t) for i, t in _entries(data, "tenants")]
    poles = [(("poles", i), p) for i, p in _entries(data, "poles")]
    devices = [((*loc, "devices", j), d) for loc, p in poles for j, d in _entries(p, "devices")]
    issues: list[tuple[tuple[str | int, ...], str]] = []
    for entries, what in ((tenants, "tenant"), (poles, "pole"), (devices, "device")):
        ids = [((*loc, "id"), e["id"]) for loc, e in entries if isinstance(e.get("id"), str)]
        issues += _duplicates(ids, what)
    for loc, device in devices:
        profile = device.get("profile")
        if isinstance(profile, str) and profile not in catalog:
            known = ", ".join(sorted(catalog))
            issues.append(((*loc, "profile"), f"unknown profile {profile!r} (known: {known})"))
    issues += _bus_conflicts(devices)
    issues += _mounting_references(poles, catalog)
    return issues


def _mounting_references(
    poles: Sequence[tuple[tuple[str | int, ...], dict[str, Any]]], catalog: ProfileCatalog
) -> list[tuple[tuple[str | int, ...], str]]:
    """Slot, compartment and port ids are unique in the site; a port's meter is a
    device of its own pole that can switch that port."""
    issues: list[tuple[tuple[str | int, ...], str]] = []
    for key, what in (("slots", "slot"), ("compartments", "compartment"), ("ports", "port")):
        ids = [
            ((*loc, key, j, "id"), e["id"])
            for loc, p in poles
            for j, e in _entries(p, key)
            if isinstance(e.get("id"), str)
        ]
        issues += _duplicates(ids, what)
    for loc, pole in poles:
        profiles = {d["id"]: d.get("profile") for _, d in _entries(pole, "devices") if "id" in d}
        channels: dict[tuple[object, object], tuple[str | int, ...]] = {}
        for j, port in _entries(pole, "ports"):
            ploc = (*loc, "ports", j)
            meter, number = port.get("meter"), port.get("port")
            if not isinstance(meter, str):
                continue
            if meter not in profiles:
                issues.append(((*ploc, "meter"), f"{meter!r} is not a device of this pole"))
                continue
            profile = catalog.get(str(profiles[meter]))
            if profile is None:
                continue  # reported as an unknown profile
            command = profile.commands.get("switch_port")
            if command is None:
                issues.append(
                    (
                        (*ploc, "meter"),
                        f"{meter!r} ({profile.profile}) has no switch_port command",
                    )
                )
                continue
            arg = command.args.get("port")
            top = arg.max if arg is not None else None
            if isinstance(number, int) and top is not None and number > top:
                issues.append(
                    ((*ploc, "port"), f"{meter!r} ({profile.profile}) has ports 1..{top:g}")
                )
            first = channels.setdefault((meter, number), ploc)
            if first != ploc:
                issues.append(
                    ((*ploc, "port"), f"port {number} of {meter!r} is already {_fmt(first)}")
                )
    return issues


def _bus_conflicts(
    devices: Sequence[tuple[tuple[str | int, ...], dict[str, Any]]],
) -> list[tuple[tuple[str | int, ...], str]]:
    """A bus is one endpoint: one framer, each unit id once, and no RTU broadcast."""
    framers: dict[tuple[object, object], tuple[object, tuple[str | int, ...]]] = {}
    units: dict[tuple[object, object, object], tuple[str | int, ...]] = {}
    issues: list[tuple[tuple[str | int, ...], str]] = []
    for loc, device in devices:
        endpoint = device.get("modbus")
        if not isinstance(endpoint, dict) or device.get("transport") != "modbus":
            continue
        mloc = (*loc, "modbus")
        host, port = endpoint.get("host"), endpoint.get("port", 502)
        framer, unit = endpoint.get("framer", "socket"), endpoint.get("unit", 1)
        if framer == "rtu" and unit == 0:
            issues.append(((*mloc, "unit"), "unit 0 is broadcast on an RTU line: use 1..247"))
        first = framers.setdefault((host, port), (framer, mloc))
        if first[0] != framer:
            issues.append(
                ((*mloc, "framer"), f"{host}:{port} is spoken as {first[0]} at {_fmt(first[1])}")
            )
        seen = units.setdefault((host, port, unit), mloc)
        if seen != mloc:
            issues.append(
                ((*mloc, "unit"), f"unit {unit} on {host}:{port} is already {_fmt(seen)}")
            )
    return issues


def parse_site(text: str, filename: str, catalog: ProfileCatalog) -> SiteSpec:
    """Validate a site file completely; any problem refuses the whole file.

    Every problem found is reported at once, in the order of the file's lines.
    """
    try:
        data, lines = load_yaml(text, filename)
    except YamlSyntaxError as exc:
        raise SiteError([exc.problem]) from None
    if data is None or data == {}:
        raise SiteError(
            [
                SourceProblem(
                    filename, None, "", "the file is empty: no tenants and no poles to import"
                )
            ]
        )
    site: SiteSpec | None = None
    problems: list[SourceProblem] = []
    try:
        site = SiteSpec.model_validate(data)
    except ValidationError as exc:
        problems += problems_from_validation(exc, filename, lines, model=SiteSpec)
    problems += [
        SourceProblem(filename, lines.line_of(loc), _fmt(loc), msg)
        for loc, msg in _cross_references(data, catalog)
    ]
    if problems or site is None:
        problems.sort(key=lambda p: p.line or 0)
        raise SiteError(problems)
    if not site.tenants and not site.poles:
        raise SiteError([SourceProblem(filename, None, "", "no tenants and no poles to import")])
    return site
