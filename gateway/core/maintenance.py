"""Maintenance (维护管理): work-order priorities, deadlines, the state machine,
the alarm → work-order policy and inspection schedules.

Pure: no I/O and no clock of its own (callers pass `now`), so every rule is
tested as a table without a database.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from enum import StrEnum

from gateway.core.auth import MANAGERS, Role


class Priority(StrEnum):
    URGENT = "urgent"
    SERIOUS = "serious"
    GENERAL = "general"
    SINGLE_LAMP_OUT = "single_lamp_out"


class State(StrEnum):
    OPEN = "open"
    ASSIGNED = "assigned"
    IN_PROGRESS = "in_progress"
    RESOLVED = "resolved"
    CLOSED = "closed"
    CANCELLED = "cancelled"


class Kind(StrEnum):
    REPAIR = "repair"
    INSPECTION = "inspection"


# States in which an order still counts as "not finished" for the
# one-order-per-(pole, fault) rule (the partial unique index mirrors this).
FINISHED = frozenset({State.CLOSED, State.CANCELLED})

# --------------------------------------------------------------------------- deadlines

DEFAULT_DEADLINES: dict[str, str] = {
    "urgent.respond": "1h",
    "urgent.resolve": "24h",
    "serious.resolve": "3wd",
    "general.resolve": "24h",
    "single_lamp_out.resolve": "2wd",
}

_SPAN = re.compile(r"^\s*(\d+)\s*(m|h|d|wd)\s*$")


@dataclass(frozen=True, slots=True)
class Span:
    """A time limit: minutes, hours, calendar days, or working days ("wd")."""

    amount: int
    unit: str  # "m" | "h" | "d" | "wd"

    @classmethod
    def parse(cls, text: str) -> Span:
        m = _SPAN.match(text)
        if m is None:
            raise ValueError(f"not a time limit: {text!r} (use e.g. 90m, 1h, 2d, 3wd)")
        return cls(int(m.group(1)), m.group(2))


@dataclass(frozen=True, slots=True)
class Limits:
    respond: Span | None = None
    resolve: Span | None = None


@dataclass(frozen=True, slots=True)
class Calendar:
    """Working days: Monday to Friday, minus `holidays`, plus `workdays`
    (weekend days worked in exchange for a holiday, 调休). Dates are local to `tz`."""

    tz: tzinfo
    holidays: frozenset[date] = frozenset()
    workdays: frozenset[date] = frozenset()

    def is_working_day(self, day: date) -> bool:
        if day in self.workdays:
            return True
        return day.weekday() < 5 and day not in self.holidays

    def add_working_days(self, start: datetime, days: int) -> datetime:
        """`days` whole working days after `start`, at the same local time of day.
        A start on a non-working day counts from the next working day's midnight."""
        local = start.astimezone(self.tz)
        day, clock = local.date(), local.timetz().replace(tzinfo=None)
        if not self.is_working_day(day):
            while not self.is_working_day(day):
                day += timedelta(days=1)
            clock = time(0)
        for _ in range(days):
            day += timedelta(days=1)
            while not self.is_working_day(day):
                day += timedelta(days=1)
        return datetime.combine(day, clock, self.tz)

    def after(self, start: datetime, span: Span) -> datetime:
        if span.unit == "wd":
            return self.add_working_days(start, span.amount)
        minutes = {"m": 1, "h": 60, "d": 24 * 60}[span.unit] * span.amount
        return start + timedelta(minutes=minutes)


