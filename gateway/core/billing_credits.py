"""Credits for the time a leased port or slot could not be used (pure).

An *unusable time* is an emergency on a pole or an outage the operator
recorded (the whole pole, or one port or slot on it). A lease is affected when
it is on that pole and, for an outage limited to a port or slot, holds that
port or slot. The credited time is the event's time inside the lease's
in-service periods in the month; time already credited to the lease by an
earlier event (by start, then emergencies before outages, then id) is not
credited twice.

Each affected piece is priced by the tariff version valid at its start (a
piece is cut at every version change) and that version's credit policy:

    credit = share x monthly charges x seconds / (days in month x 86 400)

where the monthly charges are the lease's slot rent + compartment rent +
maintenance fee of that version. One bill line per (event, lease, version),
its amount rounded once, half up, to the fen and then negated.
"""

from __future__ import annotations

import calendar
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from gateway.core import tariffs as tf

Source = Literal["emergency", "outage"]
Window = tuple[datetime, datetime]
SOURCE_ORDER = {"emergency": 0, "outage": 1}
HOUR = Decimal(3600)
DAY = Decimal(86400)
MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Unusable:
    """A pole (port_id and slot_id None), or a port and/or slot on it, unusable on
    [start, end)."""

    source: Source
    id: int
    cause: str  # the emergency's type, or the outage's cause
    pole_id: str
    port_id: str | None
    slot_id: str | None
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class LeaseScope:
    """What a lease holds, and when it was in service in the month."""

    lease_id: int
    pole_id: str
    port_id: str | None
    slot_id: str | None
    slot_position: str | None
    slot_type: str | None
    compartment_id: str | None
    in_service: tuple[Window, ...]

    def affected_by(self, event: Unusable) -> bool:
        if event.pole_id != self.pole_id:
            return False
        if event.port_id is None and event.slot_id is None:
            return True
        return (event.port_id is not None and event.port_id == self.port_id) or (
            event.slot_id is not None and event.slot_id == self.slot_id
        )

    def monthly(self, tariff: tf.Tariff) -> Decimal:
        return tf.monthly_charges(
            tariff.definition,
            slot=self.slot_id is not None,
            position=self.slot_position,
            slot_type=self.slot_type,
            compartment=self.compartment_id is not None,
        )


@dataclass(frozen=True, slots=True)
class Credit:
    event: Unusable
    lease_id: int
    tariff: tf.Tariff
    seconds: Decimal
    share: Decimal
    monthly: Decimal
    days_in_month: int

    @property
    def hours(self) -> Decimal:
        return self.seconds / HOUR

    @property
    def hourly(self) -> Decimal:
        """The credit per hour (negative): share x monthly / (days x 24)."""
        return -(self.share * self.monthly / (self.days_in_month * 24))

    @property
    def amount(self) -> Decimal:
        """Negative; rounded once, half up on the magnitude, to the fen."""
        exact = self.share * self.monthly * self.seconds / (self.days_in_month * DAY)
        return -tf.money(exact)


def _seconds(span: timedelta) -> Decimal:
    return Decimal(span // MICROSECOND) / 1_000_000


def intersect(a: Sequence[Window], b: Sequence[Window]) -> list[Window]:
    out = []
    for a0, a1 in a:
        for b0, b1 in b:
            lo, hi = max(a0, b0), min(a1, b1)
            if lo < hi:
                out.append((lo, hi))
    return sorted(out)


def subtract(a: Sequence[Window], b: Sequence[Window]) -> list[Window]:
    """Parts of the windows `a` outside every window of `b`."""
    out = list(a)
    for b0, b1 in b:
        nxt = []
        for a0, a1 in out:
            if b1 <= a0 or a1 <= b0:
                nxt.append((a0, a1))
                continue
            if a0 < b0:
                nxt.append((a0, b0))
            if b1 < a1:
                nxt.append((b1, a1))
        out = nxt
    return sorted(out)


def cut(window: Window, at: Iterable[datetime]) -> list[Window]:
    a, b = window
    points = sorted({t for t in at if a < t < b})
    edges = [a, *points, b]
    return list(itertools.pairwise(edges))


def credits(
    lease: LeaseScope,
    events: Iterable[Unusable],
    tariffs: Sequence[tf.Tariff],
    month: str,
    tariff_name: str = "",
) -> list[Credit]:
    """The lease's credits in the month, in the order of the events.
    Raises tf.NoTariff when an unusable time in service has no valid version."""
    year, mon = (int(x) for x in month.split("-"))
    days = calendar.monthrange(year, mon)[1]
    changes = [t.valid_from for t in tariffs] + [t.valid_to for t in tariffs if t.valid_to]
    credited: list[Window] = []
    out: list[Credit] = []
    ordered = sorted(events, key=lambda e: (e.start, SOURCE_ORDER[e.source], e.id))
    for event in ordered:
        if not lease.affected_by(event):
            continue
        pieces = subtract(intersect([(event.start, event.end)], lease.in_service), credited)
        seconds: dict[int, tuple[tf.Tariff, Decimal, Decimal]] = {}
        for piece in pieces:
            for a, b in cut(piece, changes):
                tariff = tf.tariff_at(tariffs, a)
                if tariff is None:
                    raise tf.NoTariff(tariff_name or (tariffs[0].name if tariffs else "?"), a)
                share = tariff.definition.rent.credits.share(event.source, event.cause)
                if share == 0:
                    continue
                credited.append((a, b))
                _, share, total = seconds.get(tariff.id, (tariff, share, Decimal(0)))
                seconds[tariff.id] = (tariff, share, total + _seconds(b - a))
        credited.sort()
        for tariff, share, total in sorted(seconds.values(), key=lambda v: v[0].valid_from):
            monthly = lease.monthly(tariff)
            credit = Credit(event, lease.lease_id, tariff, total, share, monthly, days)
            if credit.amount != 0:
                out.append(credit)
    return out
