"""Lighting schedules (节能): weekly rules, dusk/dawn steps, exceptions, overrides.

Pure: no I/O. The dispatcher (gateway/lighting.py) and the API build a `Plan`
from the database and ask this module what level applies when.

A schedule describes *nights*. The night of date D runs from local noon on D
to local noon on D+1; a weekly rule matches D's ISO weekday (1 = Monday), an
exception matches D itself. A night's steps resolve in order: the first step
to the first occurrence of its trigger at or after noon on D, each next step
to the first occurrence of its trigger strictly after the previous one (so
"23:00" then "01:00" crosses midnight, and "dawn" is the next morning's).
Steps that would land at or after noon on D+1 are dropped.

Triggers: "HH:MM" (local clock time in the schedule's time zone) or
"dusk"/"dawn" with an optional offset in minutes ("dusk+10", "dawn-15").
With `twilight: sunset` (the default) dusk is sunset and dawn is sunrise
(upper limb on the horizon, standard refraction); with `twilight: civil` they
are civil dusk/dawn (sun 6° below the horizon). Computed with astral.

Level: 0 switches the lamps off, 1..100 dims to that percentage.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from astral import Observer
from astral.sun import dawn as _civil_dawn
from astral.sun import dusk as _civil_dusk
from astral.sun import sunrise as _sunrise
from astral.sun import sunset as _sunset
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Level = Annotated[int, Field(ge=0, le=100, description="0 = off, 1..100 = dimmed to %")]
TRIGGER = re.compile(
    r"^(?:(?P<h>[01]\d|2[0-3]):(?P<m>[0-5]\d)|(?P<sun>dusk|dawn)(?P<off>[+-]\d{1,3})?)$"
)
MAX_OFFSET_MIN = 240
LOOKBACK = timedelta(days=3)  # how far back the current level is looked for


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Step(_Model):
    at: str = Field(
        description='"HH:MM" local time, or "dusk"/"dawn" with an optional offset in minutes'
        ' ("dusk+10", "dawn-15")',
        examples=["dusk", "23:00", "dawn-10"],
    )
    level: Level

    @field_validator("at")
    @classmethod
    def _trigger(cls, v: str) -> str:
        v = v.strip().lower()
        m = TRIGGER.match(v)
        if m is None:
            raise ValueError('must be "HH:MM", or "dusk"/"dawn" with an optional ±minutes offset')
        if m["off"] is not None and abs(int(m["off"])) > MAX_OFFSET_MIN:
            raise ValueError(f"offset beyond ±{MAX_OFFSET_MIN} minutes")
        return v

    @property
    def sun(self) -> Literal["dusk", "dawn"] | None:
        m = TRIGGER.match(self.at)
        assert m is not None
        s = m["sun"]
        return None if s is None else ("dusk" if s == "dusk" else "dawn")

    @property
    def offset(self) -> timedelta:
        m = TRIGGER.match(self.at)
        assert m is not None
        return timedelta(minutes=int(m["off"] or 0))

    @property
    def clock(self) -> time | None:
        m = TRIGGER.match(self.at)
        assert m is not None
        return None if m["h"] is None else time(int(m["h"]), int(m["m"]))


Steps = Annotated[list[Step], Field(min_length=1, max_length=48)]


class WeeklyRule(_Model):
    days: Annotated[
        list[Annotated[int, Field(ge=1, le=7)]],
        Field(min_length=1, max_length=7, description="ISO weekdays of the evening: 1 = Monday"),
    ] = [1, 2, 3, 4, 5, 6, 7]
    steps: Steps


class ScheduleException(_Model):
    date: dt.date = Field(description="The night that starts on this date (local)")
    off: bool = Field(False, description="Lamps stay off this night")
    steps: list[Step] = Field(default_factory=list, max_length=48)

    @model_validator(mode="after")
    def _one(self) -> Self:
        if self.off == bool(self.steps):
            raise ValueError("give either off: true or a list of steps")
        return self


class Schedule(_Model):
    timezone: str | None = Field(
        None, description="IANA time zone of the clock times; default: the site's"
    )
    twilight: Literal["sunset", "civil"] = Field(
        "sunset", description="dusk/dawn are sunset/sunrise, or civil dusk/dawn (sun 6° down)"
    )
    rules: Annotated[list[WeeklyRule], Field(max_length=14)]
    exceptions: Annotated[list[ScheduleException], Field(max_length=400)] = []

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "twilight": "sunset",
                    "rules": [
                        {
                            "days": [1, 2, 3, 4, 5, 6, 7],
                            "steps": [
                                {"at": "dusk", "level": 100},
                                {"at": "23:00", "level": 60},
                                {"at": "01:00", "level": 40},
                                {"at": "dawn", "level": 0},
                            ],
                        }
                    ],
                    "exceptions": [
                        {
                            "date": "2026-12-31",
                            "steps": [{"at": "dusk", "level": 100}, {"at": "dawn", "level": 0}],
                        }
                    ],
                }
            ]
        },
    )

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {v!r}") from None
        return v

    @field_validator("rules")
    @classmethod
    def _days_once(cls, v: list[WeeklyRule]) -> list[WeeklyRule]:
        days = [d for r in v for d in r.days]
        if len(days) != len(set(days)):
            raise ValueError("a weekday appears in more than one rule")
        return v

    @field_validator("exceptions")
    @classmethod
    def _dates_once(cls, v: list[ScheduleException]) -> list[ScheduleException]:
        dates = [e.date for e in v]
        if len(dates) != len(set(dates)):
            raise ValueError("a date appears in more than one exception")
        return v

    def night(self, day: date) -> list[Step] | None:
        """The steps of the night starting on `day`: [] for an 'off' night, None if
        no rule covers it (the level then stays as it was)."""
        for e in self.exceptions:
            if e.date == day:
                return [] if e.off else list(e.steps)
        for r in self.rules:
            if day.isoweekday() in r.days:
                return list(r.steps)
        return None


@dataclass(frozen=True, slots=True)
class Site:
    """Where and in which time zone a group's lamps are."""

    lat: float
    lon: float
    tz: ZoneInfo


