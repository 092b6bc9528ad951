"""The maintenance rules as tables: deadlines, overdue, transitions, policy, schedules."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from gateway.core import maintenance as mt
from gateway.core.auth import Role

CST = ZoneInfo("Asia/Shanghai")
CAL = mt.Calendar(
    CST,
    holidays=frozenset({date(2026, 10, 1), date(2026, 10, 2)}),
    workdays=frozenset({date(2026, 10, 10)}),
)  # a Saturday worked (调休)
TABLE = mt.deadline_table(mt.DEFAULT_DEADLINES)


def local(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=CST)


@pytest.mark.parametrize(
    ("start", "span", "due"),
    [
        # 2026-11-23 is a Monday
        (local(2026, 11, 23, 10), "1h", local(2026, 11, 23, 11)),
        (local(2026, 11, 23, 10), "24h", local(2026, 11, 24, 10)),
        (local(2026, 11, 23, 10), "3wd", local(2026, 11, 26, 10)),
        (local(2026, 11, 27, 10), "2wd", local(2026, 12, 1, 10)),  # Fri + 2 -> Tue
        (local(2026, 11, 28, 10), "1wd", local(2026, 12, 1, 0)),  # Sat: all of Monday
        (local(2026, 11, 27, 10), "2d", local(2026, 11, 29, 10)),  # calendar days
        (local(2026, 9, 30, 9), "1wd", local(2026, 10, 5, 9)),  # over two holidays + weekend
        (local(2026, 10, 9, 9), "1wd", local(2026, 10, 10, 9)),  # onto a worked Saturday
        (local(2026, 11, 23, 10), "90m", local(2026, 11, 23, 11, 30)),
    ],
)
def test_deadline_arithmetic(start: datetime, span: str, due: datetime) -> None:
    assert CAL.after(start, mt.Span.parse(span)) == due


def test_working_days_use_local_dates() -> None:
    # Friday 20:00 UTC is Saturday 04:00 in Shanghai: counted from Monday midnight
    start = datetime(2026, 11, 27, 20, tzinfo=UTC)
    assert CAL.add_working_days(start, 1) == local(2026, 12, 1, 0)


@pytest.mark.parametrize(
    ("priority", "respond", "resolve"),
    [
        (mt.Priority.URGENT, local(2026, 11, 27, 11), local(2026, 11, 28, 10)),
        (mt.Priority.SERIOUS, None, local(2026, 12, 2, 10)),
        (mt.Priority.GENERAL, None, local(2026, 11, 28, 10)),
        (mt.Priority.SINGLE_LAMP_OUT, None, local(2026, 12, 1, 10)),
    ],
)
def test_default_deadlines_per_priority(
    priority: mt.Priority, respond: datetime | None, resolve: datetime | None
) -> None:
    due = mt.deadlines(priority, local(2026, 11, 27, 10), TABLE, CAL)  # a Friday
    assert (due.response_due, due.resolution_due) == (respond, resolve)


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"nope.respond": "1h"}, "unknown priority"),
        ({"urgent.fix": "1h"}, ".respond or .resolve"),
        ({"urgent.respond": "soon"}, "not a time limit"),
    ],
)
def test_bad_deadline_config_is_named(config: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        mt.deadline_table(config)


def test_deadline_config_overrides_and_clears() -> None:
    table = mt.deadline_table(
        {**mt.DEFAULT_DEADLINES, "urgent.resolve": "", "general.respond": "4h"}
    )
    assert table[mt.Priority.URGENT] == mt.Limits(mt.Span(1, "h"), None)
    assert table[mt.Priority.GENERAL] == mt.Limits(mt.Span(4, "h"), mt.Span(24, "h"))


T = local(2026, 11, 23, 10)
H = timedelta(hours=1)


@pytest.mark.parametrize(
    ("state", "assigned", "started", "resolved", "now", "expect"),
    [
        (mt.State.OPEN, None, None, None, T + 0.5 * H, (False, False)),
        (mt.State.OPEN, None, None, None, T + 2 * H, (True, False)),
        (mt.State.ASSIGNED, T + 0.5 * H, None, None, T + 2 * H, (False, False)),
        (mt.State.ASSIGNED, T + 1.5 * H, None, None, T + 2 * H, (True, False)),
        (mt.State.IN_PROGRESS, T + 2 * H, T + 0.5 * H, None, T + 3 * H, (False, False)),
        (mt.State.IN_PROGRESS, T, T, None, T + 25 * H, (False, True)),
        (mt.State.RESOLVED, T, T, T + 23 * H, T + 99 * H, (False, False)),
        (mt.State.CLOSED, T, T, T + 25 * H, T + 99 * H, (False, True)),
        (mt.State.CANCELLED, None, None, None, T + 99 * H, (False, False)),
    ],
)
def test_overdue(
    state: mt.State,
    assigned: datetime | None,
    started: datetime | None,
    resolved: datetime | None,
    now: datetime,
    expect: tuple[bool, bool],
) -> None:
    late = mt.overdue(
        state=state,
        response_due=T + H,
        resolution_due=T + 24 * H,
        assigned_at=assigned,
        started_at=started,
        resolved_at=resolved,
        now=now,
    )
    assert (late.response, late.resolution) == expect
    assert late.any == any(expect)


S = mt.State
ME, OTHER = 7, 8


@pytest.mark.parametrize(
    ("current", "target", "role", "assignee", "outcome"),
    [
        (S.OPEN, S.ASSIGNED, Role.OPERATOR, None, None),
        (S.OPEN, S.ASSIGNED, Role.MAINTAINER, None, "forbidden"),
        (S.OPEN, S.IN_PROGRESS, Role.ADMIN, None, "illegal"),
        (S.OPEN, S.RESOLVED, Role.OPERATOR, None, "illegal"),
        (S.ASSIGNED, S.IN_PROGRESS, Role.MAINTAINER, ME, None),
        (S.ASSIGNED, S.IN_PROGRESS, Role.MAINTAINER, OTHER, "forbidden"),
        (S.ASSIGNED, S.CANCELLED, Role.MAINTAINER, ME, "forbidden"),
        (S.ASSIGNED, S.CANCELLED, Role.OPERATOR, ME, None),
        (S.IN_PROGRESS, S.RESOLVED, Role.MAINTAINER, ME, None),
        (S.IN_PROGRESS, S.RESOLVED, Role.OPERATOR, ME, None),
        (S.RESOLVED, S.CLOSED, Role.MAINTAINER, ME, "forbidden"),
        (S.RESOLVED, S.CLOSED, Role.OPERATOR, ME, None),
        (S.RESOLVED, S.IN_PROGRESS, Role.OPERATOR, ME, None),
        (S.CLOSED, S.IN_PROGRESS, Role.ADMIN, ME, "illegal"),
        (S.CANCELLED, S.OPEN, Role.ADMIN, None, "illegal"),
        (S.IN_PROGRESS, S.RESOLVED, Role.TENANT, ME, "forbidden"),
    ],
)
def test_transitions(
    current: mt.State, target: mt.State, role: Role, assignee: int | None, outcome: str | None
) -> None:
    def attempt() -> None:
        mt.check_transition(
            current, target, role=role, user_id=ME, assignee=assignee, new_assignee=ME
        )

    if outcome is None:
        attempt()
    else:
        with pytest.raises(mt.TransitionRefused) as refused:
            attempt()
        assert refused.value.reason == outcome


def test_assigning_needs_an_assignee() -> None:
    with pytest.raises(mt.TransitionRefused, match="needs an assignee"):
        mt.check_transition(S.OPEN, S.ASSIGNED, role=Role.ADMIN, user_id=1, assignee=None)


@pytest.mark.parametrize(
    ("severity", "fault", "priority"),
    [
        ("critical", "smoke", mt.Priority.URGENT),
        ("major", "leakage", mt.Priority.SERIOUS),
        ("minor", "threshold:pm25_ugm3", mt.Priority.GENERAL),
        ("warning", "tilt", None),
        ("major", "lamp_failure", mt.Priority.SINGLE_LAMP_OUT),
        ("unknown", "x", None),
    ],
)
def test_auto_open_policy(severity: str, fault: str, priority: mt.Priority | None) -> None:
    assert mt.auto_open_priority(mt.DEFAULT_AUTO_OPEN, severity=severity, fault=fault) == priority


def test_auto_open_policy_is_configurable() -> None:
    policy = {**mt.DEFAULT_AUTO_OPEN, "severity:major": "none", "fault:door_open": "urgent"}
    assert mt.auto_open_priority(policy, severity="major", fault="leakage") is None
    assert (
        mt.auto_open_priority(policy, severity="warning", fault="door_open") is mt.Priority.URGENT
    )
    with pytest.raises(ValueError, match="not a priority"):
        mt.check_auto_open_policy({"severity:major": "asap"})
    with pytest.raises(ValueError, match="keys are"):
        mt.check_auto_open_policy({"major": "urgent"})


D0 = date(2026, 12, 1)


@pytest.mark.parametrize(
    ("last", "today", "expect"),
    [
        (None, date(2026, 11, 30), None),  # not started yet
        (None, D0, (0, D0, date(2026, 12, 8))),
        (0, date(2026, 12, 7), None),  # period 0 already generated
        (0, date(2026, 12, 8), (1, date(2026, 12, 8), date(2026, 12, 15))),
        (0, date(2026, 12, 30), (4, date(2026, 12, 29), date(2027, 1, 5))),  # missed skipped
        (4, date(2026, 12, 30), None),  # after a restart: nothing twice
    ],
)
def test_inspection_schedule(
    last: int | None, today: date, expect: tuple[int, date, date] | None
) -> None:
    period = mt.due_period(starts_on=D0, every_days=7, last_period=last, today=today)
    assert (None if period is None else (period.index, period.starts, period.ends)) == expect


def test_next_due() -> None:
    assert mt.next_due(starts_on=D0, every_days=7, last_period=None) == D0
    assert mt.next_due(starts_on=D0, every_days=7, last_period=2) == date(2026, 12, 22)


def test_checklist_problems() -> None:
    checklist = ["pole upright", "cabinet locked"]
    assert mt.checklist_problems(checklist, {"pole upright": 1, "cabinet locked": 1}) == []
    assert mt.checklist_problems(checklist, {"pole upright": 1, "paint": 1}) == [
        "no result for checklist item 'cabinet locked'",
        "'paint' is not on the checklist",
    ]


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "image/png"),
        (b"%PDF-1.7\n", "application/pdf"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"GIF89a\x01\x00", "image/gif"),
        (b"MZ\x90\x00", None),  # an executable named photo.jpg
        (b"<svg xmlns=", None),  # SVG can carry script: refused
        (b"", None),
    ],
)
def test_sniff_content_type(head: bytes, kind: str | None) -> None:
    assert mt.sniff_content_type(head) == kind


def test_deadlines_setting_is_merged_over_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16, item 10: giving only the urgent limits left serious orders with none."""
    from gateway.adapters.work_orders import MaintenanceRules
    from gateway.config import Settings

    monkeypatch.setenv(
        "POLEGW_WORKORDER_DEADLINES", '{"urgent.respond": "2h", "urgent.resolve": "24h"}'
    )
    settings = Settings(database_url="postgresql://unused/")
    assert settings.workorder_deadlines == {**mt.DEFAULT_DEADLINES, "urgent.respond": "2h"}
    table = MaintenanceRules.from_settings(settings).deadlines
    assert table[mt.Priority.URGENT].respond == mt.Span(2, "h")
    assert table[mt.Priority.SERIOUS].resolve == mt.Span(3, "wd")
    # "" removes one default limit, and only that one
    monkeypatch.setenv("POLEGW_WORKORDER_DEADLINES", '{"serious.resolve": ""}')
    table = MaintenanceRules.from_settings(Settings(database_url="postgresql://unused/")).deadlines
    assert table[mt.Priority.SERIOUS].resolve is None
    assert table[mt.Priority.URGENT].respond == mt.Span(1, "h")


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ('{"urgnt.respond": "2h"}', "'urgnt.respond': unknown priority 'urgnt' (one of"),
        ('{"urgent.respnd": "2h"}', "'urgent.respnd': must end in .respond or .resolve"),
        ('{"urgent.respond": "2 hours"}', "'urgent.respond': not a time limit: '2 hours'"),
    ],
)
def test_deadlines_setting_refuses_bad_keys_naming_them(
    monkeypatch: pytest.MonkeyPatch, given: str, named: str
) -> None:
    from pydantic import ValidationError

    from gateway.config import Settings

    monkeypatch.setenv("POLEGW_WORKORDER_DEADLINES", given)
    with pytest.raises(ValidationError, match="workorder_deadlines") as caught:
        Settings(database_url="postgresql://unused/")
    assert named in str(caught.value)
