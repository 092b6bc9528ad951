"""What the gateway knows about the site at run time: which poles and devices exist."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.core.profiles import Profile
from gateway.core.site import ModbusEndpoint


@dataclass(frozen=True, slots=True)
class DeviceRef:
    id: str
    pole_id: str
    profile: Profile
    transport: str = "mqtt"
    modbus: ModbusEndpoint | None = None  # where a polled device answers


class Registry:
    """An immutable snapshot of the site, swapped whole when the site changes."""

    __slots__ = ("_devices", "_poles")

    def __init__(self, poles: Iterable[str], devices: Iterable[DeviceRef]) -> None:
        self._poles = frozenset(poles)
        self._devices = {d.id: d for d in devices}

    def has_pole(self, pole_id: str) -> bool:
        return pole_id in self._poles

    def device(self, device_id: str) -> DeviceRef | None:
        return self._devices.get(device_id)

    def devices_on(self, pole_id: str) -> list[DeviceRef]:
        """The devices mounted on a pole, in id order."""
        return sorted(
            (d for d in self._devices.values() if d.pole_id == pole_id), key=lambda d: d.id
        )

    def polled_devices(self) -> list[DeviceRef]:
        """Devices the gateway polls over Modbus, in id order."""
        return sorted(
            (d for d in self._devices.values() if d.modbus is not None), key=lambda d: d.id
        )

    @property
    def pole_count(self) -> int:
        return len(self._poles)

    @property
    def device_count(self) -> int:
        return len(self._devices)
