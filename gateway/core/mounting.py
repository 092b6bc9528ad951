"""The mounting service's rules (GB/T 40994 受理申请和审核, 提供挂载服务): the capacity
check of a request against a pole, and the application and lease state machines.

Pure: no I/O. The adapters load the pole's budget, the assigned slot, port and
compartment and the live reservations (leases not terminated or removed), and
call `check_capacity`; the API asks `check_application_transition` and
`check_lease_transition` whether a caller may make a move.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from enum import StrEnum
from typing import TypeVar

from gateway.core.auth import MANAGERS, STAFF, Role

# --------------------------------------------------------------------------- capacity


@dataclass(frozen=True, slots=True)
class PoleBudget:
    """The pole's own limits; None: not declared (then not checked)."""

    max_load_kg: float | None = None
    max_wind_area_m2: float | None = None
    power_budget_w: float | None = None


@dataclass(frozen=True, slots=True)
class SlotLimits:
    id: str
    max_load_kg: float
    max_wind_area_m2: float
    max_power_w: float
    supply: str = "AC"
    voltage_v: float | None = None


@dataclass(frozen=True, slots=True)
class PortLimits:
    id: str
    rated_w: float
    supply: str = "AC"


@dataclass(frozen=True, slots=True)
class CompartmentLimits:
    id: str
    units: int


@dataclass(frozen=True, slots=True)
class Reservation:
    """What a live lease takes from the pole."""

    slot_id: str | None = None
    port_id: str | None = None
    compartment_id: str | None = None
    load_kg: float = 0.0
    wind_area_m2: float = 0.0
    power_w: float = 0.0
    cabinet_units: int = 0


@dataclass(frozen=True, slots=True)
class Request:
    """What one pole of an application needs."""

    load_kg: float
    wind_area_m2: float
    power_w: float
    supply: str = "AC"
    voltage_v: float | None = None
    cabinet_units: int = 0


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    needed: float | None
    available: float | None
    message: str


# Never overridable: two live leases on one slot or port are refused by the
# database's unique indexes whatever a reviewer decides.
NOT_OVERRIDABLE = frozenset({"slot_free", "port_free"})
CHECK_NAMES = (
    "slot_free",
    "slot_load",
    "slot_wind_area",
    "slot_power",
    "slot_supply",
    "pole_load",
    "pole_wind_area",
    "pole_power",
    "port_free",
    "port_power",
    "cabinet_space",
)
_EPS = 1e-9


def _limit(name: str, needed: float, available: float, what: str, unit: str) -> Check:
    ok = needed <= available + _EPS
    if ok:
        msg = f"{needed:g} {unit} of {what}: {available:g} {unit} available"
    else:
        msg = f"{needed:g} {unit} of {what} needed, only {available:g} {unit} available"
    return Check(name, ok, needed, available, msg)


