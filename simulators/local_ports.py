"""Serve a site's Modbus devices where this machine can: `polegw simulate --modbus-local-base`.

A real site's devices answer at the field's addresses (a converter at 10.0.1.21,
port 502), where a simulator cannot listen: the address is not this machine's,
and a port below 1024 needs root. `map_to_local` moves each distinct host:port
of the site to one local port, in order (base, base+1, …), keeping the devices
of one endpoint together on one simulated bus, and leaves out the devices no
simulated model exists for, saying why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.core.profiles import ProfileCatalog
from gateway.core.site import SiteSpec
from gateway.errors import ConfigError
from simulators.model import DeviceModel

Endpoint = tuple[str, int]


@dataclass(frozen=True, slots=True)
class LocalSite:
    """The site as simulated: its endpoints moved, the devices left out removed."""

    site: SiteSpec
    moved: dict[Endpoint, Endpoint] = field(default_factory=dict)  # field -> local
    devices: dict[Endpoint, list[str]] = field(default_factory=dict)  # field endpoint -> ids
    left_out: dict[str, str] = field(default_factory=dict)  # device id -> why

    def mapping_lines(self) -> list[str]:
        return [
            f"  {h}:{p} -> {lh}:{lp} ({', '.join(self.devices[(h, p)])})"
            for (h, p), (lh, lp) in self.moved.items()
        ]


def unservable(
    site: SiteSpec, catalog: ProfileCatalog, models: Mapping[str, type[DeviceModel]]
) -> dict[str, str]:
    """The site's Modbus devices that cannot be simulated, and why."""
    out: dict[str, str] = {}
    for pole in site.poles:
        for d in pole.devices:
            if d.transport != "modbus":
                continue
            if d.profile not in catalog:
                out[d.id] = f"unknown profile {d.profile!r}"
            elif d.profile not in models:
                out[d.id] = f"no simulated model for profile {d.profile!r}"
    return out


def without(site: SiteSpec, device_ids: set[str]) -> SiteSpec:
    """The site without these devices."""
    if not device_ids:
        return site
    poles = [
        p.model_copy(update={"devices": [d for d in p.devices if d.id not in device_ids]})
        for p in site.poles
    ]
    return site.model_copy(update={"poles": poles})


def map_to_local(
    site: SiteSpec,
    catalog: ProfileCatalog,
    models: Mapping[str, type[DeviceModel]],
    *,
    base_port: int | None,
    host: str = "127.0.0.1",
) -> LocalSite:
    """The site with its servable Modbus devices on `host`:`base_port`+n, one port per
    distinct field endpoint (sorted by host, then port); with `base_port` None the
    endpoints stay where they are and only the unservable devices are left out."""
    left_out = unservable(site, catalog, models)
    site = without(site, set(left_out))
    endpoints: dict[Endpoint, list[str]] = {}
    for pole in site.poles:
        for d in pole.devices:
            if d.transport == "modbus" and d.modbus is not None:
                endpoints.setdefault((d.modbus.host, d.modbus.port), []).append(d.id)
    if base_port is None:
        return LocalSite(site, {}, endpoints, left_out)
    ordered = sorted(endpoints)
    if base_port + len(ordered) - 1 > 65535:
        raise ConfigError(
            f"--modbus-local-base {base_port}: the site has {len(ordered)} Modbus endpoints,"
            f" which need ports up to {base_port + len(ordered) - 1} (at most 65535)"
        )
    moved = {ep: (host, base_port + n) for n, ep in enumerate(ordered)}
    poles = []
    for pole in site.poles:
        devices = []
        for d in pole.devices:
            if d.transport == "modbus" and d.modbus is not None:
                local_host, local_port = moved[(d.modbus.host, d.modbus.port)]
                modbus = d.modbus.model_copy(update={"host": local_host, "port": local_port})
                d = d.model_copy(update={"modbus": modbus})
            devices.append(d)
        poles.append(pole.model_copy(update={"devices": devices}))
    return LocalSite(site.model_copy(update={"poles": poles}), moved, endpoints, left_out)
