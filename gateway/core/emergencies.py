"""Emergencies (应急管理): types, states and the automatic protective actions. Pure.

An emergency moves open -> resolved -> closed (closing needs a report); its
timeline records raised, dispatched, action, note, resolved and closed entries.
Protective actions are planned here from the devices on the pole and issued by
the gateway as tracked device commands.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple, Protocol

from gateway.core.alarms import EMERGENCY_TYPES

__all__ = [
    "ACTIONS", "DEFAULT_ACTIONS", "EMERGENCY_TYPES", "TIMELINE_KINDS", "Action", "PlannedCommand",
    "next_state", "plan_actions",
]  # fmt: skip

Action = Literal["cut_ports", "lights_full"]
ACTIONS: tuple[str, ...] = ("cut_ports", "lights_full")

# What the gateway does by itself when an emergency of a type opens on a pole.
DEFAULT_ACTIONS: Mapping[str, tuple[str, ...]] = {
    "sos_call": ("lights_full",),
    "flooding": ("cut_ports", "lights_full"),
    "leakage": ("cut_ports", "lights_full"),
    "fire_smoke": ("lights_full",),
    "collision_tilt": ("lights_full",),
    "power_outage": (),
    "severe_weather": ("lights_full",),
}

STATES = ("open", "resolved", "closed")
TIMELINE_KINDS = ("raised", "dispatched", "action", "note", "resolved", "closed")
# Entries anyone on the staff may add by hand; the rest come with a transition.
MANUAL_KINDS = ("dispatched", "action", "note")

# (from state, transition) -> to state
_MOVES = {("open", "resolve"): "resolved", ("resolved", "close"): "closed", ("open", "close"): None}


def next_state(state: str, move: str) -> str | None:
    """The state `move` ("resolve" or "close") leads to from `state`, or None if illegal."""
    return _MOVES.get((state, move))


class _Arg(Protocol):
    @property
    def min(self) -> float | None: ...

    @property
    def max(self) -> float | None: ...


class _Command(Protocol):
    @property
    def args(self) -> Mapping[str, Any]: ...


class PlannedCommand(NamedTuple):
    device_id: str
    command: str
    args: dict[str, Any]
    action: str


def plan_actions(
    actions: Sequence[str], devices: Iterable[tuple[str, Mapping[str, _Command]]]
) -> list[PlannedCommand]:
    """Commands carrying out `actions` on the pole's devices, given as (device id,
    the profile's commands): cut_ports switches every port of each port meter
    off (switch_port); lights_full switches each lamp on and dims it to 100 %."""
    planned: list[PlannedCommand] = []
    devices = sorted(devices, key=lambda d: d[0])
    for action in actions:
        for device_id, commands in devices:
            if action == "cut_ports" and "switch_port" in commands:
                port = commands["switch_port"].args.get("port")
                low = int(port.min) if port is not None and port.min is not None else 1
                high = int(port.max) if port is not None and port.max is not None else low
                for n in range(low, high + 1):
                    planned.append(
                        PlannedCommand(device_id, "switch_port", {"port": n, "on": False}, action)
                    )
            elif action == "lights_full" and "set_dim" in commands:
                if "switch_on" in commands:
                    planned.append(PlannedCommand(device_id, "switch_on", {}, action))
                planned.append(PlannedCommand(device_id, "set_dim", {"pct": 100}, action))
    return planned