def request_totals(devices: Iterable[Mapping[str, object]]) -> tuple[float, float, float]:
    """(load kg, wind area m², power W) of a device list: quantity times each."""
    load = wind = power = 0.0
    for d in devices:
        qty = _num(d.get("quantity", 1))
        load += qty * _num(d.get("weight_kg", 0))
        wind += qty * _num(d.get("wind_area_m2", 0))
        power += qty * _num(d.get("power_w", 0))
    return load, wind, power


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def check_capacity(
    pole: PoleBudget,
    request: Request,
    reservations: Sequence[Reservation],
    *,
    slot: SlotLimits | None,
    port: PortLimits | None = None,
    compartment: CompartmentLimits | None = None,
) -> list[Check]:
    """Every capacity check of `request` on one pole with the given assignment.

    `reservations` are the pole's live leases (the lease a change application
    replaces is left out by the caller)."""
    out: list[Check] = []
    if slot is None:
        out.append(Check("slot_free", False, 1, 0, "no free mounting slot assigned"))
    else:
        taken = any(r.slot_id == slot.id for r in reservations)
        out.append(
            Check(
                "slot_free",
                not taken,
                1,
                0 if taken else 1,
                f"slot {slot.id} is taken by a live lease" if taken else f"slot {slot.id} is free",
            )
        )
        out.append(_limit("slot_load", request.load_kg, slot.max_load_kg, "load", "kg"))
        out.append(
            _limit("slot_wind_area", request.wind_area_m2, slot.max_wind_area_m2, "wind area", "m²")
        )
        out.append(_limit("slot_power", request.power_w, slot.max_power_w, "power", "W"))
        supply_ok = request.supply == slot.supply and (
            request.voltage_v is None
            or slot.voltage_v is None
            or abs(request.voltage_v - slot.voltage_v) <= _EPS
        )
        want = f"{request.supply} {request.voltage_v:g} V" if request.voltage_v else request.supply
        have = f"{slot.supply} {slot.voltage_v:g} V" if slot.voltage_v else slot.supply
        out.append(
            Check(
                "slot_supply",
                supply_ok,
                request.voltage_v,
                slot.voltage_v,
                f"needs {want}, the slot supplies {have}",
            )
        )
    used_load = sum(r.load_kg for r in reservations)
    used_wind = sum(r.wind_area_m2 for r in reservations)
    used_power = sum(r.power_w for r in reservations)
    for name, needed, budget, used, what, unit in (
        ("pole_load", request.load_kg, pole.max_load_kg, used_load, "the pole's load", "kg"),
        (
            "pole_wind_area",
            request.wind_area_m2,
            pole.max_wind_area_m2,
            used_wind,
            "the pole's wind area",
            "m²",
        ),
        ("pole_power", request.power_w, pole.power_budget_w, used_power, "the pole's power", "W"),
    ):
        if budget is None:
            out.append(Check(name, True, needed, None, f"no budget declared for {what}"))
        else:
            out.append(_limit(name, needed, max(0.0, budget - used), what, unit))
    if port is None:
        if request.power_w > 0:
            out.append(Check("port_free", False, 1, 0, "power is needed but no port is assigned"))
    else:
        taken = any(r.port_id == port.id for r in reservations)
        out.append(
            Check(
                "port_free",
                not taken,
                1,
                0 if taken else 1,
                f"port {port.id} is taken by a live lease" if taken else f"port {port.id} is free",
            )
        )
        port_check = _limit("port_power", request.power_w, port.rated_w, "the port's rating", "W")
        if port.supply != request.supply:
            port_check = Check(
                "port_power",
                False,
                request.power_w,
                port.rated_w,
                f"needs {request.supply}, the port supplies {port.supply}",
            )
        out.append(port_check)
    if request.cabinet_units > 0:
        if compartment is None:
            out.append(
                Check(
                    "cabinet_space",
                    False,
                    request.cabinet_units,
                    0,
                    "cabinet space is needed but no compartment is assigned",
                )
            )
        else:
            used = sum(r.cabinet_units for r in reservations if r.compartment_id == compartment.id)
            out.append(
                _limit(
                    "cabinet_space",
                    request.cabinet_units,
                    max(0, compartment.units - used),
                    f"compartment {compartment.id}",
                    "U",
                )
            )
    return out


def blocking(checks: Iterable[Check], overridden: Iterable[str] = ()) -> list[Check]:
    """Failed checks that stop an approval: not overridden, or never overridable."""
    waived = set(overridden) - NOT_OVERRIDABLE
    return [c for c in checks if not c.ok and c.name not in waived]


# --------------------------------------------------------------------------- state machines


class ApplicationState(StrEnum):
    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    RETURNED = "returned"
    UNDER_REVIEW = "under_review"
    APPROVED = "approved"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"


class LeaseState(StrEnum):
    CONTRACTED = "contracted"
    INSTALLING = "installing"
    ACCEPTANCE_TEST = "acceptance_test"
    IN_SERVICE = "in_service"
    SUSPENDED = "suspended"
    TERMINATED = "terminated"
    REMOVED = "removed"


A = ApplicationState
L = LeaseState
TENANT = frozenset({Role.TENANT})

# (from, to) -> the roles that may make the move.
APPLICATION_MOVES: dict[tuple[ApplicationState, ApplicationState], frozenset[Role]] = {
    (A.SUBMITTED, A.ACCEPTED): STAFF,
    (A.SUBMITTED, A.RETURNED): STAFF,
    (A.RETURNED, A.SUBMITTED): TENANT,  # the tenant answers the return
    (A.ACCEPTED, A.UNDER_REVIEW): STAFF,
    (A.UNDER_REVIEW, A.APPROVED): MANAGERS,
    (A.UNDER_REVIEW, A.REJECTED): STAFF,
    (A.SUBMITTED, A.WITHDRAWN): TENANT,
    (A.RETURNED, A.WITHDRAWN): TENANT,
    (A.ACCEPTED, A.WITHDRAWN): TENANT,
    (A.UNDER_REVIEW, A.WITHDRAWN): TENANT,
}
APPLICATION_NEEDS_REASONS = frozenset({A.RETURNED, A.REJECTED})
LIVE_APPLICATION_STATES = frozenset({A.SUBMITTED, A.RETURNED, A.ACCEPTED, A.UNDER_REVIEW})