@dataclass(frozen=True, slots=True)
class Override:
    level: int
    start: datetime
    until: datetime


@dataclass(frozen=True, slots=True, order=True)
class StepAt:
    instant: datetime  # aware, UTC
    level: int
    source: str = "schedule"  # schedule | override | override-end | schedule-start


@dataclass(frozen=True, slots=True)
class Plan:
    """All that decides a group's level: its schedule (from valid_from), overrides."""

    site: Site
    schedule: Schedule | None = None
    valid_from: datetime | None = None
    overrides: tuple[Override, ...] = ()

    @property
    def tz(self) -> ZoneInfo:
        if self.schedule is not None and self.schedule.timezone:
            return ZoneInfo(self.schedule.timezone)
        return self.site.tz


# --------------------------------------------------------------------------- sun


def sun_time(
    lat: float,
    lon: float,
    day: date,
    which: Literal["dusk", "dawn"],
    tz: ZoneInfo,
    twilight: str = "sunset",
) -> datetime | None:
    """Dusk or dawn (in UTC) on the local date `day` in `tz`; None where the sun
    does not set or rise that day (polar day or night)."""
    observer = Observer(lat, lon)
    try:
        if twilight == "civil":
            civil = _civil_dusk if which == "dusk" else _civil_dawn
            got = civil(observer, day, tzinfo=tz)
        else:
            horizon = _sunset if which == "dusk" else _sunrise
            got = horizon(observer, day, tzinfo=tz)
    except ValueError:
        return None
    return got.astimezone(UTC)


def _sun_after(
    plan: Plan, which: Literal["dusk", "dawn"], after: datetime, strict: bool
) -> datetime | None:
    assert plan.schedule is not None
    local = after.astimezone(plan.tz).date()
    for d in range(-1, 3):
        day = local + timedelta(days=d)
        t = sun_time(plan.site.lat, plan.site.lon, day, which, plan.tz, plan.schedule.twilight)
        if t is not None and (t > after or (not strict and t == after)):
            return t
    return None


def _resolve(plan: Plan, step: Step, after: datetime, strict: bool) -> datetime | None:
    clock = step.clock
    if clock is not None:
        local = after.astimezone(plan.tz)
        for d in range(3):
            cand = datetime.combine(local.date() + timedelta(days=d), clock, plan.tz)
            cand_utc = cand.astimezone(UTC)
            if cand_utc > after or (not strict and cand_utc == after):
                return cand_utc
        return None
    sun = step.sun
    assert sun is not None
    # The offset shifts the event: find the event after (after - offset).
    base = _sun_after(plan, sun, after - step.offset, strict)
    return None if base is None else (base + step.offset).astimezone(UTC)


def night_steps(plan: Plan, day: date) -> list[StepAt]:
    """The resolved steps of the night starting on local `day`."""
    assert plan.schedule is not None
    steps = plan.schedule.night(day)
    if steps is None:
        return []
    start = datetime.combine(day, time(12), plan.tz).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(12), plan.tz).astimezone(UTC)
    if not steps:  # an 'off' night
        return [StepAt(start, 0)]
    out: list[StepAt] = []
    prev, strict = start, False
    for step in steps:
        at = _resolve(plan, step, prev, strict)
        if at is None or at >= end:
            continue
        out.append(StepAt(at, step.level))
        prev, strict = at, True
    return out


def schedule_steps(plan: Plan, start: datetime, end: datetime) -> list[StepAt]:
    """The schedule's own steps with start <= instant < end, in order."""
    if plan.schedule is None:
        return []
    tz = plan.tz
    first = start.astimezone(tz).date() - timedelta(days=1)
    last = end.astimezone(tz).date()
    out: list[StepAt] = []
    day = first
    while day <= last:
        out.extend(s for s in night_steps(plan, day) if start <= s.instant < end)
        day += timedelta(days=1)
    return sorted(out)