def deadline_table(config: Mapping[str, str]) -> dict[Priority, Limits]:
    """Parse the setting (`"<priority>.<respond|resolve>": "<span>"`, an empty
    span meaning no limit) into limits per priority; a bad key or span raises
    ValueError naming it."""
    respond: dict[Priority, Span | None] = dict.fromkeys(Priority)
    resolve: dict[Priority, Span | None] = dict.fromkeys(Priority)
    for key, value in config.items():
        name, _, which = key.partition(".")
        try:
            priority = Priority(name)
        except ValueError:
            known = ", ".join(p.value for p in Priority)
            raise ValueError(
                f"deadline {key!r}: unknown priority {name!r} (one of {known})"
            ) from None
        if which not in ("respond", "resolve"):
            raise ValueError(f"deadline {key!r}: must end in .respond or .resolve")
        try:
            span = Span.parse(value) if value.strip() else None
        except ValueError as exc:
            raise ValueError(f"deadline {key!r}: {exc}") from None
        (respond if which == "respond" else resolve)[priority] = span
    return {p: Limits(respond[p], resolve[p]) for p in Priority}


@dataclass(frozen=True, slots=True)
class Deadlines:
    response_due: datetime | None
    resolution_due: datetime | None


def deadlines(
    priority: Priority, opened: datetime, table: Mapping[Priority, Limits], cal: Calendar
) -> Deadlines:
    limits = table.get(priority, Limits())
    return Deadlines(
        cal.after(opened, limits.respond) if limits.respond else None,
        cal.after(opened, limits.resolve) if limits.resolve else None,
    )


@dataclass(frozen=True, slots=True)
class Overdue:
    response: bool
    resolution: bool

    @property
    def any(self) -> bool:
        return self.response or self.resolution


def _missed(due: datetime | None, done: datetime | None, now: datetime) -> bool:
    if due is None:
        return False
    return (done or now) > due


def overdue(
    *,
    state: State,
    response_due: datetime | None,
    resolution_due: datetime | None,
    assigned_at: datetime | None,
    started_at: datetime | None,
    resolved_at: datetime | None,
    now: datetime,
) -> Overdue:
    """A deadline is missed when its milestone came after it, or has not come
    and the deadline has passed. The response is the first of assignment and
    start; the resolution is `resolved_at`. Cancelled orders are never overdue.
    (`work_orders.OVERDUE_SQL` is the same rule in SQL.)"""
    if state is State.CANCELLED:
        return Overdue(False, False)
    responded = min((t for t in (assigned_at, started_at) if t is not None), default=None)
    return Overdue(_missed(response_due, responded, now), _missed(resolution_due, resolved_at, now))


# --------------------------------------------------------------------------- state machine

TRANSITIONS: dict[State, frozenset[State]] = {
    State.OPEN: frozenset({State.ASSIGNED, State.CANCELLED}),
    # assigned -> assigned: reassignment
    State.ASSIGNED: frozenset({State.ASSIGNED, State.IN_PROGRESS, State.CANCELLED}),
    State.IN_PROGRESS: frozenset({State.ASSIGNED, State.RESOLVED, State.CANCELLED}),
    # resolved -> in_progress: the fix was not accepted (reopened)
    State.RESOLVED: frozenset({State.CLOSED, State.IN_PROGRESS}),
    State.CLOSED: frozenset(),
    State.CANCELLED: frozenset(),
}

# What an assignee who is a maintainer may do to their own order.
ASSIGNEE_MOVES = frozenset(
    {(State.ASSIGNED, State.IN_PROGRESS), (State.IN_PROGRESS, State.RESOLVED)}
)


