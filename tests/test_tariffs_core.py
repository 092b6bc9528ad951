"""Tariffs: time-of-use periods, versions, pricing across boundaries, rent proration."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.core.metering import Flag, Interval, clip, clip_all
from gateway.core.tariffs import (
    Clock,
    NoTariff,
    Period,
    PeriodEnergy,
    PricedPart,
    Tariff,
    TariffDefinition,
    energy_by_period,
    money,
    month_bounds,
    overlaps,
    price_intervals,
    price_intervals_reference,
    rent_parts,
    service_days,
    slot_rent,
)

CST = ZoneInfo("Asia/Shanghai")

TOU = {
    "energy": {
        "prices": {"sharp": "1.2", "peak": "1.0", "flat": "0.6", "valley": "0.3"},
        "default_period": "flat",
        "seasons": [
            {
                "months": [7, 8, 11],
                "ranges": [
                    {"period": "valley", "start": 0, "end": 8},
                    {"period": "peak", "start": 8, "end": 11},
                    {"period": "sharp", "start": 11, "end": 12},
                    {"period": "peak", "start": 18, "end": 22},
                ],
            },
            {"months": [1, 2], "ranges": [{"period": "valley", "start": 0, "end": 6}]},
        ],
    },
    "rent": {"positions": {"top": "500"}, "slot_types": {"standard": "300"}, "compartment": "90"},
    "maintenance_fee": "60",
}


def tariff(tid: int, start: datetime, end: datetime | None, data: object = None) -> Tariff:
    return Tariff(tid, "city", tid, start, end, TariffDefinition.model_validate(data or TOU), False)


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=CST).astimezone(UTC)


@pytest.mark.parametrize(
    ("when", "period"),
    [
        (datetime(2026, 11, 3, 3, 0, tzinfo=CST), Period.VALLEY),
        (datetime(2026, 11, 3, 8, 0, tzinfo=CST), Period.PEAK),
        (datetime(2026, 11, 3, 11, 59, tzinfo=CST), Period.SHARP),
        (datetime(2026, 11, 3, 14, 0, tzinfo=CST), Period.FLAT),  # not listed: default
        (datetime(2026, 11, 3, 21, 59, tzinfo=CST), Period.PEAK),
        (datetime(2026, 1, 3, 8, 0, tzinfo=CST), Period.FLAT),  # another season
        (datetime(2026, 1, 3, 5, 0, tzinfo=CST), Period.VALLEY),
        (datetime(2026, 4, 3, 3, 0, tzinfo=CST), Period.FLAT),  # no season: default
    ],
)
def test_period_by_month_and_hour(when: datetime, period: Period) -> None:
    assert TariffDefinition.model_validate(TOU).energy.period_at(when) is period


@pytest.mark.parametrize(
    ("energy", "message"),
    [
        (
            {
                "prices": {"flat": "1"},
                "seasons": [{"months": [1], "ranges": [{"period": "peak", "start": 8, "end": 9}]}],
            },
            r"no price for period\(s\): peak",
        ),
        (
            {
                "prices": {"flat": "1"},
                "seasons": [
                    {
                        "months": [1],
                        "ranges": [
                            {"period": "flat", "start": 8, "end": 10},
                            {"period": "flat", "start": 9, "end": 11},
                        ],
                    }
                ],
            },
            "overlap",
        ),
        (
            {
                "prices": {"flat": "1"},
                "seasons": [{"months": [1], "ranges": []}, {"months": [1], "ranges": []}],
            },
            "more than one",
        ),
        (
            {
                "prices": {"flat": "1"},
                "seasons": [{"months": [1], "ranges": [{"period": "flat", "start": 22, "end": 6}]}],
            },
            "start must be before end",
        ),
        ({"prices": {"flat": "-1"}}, "greater than or equal"),
    ],
)
def test_bad_definitions_are_refused(energy: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TariffDefinition.model_validate({"energy": energy})


def test_flat_tariff_is_the_one_period_case() -> None:
    flat = tariff(1, local(2026, 1, 1), None, {"energy": {"prices": {"flat": "0.8"}}})
    iv = Interval(local(2026, 11, 3, 7, 30), local(2026, 11, 3, 9, 30), Decimal(4))
    parts = price_intervals([iv], [flat], CST)
    assert {p.period for p in parts} == {Period.FLAT}
    assert sum(p.kwh * p.price for p in parts) == Decimal("3.2")


def test_an_interval_crossing_a_period_boundary_is_split_pro_rata() -> None:
    t = tariff(1, local(2026, 1, 1), None)
    # 07:45-08:15 local: half valley (0.3), half peak (1.0).
    iv = Interval(local(2026, 11, 3, 7, 45), local(2026, 11, 3, 8, 15), Decimal(2))
    parts = price_intervals([iv], [t], CST)
    assert [(p.period, p.kwh) for p in parts] == [
        (Period.VALLEY, Decimal(1)),
        (Period.PEAK, Decimal(1)),
    ]
    assert money(sum((p.kwh * p.price for p in parts), Decimal(0))) == Decimal("1.30")


def test_a_tariff_change_mid_interval_prices_each_part_with_its_own() -> None:
    change = local(2026, 11, 16)
    old = tariff(1, local(2026, 1, 1), change, {"energy": {"prices": {"flat": "0.5"}}})
    new = tariff(2, change, None, {"energy": {"prices": {"flat": "0.7"}}})
    iv = Interval(change - timedelta(minutes=10), change + timedelta(minutes=30), Decimal(4))
    parts = price_intervals([iv], [old, new], CST)
    assert [(p.tariff.id, p.kwh, p.price) for p in parts] == [
        (1, Decimal(1), Decimal("0.5")),
        (2, Decimal(3), Decimal("0.7")),
    ]


def test_no_valid_tariff_is_an_error_not_a_free_kwh() -> None:
    t = tariff(1, local(2026, 11, 16), None)
    iv = Interval(local(2026, 11, 3), local(2026, 11, 3, 0, 15), Decimal(1))
    with pytest.raises(NoTariff, match="city"):
        price_intervals([iv], [t], CST, "city")


def test_overlap_of_validity() -> None:
    a, b, c = local(2026, 1, 1), local(2026, 6, 1), local(2026, 12, 1)
    assert overlaps(a, None, b, c)
    assert overlaps(a, c, b, None)
    assert not overlaps(a, b, b, c)  # end is exclusive
    assert not overlaps(b, c, a, b)


def test_month_bounds_are_local_midnights() -> None:
    start, end = month_bounds("2026-11", CST)
    assert start == datetime(2026, 10, 31, 16, tzinfo=UTC)
    assert end == datetime(2026, 11, 30, 16, tzinfo=UTC)
    assert month_bounds("2026-12", CST)[1] == datetime(2026, 12, 31, 16, tzinfo=UTC)


def test_rent_is_prorated_by_days_in_service_and_split_at_a_tariff_change() -> None:
    change = local(2026, 11, 16)
    old = tariff(1, local(2026, 1, 1), change)
    new_def = {**TOU, "rent": {"slot_types": {"standard": "450"}}}
    new = tariff(2, change, None, new_def)
    # In service from the 3rd, 10:00 local, to the end of the month: days 3..30.
    days = service_days([(local(2026, 11, 3, 10), local(2026, 12, 5))], "2026-11", CST)
    assert days[0] == date(2026, 11, 3)
    assert len(days) == 28
    parts = rent_parts(days, [old, new], CST)
    assert [(p.tariff.id, p.days) for p in parts] == [(1, 13), (2, 15)]
    rent = [p.prorate(slot_rent(p.tariff.definition, "arm-east", "standard")) for p in parts]
    assert [money(r) for r in rent] == [Decimal("130.00"), Decimal("225.00")]
    assert slot_rent(old.definition, "top", "standard") == 500  # a position price wins


def test_a_span_ending_at_midnight_does_not_count_the_next_day() -> None:
    days = service_days([(local(2026, 11, 3), local(2026, 11, 5))], "2026-11", CST)
    assert days == [date(2026, 11, 3), date(2026, 11, 4)]


def test_money_rounds_half_up_to_the_fen() -> None:
    assert money(Decimal("1.005")) == Decimal("1.01")
    assert money(Decimal("1.0049")) == Decimal("1.00")


# --------------------------------------------- the fast pricing equals the reference

ZONES = ["UTC", "Asia/Shanghai", "Europe/Berlin", "America/New_York", "Asia/Kolkata",
         "Asia/Kathmandu", "Australia/Lord_Howe"]  # fmt: skip


# Around the DST changes of the zones above (March, April, October), and a month end.
BASES = [
    datetime(2026, 3, 27, tzinfo=UTC),
    datetime(2026, 10, 23, tzinfo=UTC),
    datetime(2026, 11, 30, tzinfo=UTC),
    datetime(2026, 4, 3, 12, tzinfo=UTC),
]
FLAT_VALLEY = {
    "energy": {
        "prices": {"flat": "0.5", "valley": "0.2"},
        "seasons": [
            {"months": [3, 4, 10, 11, 12], "ranges": [{"period": "valley", "start": 1, "end": 3}]}
        ],
    }
}


@st.composite
def priced_case(draw: st.DrawFn) -> tuple[list[Interval], list[Tariff], ZoneInfo]:
    """Intervals (aligned or not, short or spanning hours, zero-length, across a DST
    change) and versions with changes at any minute, maybe with a hole between."""
    base = draw(st.sampled_from(BASES))
    t = base + timedelta(minutes=draw(st.integers(0, 59)), seconds=draw(st.integers(0, 59)))
    intervals = []
    for _ in range(draw(st.integers(1, 40))):
        length = timedelta(seconds=draw(st.sampled_from([0, 45, 60, 840, 900, 3600, 7380, 86400])))
        kwh = Decimal(draw(st.integers(0, 5000))) / 1000
        flags = draw(st.sampled_from([frozenset(), frozenset({Flag.ESTIMATED, Flag.GAP})]))
        intervals.append(Interval(t, t + length, kwh, flags))
        t += length + timedelta(seconds=draw(st.sampled_from([0, 0, 0, 30, 3600])))
    change = base + timedelta(minutes=draw(st.integers(-60, 3 * 24 * 60)))
    hole = timedelta(minutes=draw(st.sampled_from([0, 0, 17])))
    first = tariff(1, base - timedelta(days=60), change)
    second = tariff(2, change + hole, None, FLAT_VALLEY)
    tariffs = draw(st.sampled_from([[first, second], [second, first], [first]]))
    return intervals, tariffs, ZoneInfo(draw(st.sampled_from(ZONES)))


@settings(max_examples=300, deadline=None)
@given(priced_case())
def test_price_intervals_equals_the_interval_by_interval_reference(
    case: tuple[list[Interval], list[Tariff], ZoneInfo],
) -> None:
    intervals, tariffs, tz = case
    want: list[PricedPart] | datetime
    try:
        want = price_intervals_reference(intervals, tariffs, tz)
    except NoTariff as e:
        want = e.at  # the same first instant without a version
    try:
        got: list[PricedPart] | datetime = price_intervals(intervals, tariffs, tz)
    except NoTariff as e:
        got = e.at
    assert got == want


def test_clock_gives_the_version_and_period_of_any_instant() -> None:
    v1 = tariff(1, local(2026, 11, 1), local(2026, 11, 15))
    v2 = tariff(2, local(2026, 11, 15), None)
    clock = Clock([v2, v1], CST, local(2026, 11, 1), local(2026, 12, 1))
    assert clock.at(local(2026, 11, 3, 11, 59)) == (v1, Period.SHARP)
    assert clock.at(local(2026, 11, 3, 12)) == (v1, Period.FLAT)
    assert clock.at(local(2026, 11, 20, 7, 59)) == (v2, Period.VALLEY)
    assert clock.at(local(2026, 12, 1, 9)) == (v2, Period.FLAT)  # past the span: December
    assert clock.at(local(2026, 10, 31, 9)) == (None, None)  # before any version


# ------------------------- the kWh by version and period equal the reference's sums

# Season changes of TOU (June -> July, February -> March, December -> January) in
# Shanghai and UTC, and the DST bases above.
BILL_BASES = [
    *BASES,
    datetime(2026, 6, 30, 14, tzinfo=UTC),
    datetime(2026, 2, 28, 12, tzinfo=UTC),
    datetime(2026, 12, 31, 13, tzinfo=UTC),
]
ALL_FLAGS = sorted(Flag)


@st.composite
def bill_case(
    draw: st.DrawFn,
) -> tuple[list[Interval], list[tuple[datetime, datetime]], list[Tariff], ZoneInfo]:
    """A metered series as `meter` gives it (in time order, gaps between some
    intervals, any flags, kWh with few or many digits, some 0), the spans of a
    lease on it (edges anywhere: mid-interval, on an edge, outside), and versions
    changing at any second (mid-interval too), maybe with a hole between them."""
    base = draw(st.sampled_from(BILL_BASES))
    # Often a second or two off a full hour (of UTC, and of most zones here).
    t = base + timedelta(
        seconds=draw(st.sampled_from([0, 1, 2, 3598, 3599]) | st.integers(0, 3599))
    )
    intervals = []
    for _ in range(draw(st.integers(1, 60))):
        length = draw(
            st.sampled_from([0, 1, 2, 45, 60, 840, 899, 900, 3599, 3600, 3601, 5400, 7380, 86400])
        )
        digits = draw(st.sampled_from(["cents", "cents", "sevenths", "zero", "big"]))
        raw = draw(st.integers(0, 5000))
        kwh = {
            "cents": Decimal(raw) / 100,
            "sevenths": Decimal(raw) / Decimal(7),
            "zero": Decimal(0),
            "big": Decimal(raw) * Decimal("1E+3"),
        }[digits]
        flags = frozenset(draw(st.lists(st.sampled_from(ALL_FLAGS), max_size=3)))
        end = t + timedelta(seconds=length)
        intervals.append(Interval(t, end, kwh, flags, Decimal(draw(st.integers(0, 3))) / 10))
        t = end + timedelta(seconds=draw(st.sampled_from([0, 0, 0, 30, 3600, 7200])))
    span_s = (t - base).total_seconds()
    cuts = sorted(
        draw(
            st.lists(
                st.integers(-3600, int(span_s) + 3600), min_size=2, max_size=6, unique=True
            ).filter(lambda xs: len(xs) % 2 == 0)
        )
    )
    spans = [
        (base + timedelta(seconds=a), base + timedelta(seconds=b))
        for a, b in zip(cuts[::2], cuts[1::2], strict=True)
    ]
    if draw(st.booleans()):  # a span edge on an interval's edge
        iv = draw(st.sampled_from(intervals))
        spans[0] = (min(spans[0][0], iv.end), max(spans[0][0], iv.end))
    change = base + timedelta(seconds=draw(st.integers(-3600, int(span_s) + 3600)))
    if draw(st.booleans()):  # a change a second or two off an interval's edge
        iv = draw(st.sampled_from(intervals))
        change = iv.end + timedelta(seconds=draw(st.integers(-2, 2)))
    hole = timedelta(seconds=draw(st.sampled_from([0, 0, 1, 1020])))
    first = tariff(1, base - timedelta(days=60), change)
    second = tariff(2, change + hole, None, draw(st.sampled_from([TOU, FLAT_VALLEY])))
    tariffs = draw(st.sampled_from([[first, second], [second, first], [first], [second]]))
    zone = draw(st.sampled_from(["Asia/Shanghai", "UTC", "Asia/Shanghai", "UTC", *ZONES]))
    return intervals, spans, tariffs, ZoneInfo(zone)


def summed_reference(parts: list[PricedPart]) -> list[tuple[object, ...]]:
    """The priced parts above 0 summed by (version id, period, estimated) as the
    bill did before `energy_by_period`: groups in the order they first appear."""
    groups: dict[tuple[int, Period, bool], list[PricedPart]] = {}
    for p in parts:
        if p.kwh > 0:
            groups.setdefault((p.tariff.id, p.period, p.estimated), []).append(p)
    return [
        (
            group[0].tariff,
            period,
            estimated,
            str(sum((p.kwh for p in group), Decimal(0))),
            set().union(*(p.flags for p in group)),
        )
        for (_, period, estimated), group in groups.items()
    ]


def summed(sums: list[PeriodEnergy]) -> list[tuple[object, ...]]:
    return [(e.tariff, e.period, e.estimated, str(e.kwh), e.flags) for e in sums]


@settings(max_examples=500, deadline=None)
@given(bill_case())
def test_energy_by_period_equals_the_reference_parts_summed(
    case: tuple[list[Interval], list[tuple[datetime, datetime]], list[Tariff], ZoneInfo],
) -> None:
    """A lease's intervals (its spans clipped by bisection, as the bill does) summed
    by version and period: the same sums, digit for digit, as clipping every
    interval and pricing part by part with the reference; the same instant in
    `NoTariff` when a part has no version."""
    intervals, spans, tariffs, tz = case
    mine_reference = [p for a, b in spans for iv in intervals if (p := clip(iv, a, b)) is not None]
    mine = [p for a, b in spans for p in clip_all(intervals, a, b)]
    assert mine == mine_reference
    assert [str(p.kwh) for p in mine] == [str(p.kwh) for p in mine_reference]
    want: list[tuple[object, ...]] | datetime
    try:
        want = summed_reference(price_intervals_reference(mine_reference, tariffs, tz))
    except NoTariff as e:
        want = e.at
    try:
        got: list[tuple[object, ...]] | datetime = summed(energy_by_period(mine, tariffs, tz))
    except NoTariff as e:
        got = e.at
    assert got == want