def _override_at(plan: Plan, t: datetime) -> Override | None:
    """The override in force at t: the newest-started one covering t."""
    best: Override | None = None
    for o in plan.overrides:
        if o.start <= t < o.until and (best is None or o.start >= best.start):
            best = o
    return best


def _schedule_level_at(plan: Plan, t: datetime) -> int | None:
    before = schedule_steps(plan, t - LOOKBACK, t + timedelta(microseconds=1))
    return before[-1].level if before else None


def level_at(plan: Plan, t: datetime) -> int | None:
    """The level that should apply at t (None: nothing says; leave the lamps be)."""
    o = _override_at(plan, t)
    if o is not None:
        return o.level
    if plan.valid_from is not None and t < plan.valid_from:
        return None
    return _schedule_level_at(plan, t)


def plan_steps(plan: Plan, start: datetime, end: datetime) -> list[StepAt]:
    """Every instant in (start, end] where the group's level is (re)set, in order:
    schedule steps not hidden by an override, an override's start and its end
    (back to what the schedule says then), and the schedule's valid_from."""
    points: dict[datetime, str] = {}
    lo = start + timedelta(microseconds=1)
    hi = end + timedelta(microseconds=1)
    for s in schedule_steps(plan, lo, hi):
        if plan.valid_from is None or s.instant >= plan.valid_from:
            points.setdefault(s.instant, "schedule")
    if plan.valid_from is not None and start < plan.valid_from <= end and plan.schedule:
        points[plan.valid_from] = "schedule-start"
    for ov in plan.overrides:
        if start < ov.start <= end:
            points[ov.start] = "override"
        if start < ov.until <= end:
            points.setdefault(ov.until, "override-end")
    out: list[StepAt] = []
    for t in sorted(points):
        source = points[t]
        o = _override_at(plan, t)
        if source == "schedule" and o is not None:
            continue  # hidden by an override
        if source == "override" and (o is None or o.start != t):
            continue  # hidden by a newer override
        level = level_at(plan, t)
        if level is None:
            continue
        out.append(StepAt(t, level, source))
    return out


def due_steps(plan: Plan, last_dispatched: datetime | None, now: datetime) -> list[StepAt]:
    """What to apply now, given the newest step already dispatched.

    The steps in (last_dispatched, now] collapse to the newest one: after a
    restart the current level is applied once, the night is not replayed, and
    nothing at or before last_dispatched is applied again. With nothing
    dispatched yet, the newest step of the last LOOKBACK applies."""
    start = last_dispatched if last_dispatched is not None else now - LOOKBACK
    steps = plan_steps(plan, start, now)
    return steps[-1:]


def next_step(plan: Plan, after: datetime, horizon: timedelta = timedelta(days=8)) -> StepAt | None:
    """The first step strictly after `after` (within `horizon`)."""
    window = timedelta(days=1)
    t = after
    while t < after + horizon:
        steps = plan_steps(plan, t, t + window)
        if steps:
            return steps[0]
        t += window
    return None


def mean_location(
    points: Iterable[tuple[float | None, float | None]],
) -> tuple[float, float] | None:
    """Mean lat/lon of the points that have both (None when none has)."""
    known = [(lat, lon) for lat, lon in points if lat is not None and lon is not None]
    if not known:
        return None
    return sum(p[0] for p in known) / len(known), sum(p[1] for p in known) / len(known)


# --------------------------------------------------------------------------- energy


@dataclass(frozen=True, slots=True)
class Energy:
    used_kwh: float
    baseline_kwh: float
    lit_hours: float

    @property
    def saved_kwh(self) -> float:
        return self.baseline_kwh - self.used_kwh


def counter_used(values: Sequence[float]) -> float:
    """kWh used from a cumulative counter's readings in time order: the sum of the
    rises. A fall (meter reset or replacement) counts nothing for that interval and
    counting resumes from the new value (what was used across it is not known)."""
    used = 0.0
    for prev, cur in itertools.pairwise(values):
        if cur >= prev:
            used += cur - prev
    return used


def lit_hours(samples: Sequence[tuple[datetime, bool]], end: datetime, max_gap: timedelta) -> float:
    """Hours lit from on/off samples in time order: each sample holds until the
    next (or `end`), at most `max_gap` (a longer silence counts as unknown, not lit)."""
    total = timedelta()
    for i, (ts, on) in enumerate(samples):
        nxt = samples[i + 1][0] if i + 1 < len(samples) else end
        if on:
            total += min(max(nxt - ts, timedelta()), max_gap)
    return total.total_seconds() / 3600


def energy(used_kwh: float, lit_h: float, rated_w: float) -> Energy:
    return Energy(used_kwh=used_kwh, baseline_kwh=rated_w * lit_h / 1000, lit_hours=lit_h)