class TransitionRefused(Exception):
    """`illegal`: the state machine has no such move (HTTP 409);
    `forbidden`: the move exists but not for this caller (HTTP 403)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def may_work_on(role: Role, user_id: int, assignee: int | None) -> bool:
    """Whether the caller may add notes, attachments and inspection records:
    managers on any order, a maintainer on orders assigned to them."""
    return role in MANAGERS or (role is Role.MAINTAINER and assignee == user_id)


def check_transition(
    current: State,
    target: State,
    *,
    role: Role,
    user_id: int,
    assignee: int | None,
    new_assignee: int | None = None,
) -> None:
    """Raise TransitionRefused unless `role`/`user_id` may move an order from
    `current` to `target`. Moving to `assigned` needs `new_assignee`."""
    if target not in TRANSITIONS[current]:
        raise TransitionRefused("illegal", f"a work order cannot go from {current} to {target}")
    if target is State.ASSIGNED and new_assignee is None:
        raise TransitionRefused("illegal", "moving to assigned needs an assignee")
    if role in MANAGERS:
        return
    if role is Role.MAINTAINER and (current, target) in ASSIGNEE_MOVES and assignee == user_id:
        return
    raise TransitionRefused(
        "forbidden",
        f"only managers may move a work order from {current} to {target}"
        " (maintainers may start and resolve orders assigned to them)",
    )


def milestone_column(target: State) -> str | None:
    """The timestamp column a transition to `target` sets."""
    return {
        State.ASSIGNED: "assigned_at",
        State.IN_PROGRESS: "started_at",
        State.RESOLVED: "resolved_at",
        State.CLOSED: "closed_at",
        State.CANCELLED: "closed_at",
    }.get(target)


# --------------------------------------------------------------------------- alarm policy

DEFAULT_AUTO_OPEN: dict[str, str] = {
    "fault:lamp_failure": "single_lamp_out",
    "severity:critical": "urgent",
    "severity:major": "serious",
    "severity:minor": "general",
    "severity:warning": "none",
}


def auto_open_priority(policy: Mapping[str, str], *, severity: str, fault: str) -> Priority | None:
    """Which priority an alarm's work order gets, or None for no work order.
    A `fault:<fault>` entry wins over `severity:<severity>`; "none" opens nothing;
    an alarm matching no entry opens nothing."""
    value = policy.get(f"fault:{fault}")
    if value is None:
        value = policy.get(f"severity:{severity}")
    if value is None or value == "none":
        return None
    return Priority(value)


def check_auto_open_policy(policy: Mapping[str, str]) -> None:
    for key, value in policy.items():
        if not key.startswith(("fault:", "severity:")):
            raise ValueError(f"auto-open rule {key!r}: keys are fault:<fault> or severity:<level>")
        if value != "none" and value not in Priority.__members__.values():
            raise ValueError(f"auto-open rule {key!r}: {value!r} is not a priority or none")


# --------------------------------------------------------------------------- inspections


@dataclass(frozen=True, slots=True)
class Period:
    index: int  # 0 for the period starting on the plan's first day
    starts: date
    ends: date  # exclusive


def period_of(starts_on: date, every_days: int, index: int) -> Period:
    first = starts_on + timedelta(days=index * every_days)
    return Period(index, first, first + timedelta(days=every_days))


def due_period(
    *, starts_on: date, every_days: int, last_period: int | None, today: date
) -> Period | None:
    """The period whose inspection order should be generated now, or None.

    Only the current period is generated: periods missed while the service was
    down are skipped rather than generated late in a burst. A period already
    generated (`last_period` at or past it) is never generated again, so a
    restart does not double up."""
    if every_days < 1:
        raise ValueError("every_days must be at least 1")
    if today < starts_on:
        return None
    current = (today - starts_on).days // every_days
    if last_period is not None and last_period >= current:
        return None
    return period_of(starts_on, every_days, current)


def next_due(*, starts_on: date, every_days: int, last_period: int | None) -> date:
    """The first day on which a new period is due."""
    if last_period is None:
        return starts_on
    return period_of(starts_on, every_days, last_period + 1).starts


def checklist_problems(checklist: Iterable[str], results: Mapping[str, object]) -> list[str]:
    """What is wrong with an inspection result against its checklist: every
    item answered, nothing extra."""
    items = list(checklist)
    problems = [f"no result for checklist item {i!r}" for i in items if i not in results]
    problems += [f"{k!r} is not on the checklist" for k in results if k not in items]
    return problems


# --------------------------------------------------------------------------- attachments

_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"%PDF-", 0, "application/pdf"),
    (b"WEBP", 8, "image/webp"),
)


def sniff_content_type(head: bytes) -> str | None:
    """The content type of a photo or PDF from its first bytes; None for anything
    else (the declared type of an upload is not trusted)."""
    for magic, offset, kind in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            if kind == "image/webp" and not head.startswith(b"RIFF"):
                continue
            return kind
    return None
