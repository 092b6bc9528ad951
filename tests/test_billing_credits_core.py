"""The credit arithmetic (gateway/core/billing_credits.py) without a database."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.core import billing_credits as bc
from gateway.core import tariffs as tf

T0 = datetime(2026, 11, 1, tzinfo=UTC)  # the month, in UTC for simplicity
T1 = datetime(2026, 12, 1, tzinfo=UTC)


def tariff(
    tid: int, start: datetime, end: datetime | None, credits: Mapping[str, object]
) -> tf.Tariff:
    definition = tf.TariffDefinition.model_validate(
        {
            "energy": {"prices": {"flat": "1"}},
            "rent": {"slot_types": {"standard": "300"}, "compartment": "60", "credits": credits},
            "maintenance_fee": "0",
        }
    )
    return tf.Tariff(tid, "t", tid, start, end, definition)


FULL = {"emergencies": {"power_outage": "1"}, "outages": {"maintenance": "0.5"}}
TARIFFS = [tariff(1, datetime(2026, 1, 1, tzinfo=UTC), None, FULL)]


def lease(**kw: object) -> bc.LeaseScope:
    values: dict[str, object] = {
        "lease_id": 1,
        "pole_id": "P1",
        "port_id": "P1-port1",
        "slot_id": "P1-arm",
        "slot_position": None,
        "slot_type": "standard",
        "compartment_id": None,
        "in_service": ((T0, T1),),
    } | kw
    return bc.LeaseScope(**values)  # type: ignore[arg-type]


def event(
    source: bc.Source = "emergency", cause: str = "power_outage", **kw: object
) -> bc.Unusable:
    values: dict[str, object] = {
        "source": source,
        "id": 1,
        "cause": cause,
        "pole_id": "P1",
        "port_id": None,
        "slot_id": None,
        "start": T0 + timedelta(days=4),
        "end": T0 + timedelta(days=4, hours=4),
    } | kw
    return bc.Unusable(**values)  # type: ignore[arg-type]


def test_four_hours_of_a_300_a_month_slot() -> None:
    (c,) = bc.credits(lease(), [event()], TARIFFS, "2026-11")
    # 300 / (30 x 24) = 0.41666.. per hour; x 4 = 1.6666.. -> -1.67
    assert c.hours == 4
    assert c.amount == Decimal("-1.67")
    assert c.hourly.quantize(Decimal("0.000001")) == Decimal("-0.416667")


def test_half_a_fen_rounds_away_from_zero() -> None:
    # 0.5 x 300 x 86.4 s / (30 x 86400 s) = 0.005 exactly -> -0.01
    ev = event("outage", "maintenance", end=T0 + timedelta(days=4, seconds=86.4))
    (c,) = bc.credits(lease(), [ev], TARIFFS, "2026-11")
    assert c.amount == Decimal("-0.01")


def test_scope_causes_and_overlaps() -> None:
    other_port = event("outage", "maintenance", id=2, port_id="P1-port2")
    other_pole = event(id=3, pole_id="P2")
    not_listed = event("outage", "tenant_request", id=4)
    my_slot = event("outage", "maintenance", id=5, slot_id="P1-arm", port_id="P1-port9")
    out = bc.credits(lease(), [other_port, other_pole, not_listed, my_slot], TARIFFS, "2026-11")
    assert [c.event.id for c in out] == [5]
    # An outage inside an emergency is credited once, to the earlier event.
    inner = event("outage", "maintenance", id=6, start=T0 + timedelta(days=4, hours=1))
    out = bc.credits(lease(), [inner, event()], TARIFFS, "2026-11")
    assert [(c.event.id, c.hours) for c in out] == [(1, Decimal(4))]
    # A cause the policy does not list does not use up the time of a later one.
    later = event("outage", "maintenance", id=7, start=T0 + timedelta(days=4, hours=2))
    out = bc.credits(lease(), [not_listed, later], TARIFFS, "2026-11")
    assert [(c.event.id, c.hours) for c in out] == [(7, Decimal(2))]


def test_split_at_a_tariff_change_and_only_in_service() -> None:
    change = T0 + timedelta(days=4, hours=1)
    two = [
        tariff(1, datetime(2026, 1, 1, tzinfo=UTC), change, FULL),
        tariff(2, change, None, {"emergencies": {"power_outage": "0.5"}}),
    ]
    started = lease(in_service=((T0 + timedelta(days=4, minutes=30), T1),))
    out = bc.credits(started, [event()], two, "2026-11")
    assert [(c.tariff.id, c.hours, c.share) for c in out] == [
        (1, Decimal("0.5"), 1),
        (2, 3, Decimal("0.5")),
    ]
    with pytest.raises(tf.NoTariff):
        bc.credits(lease(), [event()], [tariff(1, change, None, FULL)], "2026-11")


def test_the_policy_names_known_emergency_types_only() -> None:
    with pytest.raises(ValidationError, match="unknown emergency type"):
        tf.CreditPolicy.model_validate({"emergencies": {"power_cut": "1"}})
    with pytest.raises(ValidationError):
        tf.CreditPolicy.model_validate({"outages": {"maintenance": "1.5"}})


hours = st.integers(min_value=0, max_value=30 * 24)


@given(st.lists(st.tuples(hours, hours, st.sampled_from(["emergency", "outage"])), max_size=8))
def test_never_more_than_the_time_in_service(spans: list[tuple[int, int, str]]) -> None:
    in_service = ((T0 + timedelta(days=3), T0 + timedelta(days=20)),)
    events = [
        event(
            source,  # type: ignore[arg-type]
            "power_outage" if source == "emergency" else "maintenance",
            id=i,
            start=T0 + timedelta(hours=min(a, b)),
            end=T0 + timedelta(hours=max(a, b) + 1),
        )
        for i, (a, b, source) in enumerate(spans)
    ]
    out = bc.credits(lease(in_service=in_service), events, TARIFFS, "2026-11")
    windows = bc.intersect([(e.start, e.end) for e in events], in_service)
    union = bc.subtract(windows, [])
    merged: list[bc.Window] = []
    for a, b in union:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    covered = sum((b - a for a, b in merged), timedelta())
    assert sum((c.seconds for c in out), Decimal(0)) == Decimal(covered.total_seconds())
    assert all(c.amount < 0 for c in out)
