"""Tariffs (计费): time-of-use electricity prices and monthly space rents, versioned.

Pure. A tariff version is valid on [valid_from, valid_to). Electricity is priced
by period (尖 sharp, 峰 peak, 平 flat, 谷 valley) chosen by month and hour of day
in the site's time zone; a flat tariff is the one-period case. Space is rented
per month (by slot position, else slot type; per cabinet compartment) plus a
maintenance fee, prorated by days in service; the space section's credit
policy (`rent.credits`) says which emergencies and outages credit a lease for
the hours it was unusable (gateway/core/billing_credits.py). Money is Decimal
throughout and is rounded to 0.01 CNY only on bill lines (`money`).
"""

from __future__ import annotations

import calendar
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Annotated, Self
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.core.alarms import EMERGENCY_TYPES
from gateway.core.metering import ZERO, Cuts, Flag, Interval, Pieces, split_interval, utc

CENT = Decimal("0.01")
# A unit price as shown (API, CSV, invoice): 4 decimals, so a day's rent of
# 450 / 31 reads 14.5161, not 14.51612903225806451612903226. Amounts are computed
# from the exact price and rounded once to the fen (`money`).
UNIT_PRICE = Decimal("0.0001")
Money = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=6)]


def money(amount: Decimal) -> Decimal:
    """Round to the fen (0.01 CNY), half up: done once, on a bill line."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def unit_price(price: Decimal) -> Decimal:
    """A unit price as shown, to UNIT_PRICE, half up."""
    return price.quantize(UNIT_PRICE, rounding=ROUND_HALF_UP)


class Period(StrEnum):
    SHARP = "sharp"  # 尖
    PEAK = "peak"  # 峰
    FLAT = "flat"  # 平
    VALLEY = "valley"  # 谷


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HourRange(_Model):
    """Hours [start, end) of the local day in one period."""

    period: Period
    start: int = Field(ge=0, le=23)
    end: int = Field(ge=1, le=24)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.start >= self.end:
            raise ValueError("start must be before end (split a range that crosses midnight)")
        return self


class Season(_Model):
    """The hour ranges of the months listed; hours not listed take the default period."""

    months: list[Annotated[int, Field(ge=1, le=12)]] = Field(min_length=1)
    ranges: list[HourRange]

    @model_validator(mode="after")
    def _no_overlap(self) -> Self:
        hours: set[int] = set()
        for r in self.ranges:
            span = set(range(r.start, r.end))
            if hours & span:
                raise ValueError(f"hour ranges overlap at {min(hours & span)}:00")
            hours |= span
        return self


class EnergyPrices(_Model):
    prices: dict[Period, Money] = Field(description="CNY per kWh for each period used")
    default_period: Period = Period.FLAT
    seasons: list[Season] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        used = {self.default_period} | {r.period for s in self.seasons for r in s.ranges}
        missing = sorted(p.value for p in used - set(self.prices))
        if missing:
            raise ValueError(f"no price for period(s): {', '.join(missing)}")
        months = [m for s in self.seasons for m in s.months]
        if len(months) != len(set(months)):
            raise ValueError("a month belongs to more than one season")
        return self

    def period_at(self, local: datetime) -> Period:
        for season in self.seasons:
            if local.month in season.months:
                for r in season.ranges:
                    if r.start <= local.hour < r.end:
                        return r.period
        return self.default_period


Share = Annotated[Decimal, Field(ge=0, le=1, max_digits=7, decimal_places=6)]
Cause = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]


class CreditPolicy(_Model):
    """Which events credit a lease for the time it was unusable, and how much:
    `share` x the lease's monthly space charges (slot rent, compartment rent,
    maintenance fee) / (days in the month x 24) per hour. An event type or
    cause not listed gives no credit."""

    emergencies: dict[Cause, Share] = Field(
        default_factory=dict, description="Emergency type -> share of the hourly charges"
    )
    outages: dict[Cause, Share] = Field(
        default_factory=dict, description="Outage cause -> share of the hourly charges"
    )

    @model_validator(mode="after")
    def _known_types(self) -> Self:
        unknown = sorted(set(self.emergencies) - set(EMERGENCY_TYPES))
        if unknown:
            raise ValueError(
                f"unknown emergency type(s): {', '.join(unknown)}"
                f" (known: {', '.join(EMERGENCY_TYPES)})"
            )
        return self

    def share(self, source: str, cause: str) -> Decimal:
        table = self.emergencies if source == "emergency" else self.outages
        return table.get(cause, ZERO)


class SpaceRent(_Model):
    """Monthly rents (CNY): a slot's position price wins over its type's."""

    positions: dict[str, Money] = Field(default_factory=dict)
    slot_types: dict[str, Money] = Field(default_factory=dict)
    compartment: Money = ZERO
    credits: CreditPolicy = CreditPolicy()


class TariffDefinition(_Model):
    energy: EnergyPrices
    rent: SpaceRent = SpaceRent()
    maintenance_fee: Money = Field(ZERO, description="CNY per lease per month")


@dataclass(frozen=True, slots=True)
class Tariff:
    id: int
    name: str
    version: int
    valid_from: datetime
    valid_to: datetime | None
    definition: TariffDefinition
    estimate_gaps: bool = False

    def valid_at(self, ts: datetime) -> bool:
        return self.valid_from <= ts and (self.valid_to is None or ts < self.valid_to)


def overlaps(
    a_from: datetime, a_to: datetime | None, b_from: datetime, b_to: datetime | None
) -> bool:
    """Whether [a_from, a_to) and [b_from, b_to) share an instant (None: open end)."""
    return (a_to is None or b_from < a_to) and (b_to is None or a_from < b_to)


def tariff_at(tariffs: Iterable[Tariff], ts: datetime) -> Tariff | None:
    return next((t for t in tariffs if t.valid_at(ts)), None)


class NoTariff(Exception):
    """No version of the tariff is valid at a time that needs pricing."""

    def __init__(self, name: str, at: datetime) -> None:
        super().__init__(f"no version of tariff {name!r} is valid at {at.isoformat()}")
        self.name = name
        self.at = at


@dataclass(frozen=True, slots=True)
class PricedPart:
    start: datetime
    end: datetime
    kwh: Decimal
    period: Period
    tariff: Tariff
    estimated: bool
    flags: frozenset[str] = frozenset()

    @property
    def price(self) -> Decimal:
        return self.tariff.definition.energy.prices[self.period]


def hour_bounds(start: datetime, end: datetime, tz: ZoneInfo) -> list[datetime]:
    """The local full hours strictly inside (start, end)."""
    out = []
    local = start.astimezone(tz).replace(minute=0, second=0, microsecond=0)
    t = local.astimezone(UTC)
    while t < end:
        if t > start:
            out.append(t)
        local = (t + timedelta(hours=1)).astimezone(tz).replace(minute=0, second=0, microsecond=0)
        nxt = local.astimezone(UTC)
        t = nxt if nxt > t else t + timedelta(hours=1)
    return out


def price_intervals(
    intervals: Iterable[Interval], tariffs: Sequence[Tariff], tz: ZoneInfo, name: str = ""
) -> list[PricedPart]:
    """Each interval cut at local hour boundaries and tariff changes, its energy
    shared pro rata by time, each part priced by the tariff valid at its start.

    The same parts and prices as cutting each interval at its own `hour_bounds`
    and looking each part up (`price_intervals_reference`), computed once for the
    whole span: the local hours of the span as one `Cuts`, the period of each
    local hour once per tariff version, the version by bisection."""
    ivs = [iv for iv in intervals if not (iv.kwh == 0 and iv.start == iv.end)]
    if not ivs:
        return []
    clock = Clock(tariffs, tz, min(iv.start for iv in ivs), max(iv.end for iv in ivs))
    changes = [t.valid_from for t in tariffs] + [t.valid_to for t in tariffs if t.valid_to]
    cuts = Cuts(clock.hours + changes)
    parts: list[PricedPart] = []
    for iv in ivs:
        for part in split_interval(iv, cuts):
            tariff, period = clock.at(part.start)
            if tariff is None or period is None:
                raise NoTariff(name or (tariffs[0].name if tariffs else "?"), part.start)
            flags = frozenset(part.flags)
            parts.append(
                PricedPart(
                    part.start, part.end, part.kwh, period, tariff, "estimated" in flags, flags
                )
            )
    return parts


@dataclass(slots=True)
class PeriodEnergy:
    """The kWh of a port in one (tariff version, period, estimated or not): the sum
    of the kWh of its priced parts above 0, in their order, from 0 (what summing
    `price_intervals`' parts gives, to the last digit), and the union of their flags."""

    tariff: Tariff  # the version of the first part
    period: Period
    estimated: bool
    kwh: Decimal
    flags: set[str]

    @property
    def price(self) -> Decimal:
        return self.tariff.definition.energy.prices[self.period]


def energy_by_period(
    intervals: Iterable[Interval], tariffs: Sequence[Tariff], tz: ZoneInfo, name: str = ""
) -> list[PeriodEnergy]:
    """The parts of `price_intervals` with kWh above 0 summed by (version id,
    period, estimated), in the order each first appears, without making the parts:
    an interval inside one local hour and version (nearly all) is looked up once
    (`mt.Pieces`) and added whole, as its one part would be; only one crossing an
    hour or a version change is cut, exactly as `price_intervals` cuts it. Raises
    `NoTariff` at the first part without a version, as it does."""
    ivs = [iv for iv in intervals if not (iv.kwh == 0 and iv.start == iv.end)]
    if not ivs:
        return []
    lo, hi = min(iv.start for iv in ivs), max(iv.end for iv in ivs)
    clock = Clock(tariffs, tz, lo, hi)
    changes = [t.valid_from for t in tariffs] + [t.valid_to for t in tariffs if t.valid_to]
    cuts = Cuts(clock.hours + changes)
    # The version and period change only at these instants (`Clock`).
    pieces = Pieces(lo, hi, clock.hours + changes, clock.at)
    sums: dict[tuple[int, Period, bool], PeriodEnergy] = {}
    for iv in ivs:
        i = pieces.find(iv.start, iv.end)
        if i >= 0:
            parts = [(iv.start, iv.kwh, pieces.values[i])]
        else:
            parts = [(p.start, p.kwh, clock.at(p.start)) for p in split_interval(iv, cuts)]
        estimated = Flag.ESTIMATED in iv.flags
        for start, kwh, (tariff, period) in parts:
            if tariff is None or period is None:
                raise NoTariff(name or (tariffs[0].name if tariffs else "?"), start)
            if kwh > 0:
                key = (tariff.id, period, estimated)
                acc = sums.get(key)
                if acc is None:
                    sums[key] = PeriodEnergy(tariff, period, estimated, ZERO + kwh, set(iv.flags))
                else:
                    acc.kwh += kwh
                    acc.flags |= iv.flags
    return list(sums.values())


class Clock:
    """The tariff version and time-of-use period at any instant of [lo, hi),
    worked out once per local hour and version instead of once per instant.

    `hours` are the local full hours inside (lo, hi) (`hour_bounds`): the local
    hour, and so the month, is the same from one to the next, so an instant has
    the period of the local hour it lies in. The version is found by bisection."""

    __slots__ = ("_hi", "_periods", "_starts", "_tz", "_versions", "hours")

    def __init__(self, tariffs: Sequence[Tariff], tz: ZoneInfo, lo: datetime, hi: datetime):
        self.hours = hour_bounds(lo, hi, tz)
        self._starts = [utc(lo), *self.hours]  # hour_bounds are in UTC
        self._hi = utc(hi)
        self._tz = tz
        self._versions = _Versions(tariffs)
        self._periods: dict[tuple[int, int], Period] = {}

    def at(self, ts: datetime) -> tuple[Tariff | None, Period | None]:
        """(version, period) at ts (lo <= ts < hi); (None, None) if no version is valid."""
        ts = utc(ts)
        tariff = self._versions.at(ts)
        if tariff is None:
            return None, None
        if not self._starts[0] <= ts < self._hi:  # outside the span: no shortcut
            return tariff, tariff.definition.energy.period_at(ts.astimezone(self._tz))
        key = (bisect_right(self._starts, ts) - 1, id(tariff))
        period = self._periods.get(key)
        if period is None:
            local = self._starts[key[0]].astimezone(self._tz)
            period = tariff.definition.energy.period_at(local)
            self._periods[key] = period
        return tariff, period


class _Versions:
    """`tariff_at` by bisection: the versions sorted by start (they do not overlap;
    if they do, the first valid in the given order wins, as in `tariff_at`)."""

    __slots__ = ("_all", "_disjoint", "_from", "_sorted", "_to")

    def __init__(self, tariffs: Sequence[Tariff]) -> None:
        self._all = tariffs
        self._sorted = sorted(tariffs, key=lambda t: t.valid_from)
        self._from = [utc(t.valid_from) for t in self._sorted]
        self._to = [None if t.valid_to is None else utc(t.valid_to) for t in self._sorted]
        self._disjoint = all(
            a.valid_to is not None and a.valid_to <= b.valid_from
            for a, b in zip(self._sorted, self._sorted[1:], strict=False)
        )

    def at(self, ts: datetime) -> Tariff | None:
        if not self._disjoint:
            return tariff_at(self._all, ts)
        ts = utc(ts)
        i = bisect_right(self._from, ts) - 1
        if i < 0:
            return None
        to = self._to[i]
        return self._sorted[i] if to is None or ts < to else None


def price_intervals_reference(
    intervals: Iterable[Interval], tariffs: Sequence[Tariff], tz: ZoneInfo, name: str = ""
) -> list[PricedPart]:
    """`price_intervals` interval by interval (slow; the definition the fast one
    is tested against)."""
    changes = [t.valid_from for t in tariffs] + [t.valid_to for t in tariffs if t.valid_to]
    parts: list[PricedPart] = []
    for iv in intervals:
        if iv.kwh == 0 and iv.start == iv.end:
            continue
        bounds = hour_bounds(iv.start, iv.end, tz) + changes
        for part in split_interval(iv, bounds):
            tariff = tariff_at(tariffs, part.start)
            if tariff is None:
                raise NoTariff(name or (tariffs[0].name if tariffs else "?"), part.start)
            period = tariff.definition.energy.period_at(part.start.astimezone(tz))
            estimated = "estimated" in part.flags
            parts.append(
                PricedPart(
                    part.start, part.end, part.kwh, period, tariff, estimated, frozenset(part.flags)
                )
            )
    return parts


def month_bounds(month: str, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[first instant, first instant of the next month) of 'YYYY-MM' in the site zone."""
    year, mon = (int(x) for x in month.split("-"))
    start = datetime(year, mon, 1, tzinfo=tz)
    nxt = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=tz)
    return start.astimezone(UTC), nxt.astimezone(UTC)


def service_days(
    spans: Iterable[tuple[datetime, datetime]], month: str, tz: ZoneInfo
) -> list[date]:
    """The local days of the month on which any in-service span [a, b) falls."""
    year, mon = (int(x) for x in month.split("-"))
    days = []
    for d in range(1, calendar.monthrange(year, mon)[1] + 1):
        day = date(year, mon, d)
        d0 = datetime.combine(day, time(), tzinfo=tz)
        d1 = datetime.combine(day + timedelta(days=1), time(), tzinfo=tz)
        if any(a < d1 and d0 < b for a, b in spans):
            days.append(day)
    return days


@dataclass(frozen=True, slots=True)
class RentPart:
    tariff: Tariff
    days: int
    days_in_month: int

    def prorate(self, monthly: Decimal) -> Decimal:
        return monthly * self.days / self.days_in_month


def rent_parts(
    days: Sequence[date], tariffs: Sequence[Tariff], tz: ZoneInfo, name: str = ""
) -> list[RentPart]:
    """Days in service grouped by the tariff valid at each day's local midnight
    (a tariff change mid-month prices each part of the month with its own)."""
    if not days:
        return []
    in_month = calendar.monthrange(days[0].year, days[0].month)[1]
    counts: dict[int, tuple[Tariff, int]] = {}
    for day in days:
        at = datetime.combine(day, time(), tzinfo=tz).astimezone(UTC)
        tariff = tariff_at(tariffs, at)
        if tariff is None:
            raise NoTariff(name or (tariffs[0].name if tariffs else "?"), at)
        t, n = counts.get(tariff.id, (tariff, 0))
        counts[tariff.id] = (t, n + 1)
    return [RentPart(t, n, in_month) for t, n in counts.values()]


def monthly_charges(
    definition: TariffDefinition,
    *,
    slot: bool,
    position: str | None,
    slot_type: str | None,
    compartment: bool,
) -> Decimal:
    """A lease's monthly space charges: slot rent, compartment rent, maintenance fee."""
    total = definition.maintenance_fee
    if slot:
        total += slot_rent(definition, position, slot_type)
    if compartment:
        total += definition.rent.compartment
    return total


def slot_rent(definition: TariffDefinition, position: str | None, slot_type: str | None) -> Decimal:
    rent = definition.rent
    if position is not None and position in rent.positions:
        return rent.positions[position]
    if slot_type is not None:
        return rent.slot_types.get(slot_type, ZERO)
    return ZERO