LEASE_MOVES: dict[tuple[LeaseState, LeaseState], frozenset[Role]] = {
    (L.CONTRACTED, L.INSTALLING): STAFF,
    (L.INSTALLING, L.ACCEPTANCE_TEST): STAFF,
    (L.ACCEPTANCE_TEST, L.INSTALLING): STAFF,  # the acceptance test failed
    (L.ACCEPTANCE_TEST, L.IN_SERVICE): STAFF,
    (L.IN_SERVICE, L.SUSPENDED): STAFF,
    (L.SUSPENDED, L.IN_SERVICE): STAFF,
    (L.CONTRACTED, L.TERMINATED): MANAGERS,
    (L.INSTALLING, L.TERMINATED): MANAGERS,
    (L.ACCEPTANCE_TEST, L.TERMINATED): MANAGERS,
    (L.IN_SERVICE, L.TERMINATED): MANAGERS,
    (L.SUSPENDED, L.TERMINATED): MANAGERS,
    (L.TERMINATED, L.REMOVED): STAFF,
}
# Leases in these states hold nothing (the unique indexes of 0009 agree).
ENDED_LEASE_STATES = frozenset({L.TERMINATED, L.REMOVED})


S = TypeVar("S", ApplicationState, LeaseState)


class TransitionRefused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # "illegal" (409) or "forbidden" (403)
        self.message = message


class EffectiveTimeRefused(ValueError):
    """An effective time a lease transition cannot have; the message says why."""


def check_effective_at(effective: datetime, *, previous: datetime | None, now: datetime) -> None:
    """A transition entered after the fact takes effect at `effective`: not in the
    future (`now`), and not before the lease's previous transition (its history
    stays in order, and a state never lasts a negative time)."""
    if effective > now:
        raise EffectiveTimeRefused(
            f"{effective.isoformat()} is in the future (now is {now.isoformat()})"
        )
    if previous is not None and effective < previous:
        raise EffectiveTimeRefused(
            f"{effective.isoformat()} is before the lease's previous transition"
            f" ({previous.isoformat()})"
        )


def starts_on_for(
    to: LeaseState, starts_on: date | None, effective: datetime, tz: tzinfo
) -> date | None:
    """A lease with no term start (one not made from an application's term) starts on
    the local day it first goes into service; a term start it has is kept."""
    if starts_on is None and to is LeaseState.IN_SERVICE:
        return effective.astimezone(tz).date()
    return starts_on


def allowed_moves(moves: Mapping[tuple[S, S], frozenset[Role]], current: S) -> list[S]:
    return sorted((to for (frm, to) in moves if frm == current), key=str)


def _check(
    moves: Mapping[tuple[S, S], frozenset[Role]], what: str, current: S, to: S, role: Role
) -> None:
    roles = moves.get((current, to))
    if roles is None:
        allowed = ", ".join(allowed_moves(moves, current)) or "none"
        raise TransitionRefused(
            "illegal", f"a {what} cannot go from {current} to {to} (allowed: {allowed})"
        )
    if role not in roles:
        who = ", ".join(sorted(r.value for r in roles))
        raise TransitionRefused("forbidden", f"moving a {what} to {to} needs one of: {who}")


def check_application_transition(
    current: ApplicationState, to: ApplicationState, role: Role
) -> None:
    _check(APPLICATION_MOVES, "application", current, to, role)


def check_lease_transition(current: LeaseState, to: LeaseState, role: Role) -> None:
    _check(LEASE_MOVES, "lease", current, to, role)


def port_switch_for(to: LeaseState) -> bool | None:
    """The port is energised only while the lease is in service: True (switch on),
    False (switch off) or None (leave it)."""
    if to is L.IN_SERVICE:
        return True
    if to in (L.SUSPENDED, L.TERMINATED):
        return False
    return None
