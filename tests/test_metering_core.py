"""Metering rules: counter deltas that survive wrap, reset, glitches and replacement."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from gateway.core.metering import (
    Cuts,
    Flag,
    Interval,
    Reading,
    Replacement,
    clip,
    counter_modulus,
    meter,
    meter_reference,
    shown_kwh,
    split_interval,
    to_decimal,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)
Q = timedelta(minutes=15)
M16 = counter_modulus("uint16", 0.01)  # 655.36 kWh
M32 = counter_modulus("uint32", 0.01)  # 42,949,672.96 kWh


def series(*values: float | str) -> list[Reading]:
    return [Reading(T0 + i * Q, Decimal(str(v))) for i, v in enumerate(values)]


def kwh(values: list[Decimal]) -> list[str]:
    return [str(v.normalize()) if v else "0" for v in values]


def test_modulus_from_the_register_type() -> None:
    assert str(M16) == "655.36"
    assert str(M32) == "42949672.96"
    assert counter_modulus("int16", 1) == 65536
    assert counter_modulus("float32", 0.1) is None
    assert counter_modulus(None) is None
    assert to_decimal(1000.01) == Decimal("1000.01")


# (case, readings, modulus, rated W, expected kWh per interval, expected flags per interval)
CASES = [
    ("plain", ("10", "10.5", "11"), None, 4000, ["0.5", "0.5"], [set(), set()]),
    (
        "wrap 16-bit",
        ("655.2", "655.35", "0.3"),
        M16,
        4000,
        ["0.15", "0.31"],
        [set(), {Flag.WRAPPED}],
    ),
    (
        "wrap 32-bit",
        ("42949672.5", "0.4", "0.9"),
        M32,
        4000,
        ["0.86", "0.5"],
        [{Flag.WRAPPED}, set()],
    ),
    ("no modulus: a drop is a reset", ("655.2", "0.3"), None, 4000, ["0.3"], [{Flag.RESET}]),
    (
        "reset to near zero",
        ("500", "500.5", "0.2", "0.7"),
        M32,
        4000,
        ["0.5", "0.2", "0.5"],
        [set(), {Flag.RESET}, set()],
    ),
    (
        "momentary zero is a glitch",
        ("100", "0", "100.6", "101"),
        M32,
        4000,
        ["0.6", "0.4"],
        [{Flag.GLITCH}, set()],
    ),
    ("two zeros are a glitch", ("100", "0", "0", "100.6"), M32, 4000, ["0.6"], [{Flag.GLITCH}]),
    ("spike is a glitch", ("100", "9999", "100.5"), M32, 4000, ["0.5"], [{Flag.GLITCH}]),
    (
        "cap at rated power",
        ("100", "102", "102.1"),
        None,
        4000,
        ["1", "0.1"],
        [{Flag.CAPPED}, set()],
    ),
    ("flat counter", ("7", "7", "7"), None, 4000, ["0", "0"], [set(), set()]),
]


@pytest.mark.parametrize(
    ("values", "modulus", "rated", "expected", "flags"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_counter_rules(
    values: tuple[str, ...],
    modulus: Decimal | None,
    rated: int,
    expected: list[str],
    flags: list[set[Flag]],
) -> None:
    out = meter(series(*values), rated_w=rated, modulus=modulus)
    assert kwh([iv.kwh for iv in out.intervals]) == expected
    assert [set(iv.flags) for iv in out.intervals] == flags
    assert all(iv.kwh >= 0 for iv in out.intervals)
    assert not out.gaps


def test_capped_excess_is_reported_not_billed() -> None:
    out = meter(series("100", "102"), rated_w=4000)  # 4 kW x 15 min = 1 kWh
    (iv,) = out.intervals
    assert iv.kwh == 1
    assert iv.excess_kwh == 1
    assert Flag.CAPPED in iv.flags


def test_replacement_uses_the_recorded_readings() -> None:
    readings = series("1200", "1200.4", "3.1", "3.5")
    swap = Replacement(T0 + Q + timedelta(minutes=5), Decimal("1200.6"), Decimal("3.0"))
    out = meter(readings, rated_w=4000, modulus=M32, replacements=[swap])
    assert kwh([iv.kwh for iv in out.intervals]) == ["0.4", "0.3", "0.4"]
    assert Flag.REPLACED in out.intervals[1].flags
    assert Flag.RESET not in out.intervals[1].flags


def test_without_the_replacement_record_it_would_look_like_a_reset() -> None:
    out = meter(series("1200", "1200.4", "3.1"), rated_w=4000, modulus=M32)
    assert out.intervals[1].kwh == 1  # 3.1 kWh in 15 min > 4 kW: the excess goes to review
    assert out.intervals[1].excess_kwh == Decimal("2.1")
    assert {Flag.RESET, Flag.CAPPED} <= out.intervals[1].flags


def test_gap_is_reported_and_measured_when_the_counter_continues() -> None:
    readings = [
        Reading(T0, Decimal("10")),
        Reading(T0 + Q, Decimal("10.25")),
        Reading(T0 + 5 * Q, Decimal("11.25")),  # an hour without data
        Reading(T0 + 6 * Q, Decimal("11.5")),
    ]
    out = meter(readings, rated_w=4000, max_gap=timedelta(minutes=30), estimate_gaps=True)
    assert [(g.start, g.duration) for g in out.gaps] == [(T0 + Q, timedelta(hours=1))]
    assert kwh([iv.kwh for iv in out.intervals]) == ["0.25", "1", "0.25"]
    assert out.intervals[1].flags == {Flag.GAP}


@pytest.mark.parametrize(("estimate", "expected"), [(False, "0.2"), (True, "1")])
def test_reset_across_a_gap_is_estimated_only_if_asked(estimate: bool, expected: str) -> None:
    readings = [
        Reading(T0, Decimal("10")),
        Reading(T0 + Q, Decimal("10.25")),  # 1 kW
        Reading(T0 + 5 * Q, Decimal("0.2")),  # reset during the hour without data
        Reading(T0 + 6 * Q, Decimal("0.45")),  # 1 kW
    ]
    out = meter(readings, rated_w=4000, max_gap=timedelta(minutes=30), estimate_gaps=estimate)
    gap = out.intervals[1]
    assert str(gap.kwh.normalize()) == expected
    assert (Flag.ESTIMATED in gap.flags) is estimate
    assert {Flag.GAP, Flag.RESET} <= gap.flags
    assert len(out.gaps) == 1


def test_split_and_clip_share_energy_by_time() -> None:
    (iv,) = meter(series("0", "1"), rated_w=10_000).intervals
    parts = split_interval(iv, [T0 + timedelta(minutes=5)])
    assert [p.kwh for p in parts] == [Decimal(1) / 3, Decimal(2) / 3]
    inside = clip(iv, T0 + timedelta(minutes=10), T0 + timedelta(hours=1))
    assert inside is not None
    assert inside.kwh == Decimal(1) / 3
    assert clip(iv, T0 + Q, T0 + 2 * Q) is None


def test_a_real_jump_that_holds_is_capped_not_a_glitch() -> None:
    out = meter(series("100", "101.5", "101.5", "101.5"), rated_w=4000, modulus=M32)
    assert [iv.kwh for iv in out.intervals] == [1, 0, 0]
    assert out.intervals[0].flags == {Flag.CAPPED}
    assert out.intervals[0].excess_kwh == Decimal("0.5")


def test_cuts_in_other_zones_cut_where_the_plain_list_does() -> None:
    """`Cuts` bisects in UTC; instants and intervals of other zones (a site's local
    day bounds, the database's ZoneInfo('Etc/UTC')) cut at the same instants and
    keep the instants' own objects as the parts' edges."""
    cst, etc = ZoneInfo("Asia/Shanghai"), ZoneInfo("Etc/UTC")
    days = [datetime(2026, 11, d, tzinfo=cst) for d in range(1, 5)]
    hours = [datetime(2026, 10, 31, 16, tzinfo=UTC) + timedelta(hours=h) for h in range(80)]
    cuts = Cuts(days + hours)
    for start_h in range(0, 75, 7):
        start = datetime(2026, 10, 31, 16, 7, tzinfo=etc) + timedelta(hours=start_h)
        iv = Interval(start, start + timedelta(hours=5, minutes=3), Decimal("5.03"))
        fast, plain = split_interval(iv, cuts), split_interval(iv, days + hours)
        assert fast == plain
        assert [p.start.tzinfo for p in fast] == [p.start.tzinfo for p in plain]
        assert len(fast) == 6


def test_a_reading_above_the_modulus_is_no_wrap() -> None:
    """A counter of 16 bits (655.36 kWh) read as 700 (a spike, a float register)
    then 0.3: 0.3 + 655.36 - 700 is negative, so no wrap: a reset, never a
    negative interval (found by the ledger's property test)."""
    for meter_fn in (meter, meter_reference):
        out = meter_fn(series("700", "0.3", "0.5"), rated_w=4000, modulus=M16)
        assert all(iv.kwh >= 0 for iv in out.intervals), out.intervals
        assert Flag.WRAPPED not in out.intervals[0].flags
        assert Flag.RESET in out.intervals[0].flags


def test_shown_kwh_agrees_for_sums_that_agree_to_the_micro_kwh() -> None:
    # Two ways of summing one interval's energy (the ledger's pieces, the readings'
    # shares) differ in the last digits; to the Wh they must print the same.
    assert shown_kwh(Decimal("3.0314999999")) == shown_kwh(Decimal("3.0315000001"))
    assert shown_kwh(Decimal("3.0315000001")) == Decimal("3.032")
    assert shown_kwh(Decimal("115.819999")) == Decimal("115.820")
