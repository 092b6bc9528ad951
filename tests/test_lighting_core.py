"""Lighting schedules, pure: sun times, step generation, exceptions, overrides, due_steps."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from gateway.core.lighting import (
    Override,
    Plan,
    Schedule,
    Site,
    StepAt,
    counter_used,
    due_steps,
    energy,
    level_at,
    lit_hours,
    mean_location,
    next_step,
    night_steps,
    plan_steps,
    sun_time,
)

SH = ZoneInfo("Asia/Shanghai")
BEIJING = Site(39.9042, 116.4074, SH)
MINUTE = timedelta(minutes=1)

NIGHTLY = Schedule.model_validate(
    {
        "rules": [
            {
                "days": [1, 2, 3, 4, 5, 6, 7],
                "steps": [
                    {"at": "dusk", "level": 100},
                    {"at": "23:00", "level": 60},
                    {"at": "01:00", "level": 40},
                    {"at": "dawn-10", "level": 0},
                ],
            }
        ]
    }
)


def local(y: int, mo: int, d: int, h: int, mi: int = 0, tz: ZoneInfo = SH) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=tz).astimezone(UTC)


# --------------------------------------------------------------------------- sun


@pytest.mark.parametrize(
    ("lat", "lon", "tz", "day", "which", "twilight", "expected"),
    [
        # astral's documented example (London, 22 April 2009, UTC): sunrise 04:50,
        # sunset 19:08; civil dawn 04:13, civil dusk 19:46.
        (51.5, -0.116, "UTC", date(2009, 4, 22), "dawn", "sunset", datetime(2009, 4, 22, 4, 50)),
        (51.5, -0.116, "UTC", date(2009, 4, 22), "dusk", "sunset", datetime(2009, 4, 22, 19, 8)),
        (51.5, -0.116, "UTC", date(2009, 4, 22), "dawn", "civil", datetime(2009, 4, 22, 4, 13)),
        (51.5, -0.116, "UTC", date(2009, 4, 22), "dusk", "civil", datetime(2009, 4, 22, 19, 46)),
        # Beijing, summer solstice 2024 (NOAA solar calculator / timeanddate.com,
        # local time UTC+8): sunrise 04:46, sunset 19:46.
        (39.9042, 116.4074, "Asia/Shanghai", date(2024, 6, 21), "dawn", "sunset",
         datetime(2024, 6, 21, 4, 46)),
        (39.9042, 116.4074, "Asia/Shanghai", date(2024, 6, 21), "dusk", "sunset",
         datetime(2024, 6, 21, 19, 46)),
    ],
)  # fmt: skip
def test_sun_times_match_published_values_within_a_minute(
    lat: float,
    lon: float,
    tz: str,
    day: date,
    which: str,
    twilight: str,
    expected: datetime,
) -> None:
    zone = ZoneInfo(tz)
    got = sun_time(lat, lon, day, which, zone, twilight)  # type: ignore[arg-type]
    assert got is not None
    want = expected.replace(tzinfo=zone)
    # Published values are rounded to the minute: within a minute of the reference.
    assert abs(got - want) <= MINUTE, (got.astimezone(zone), want)


def test_polar_night_has_no_dusk() -> None:
    assert sun_time(78.2, 15.6, date(2024, 12, 21), "dusk", ZoneInfo("UTC")) is None


# --------------------------------------------------------------------------- steps


def test_a_night_crosses_midnight_in_order() -> None:
    plan = Plan(site=BEIJING, schedule=NIGHTLY)
    steps = night_steps(plan, date(2024, 6, 21))
    assert [s.level for s in steps] == [100, 60, 40, 0]
    dusk = sun_time(39.9042, 116.4074, date(2024, 6, 21), "dusk", SH)
    dawn = sun_time(39.9042, 116.4074, date(2024, 6, 22), "dawn", SH)
    assert dusk is not None
    assert dawn is not None
    assert [s.instant for s in steps] == [
        dusk,
        local(2024, 6, 21, 23),
        local(2024, 6, 22, 1),
        dawn - timedelta(minutes=10),
    ]
    # Asia/Shanghai has no DST: every night of a year has its four steps, in order,
    # and a year of steps strictly increases.
    year = plan_steps(plan, local(2025, 1, 1, 0), local(2026, 1, 1, 0))
    assert len(year) == 365 * 4
    assert all(a.instant < b.instant for a, b in itertools.pairwise(year))


def test_a_step_that_falls_beyond_the_night_is_dropped() -> None:
    """Steps resolve in the listed order: 17:00, then the first dusk after it. In
    December dusk (~16:53) comes before 17:00, so the next one is after the night's
    end (noon) and the step is dropped rather than moved to another night."""
    sched = Schedule.model_validate(
        {"rules": [{"steps": [{"at": "17:00", "level": 100}, {"at": "dusk", "level": 80}]}]}
    )
    steps = night_steps(Plan(site=BEIJING, schedule=sched), date(2024, 12, 21))
    assert [(s.instant, s.level) for s in steps] == [(local(2024, 12, 21, 17), 100)]


def test_weekday_rules_and_exceptions() -> None:
    sched = Schedule.model_validate(
        {
            "rules": [
                {"days": [1, 2, 3, 4, 5], "steps": [{"at": "19:00", "level": 80}]},
                {"days": [6, 7], "steps": [{"at": "19:00", "level": 100}]},
            ],
            "exceptions": [
                {"date": "2024-06-19", "off": True},
                {"date": "2024-06-20", "steps": [{"at": "20:00", "level": 30}]},
            ],
        }
    )
    plan = Plan(site=BEIJING, schedule=sched)
    # 2024-06-17 is a Monday.
    got = plan_steps(plan, local(2024, 6, 17, 0), local(2024, 6, 24, 0))
    assert [(s.instant, s.level) for s in got] == [
        (local(2024, 6, 17, 19), 80),
        (local(2024, 6, 18, 19), 80),
        (local(2024, 6, 19, 12), 0),  # the 'off' night: off from noon
        (local(2024, 6, 20, 20), 30),
        (local(2024, 6, 21, 19), 80),
        (local(2024, 6, 22, 19), 100),
        (local(2024, 6, 23, 19), 100),
    ]


def test_schedule_in_another_time_zone() -> None:
    sched = Schedule.model_validate(
        {"timezone": "Europe/London", "rules": [{"steps": [{"at": "22:00", "level": 50}]}]}
    )
    plan = Plan(site=BEIJING, schedule=sched)
    steps = night_steps(plan, date(2024, 6, 21))  # BST, UTC+1
    assert [s.instant for s in steps] == [datetime(2024, 6, 21, 21, 0, tzinfo=UTC)]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rules": [{"steps": [{"at": "25:00", "level": 10}]}]}, "at"),
        ({"rules": [{"steps": [{"at": "dusk+999", "level": 10}]}]}, "at"),
        ({"rules": [{"steps": [{"at": "dusk", "level": 101}]}]}, "level"),
        ({"rules": [{"steps": []}]}, "steps"),
        ({"timezone": "Mars/Olympus", "rules": []}, "timezone"),
        ({"rules": [{"days": [1], "steps": [{"at": "dusk", "level": 1}]}] * 2}, "rules"),
        ({"rules": [], "exceptions": [{"date": "2024-01-01"}]}, "exceptions"),
    ],
)
def test_invalid_schedules_name_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Schedule.model_validate(body)
    locs = [str(part) for e in info.value.errors() for part in e["loc"]]
    assert field in locs, locs


# --------------------------------------------------------------------------- overrides


def test_override_wins_then_the_schedule_resumes() -> None:
    o = Override(level=100, start=local(2024, 6, 22, 0, 30), until=local(2024, 6, 22, 2))
    plan = Plan(site=BEIJING, schedule=NIGHTLY, overrides=(o,))
    got = plan_steps(plan, local(2024, 6, 21, 22), local(2024, 6, 22, 3))
    assert [(s.instant, s.level, s.source) for s in got] == [
        (local(2024, 6, 21, 23), 60, "schedule"),
        (local(2024, 6, 22, 0, 30), 100, "override"),
        # 01:00 (40 %) is hidden by the override; at its end the schedule's level returns.
        (local(2024, 6, 22, 2), 40, "override-end"),
    ]
    assert level_at(plan, local(2024, 6, 22, 1, 30)) == 100
    assert level_at(plan, local(2024, 6, 22, 2, 30)) == 40


def test_newer_override_wins_over_an_older_one() -> None:
    a = Override(level=100, start=local(2024, 6, 22, 0), until=local(2024, 6, 22, 4))
    b = Override(level=0, start=local(2024, 6, 22, 1), until=local(2024, 6, 22, 2))
    plan = Plan(site=BEIJING, schedule=NIGHTLY, overrides=(a, b))
    got = plan_steps(plan, local(2024, 6, 21, 23, 30), local(2024, 6, 22, 4, 30))
    assert [(s.instant, s.level) for s in got] == [
        (local(2024, 6, 22, 0), 100),
        (local(2024, 6, 22, 1), 0),
        (local(2024, 6, 22, 2), 100),  # b ended, a still in force
        (local(2024, 6, 22, 4), 40),
    ]


def test_override_without_a_schedule() -> None:
    o = Override(level=70, start=local(2024, 6, 22, 0), until=local(2024, 6, 22, 1))
    plan = Plan(site=BEIJING, overrides=(o,))
    got = plan_steps(plan, local(2024, 6, 21, 0), local(2024, 6, 23, 0))
    assert [(s.instant, s.level) for s in got] == [(local(2024, 6, 22, 0), 70)]


def test_a_new_schedule_applies_its_current_level_from_valid_from() -> None:
    plan = Plan(site=BEIJING, schedule=NIGHTLY, valid_from=local(2024, 6, 21, 23, 30))
    got = plan_steps(plan, local(2024, 6, 21, 12), local(2024, 6, 22, 2))
    assert [(s.instant, s.level, s.source) for s in got] == [
        (local(2024, 6, 21, 23, 30), 60, "schedule-start"),
        (local(2024, 6, 22, 1), 40, "schedule"),
    ]
    assert level_at(plan, local(2024, 6, 21, 23)) is None  # before it: not ours to say


# --------------------------------------------------------------------------- restarts


def _run_with_restarts(plan: Plan, wakes: list[datetime]) -> list[StepAt]:
    """Simulate the dispatcher: at each wake, apply due_steps and remember the newest."""
    applied: list[StepAt] = []
    last: datetime | None = None
    for now in wakes:
        for step in due_steps(plan, last, now):
            applied.append(step)
            last = step.instant
    return applied


NIGHT = date(2024, 6, 21)
DUSK = sun_time(39.9042, 116.4074, NIGHT, "dusk", SH)
DAWN = sun_time(39.9042, 116.4074, date(2024, 6, 22), "dawn", SH)


@pytest.mark.parametrize(
    ("case", "last", "now", "expected"),
    [
        # Down from before dusk to 23:30: dusk (100) and 23:00 (60) collapse to 60.
        ("missed two steps", local(2024, 6, 21, 12), local(2024, 6, 21, 23, 30), [60]),
        # Dispatched 23:00 just before a crash, back at 23:30: nothing to do.
        ("nothing new", local(2024, 6, 21, 23), local(2024, 6, 21, 23, 30), []),
        # Back exactly at the 01:00 step: it applies once.
        ("back on a step", local(2024, 6, 21, 23), local(2024, 6, 22, 1), [40]),
        # Dispatched 01:00, back at 00:59 the next... (clock not beyond): nothing again.
        ("same instant", local(2024, 6, 22, 1), local(2024, 6, 22, 1), []),
        # Never dispatched, first start at 02:00: the current level (40).
        ("first start", None, local(2024, 6, 22, 2), [40]),
        # Down all night until after dawn: only 'off'.
        ("down all night", local(2024, 6, 21, 12), local(2024, 6, 22, 8), [0]),
    ],
)
def test_due_steps_after_a_restart(
    case: str, last: datetime | None, now: datetime, expected: list[int]
) -> None:
    plan = Plan(site=BEIJING, schedule=NIGHTLY)
    got = due_steps(plan, last, now)
    assert [s.level for s in got] == expected, case
    for s in got:
        assert last is None or s.instant > last
        assert s.instant <= now


def test_a_restart_in_the_middle_of_the_night_neither_skips_nor_repeats() -> None:
    plan = Plan(site=BEIJING, schedule=NIGHTLY)
    assert DUSK is not None
    assert DAWN is not None
    step_instants = [DUSK, local(2024, 6, 21, 23), local(2024, 6, 22, 1), DAWN - 10 * MINUTE]
    # Uninterrupted: first start at noon applies the current level (off since the
    # morning's dawn), then the dispatcher wakes exactly at each step.
    clean = _run_with_restarts(plan, [local(2024, 6, 21, 12), *step_instants])
    assert [s.level for s in clean] == [0, 100, 60, 40, 0]
    # Crash after 23:00, back at 00:10, then wake at the remaining steps: 60 is not
    # applied again, 40 and 0 are not skipped.
    wakes = [local(2024, 6, 21, 12), DUSK, step_instants[1], local(2024, 6, 22, 0, 10)]
    wakes += step_instants[2:]
    restarted = _run_with_restarts(plan, wakes)
    assert [s.level for s in restarted] == [0, 100, 60, 40, 0]
    assert len({s.instant for s in restarted}) == len(restarted)
    # Down from 22:00 to 01:30: the current level (40) at once, then dawn.
    wakes = [local(2024, 6, 21, 12), DUSK, local(2024, 6, 22, 1, 30), step_instants[3]]
    assert [s.level for s in _run_with_restarts(plan, wakes)] == [0, 100, 40, 0]


def test_next_step_is_the_next_instant() -> None:
    plan = Plan(site=BEIJING, schedule=NIGHTLY)
    nxt = next_step(plan, local(2024, 6, 21, 23))
    assert nxt is not None
    assert nxt.instant == local(2024, 6, 22, 1)
    assert next_step(Plan(site=BEIJING), local(2024, 6, 21, 23)) is None


# --------------------------------------------------------------------------- energy


def test_energy_arithmetic() -> None:
    assert counter_used([10.0, 10.5, 11.0, 0.2, 0.7]) == pytest.approx(1.5)
    t0 = datetime(2024, 6, 21, 12, tzinfo=UTC)
    samples = [(t0, True), (t0 + timedelta(hours=1), True), (t0 + timedelta(hours=2), False)]
    assert lit_hours(samples, t0 + timedelta(hours=5), timedelta(hours=1)) == pytest.approx(2)
    # A long silence while on counts only up to max_gap.
    assert lit_hours([(t0, True)], t0 + timedelta(hours=10), timedelta(hours=1)) == 1
    e = energy(used_kwh=0.5, lit_h=10, rated_w=100)
    assert e.baseline_kwh == pytest.approx(1.0)
    assert e.saved_kwh == pytest.approx(0.5)
    assert mean_location([(30.0, 100.0), (None, 1.0), (32.0, 102.0)]) == (31.0, 101.0)
    assert mean_location([(None, None)]) is None
