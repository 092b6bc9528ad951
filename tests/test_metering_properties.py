"""Property tests of the metering core: whatever the true consumption and whatever the
meter's register does to show it (wraps at its width, resets to zero, momentary zeros
and spikes, one replacement recorded with the old meter's final reading and the new
one's first), the billed kWh is the true total less the flagged excess, and no
interval is negative.

The scenario is a port of 4 kW read every 15 minutes (at most 1 kWh per interval),
a register in hundredths of a kWh (16 or 32 bit, or a float with no wrap). Events
are generated only where they can be told apart from each other, which is what a
meter's counter allows and no more:

- a reset happens just after a reading (the meter counts the whole next interval
  from 0) and only when the register stands well away from 0 and from its wrap
  point (a drop from 3 kWh to 0.2 kWh could be a reset or a wrap of 3.16 kWh);
- a momentary zero likewise needs the register well away from 0 (a zero next to
  0.3 could be a reset); a spike is any value the counter could not have reached;
- a glitch run (1 or 2 readings) has a true reading after it;
- an interval above the port's rating ("over") never wraps the register (a wrap
  with excess and a reset look the same);
- events are at least GLITCH_RUN + 1 readings apart (the glitch look-ahead).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.metering import (
    GLITCH_RUN,
    Cuts,
    Flag,
    Interval,
    Metered,
    Reading,
    Replacement,
    cap_kwh,
    clip,
    clip_all,
    counter_modulus,
    meter,
    meter_reference,
    split_interval,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)
STEP = timedelta(minutes=15)
RATED_W = 4000
CAP = 100  # hundredths of a kWh per interval: 4 kW x 15 min
UNIT = Decimal("0.01")
FAR = 5 * CAP  # how far from 0 and from the wrap point a reset or a zero must be
WIDTHS = {"uint16": 1 << 16, "uint32": 1 << 32, None: None}

PLAIN = "plain"
EVENTS = ("reset", "zero", "spike", "over", "replace")


@dataclass(frozen=True)
class Scenario:
    width: str | None
    readings: list[Reading]
    replacements: list[Replacement]
    true_total: Decimal  # kWh the port really drew
    true_excess: Decimal  # of it, above the rating: flagged, not billed
    events: list[tuple[int, str]]  # (reading index, event): for the failure report


def kwh(raw: int) -> Decimal:
    return raw * UNIT


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    width = draw(st.sampled_from(list(WIDTHS)))
    mod = WIDTHS[width]
    n = draw(st.integers(2, 60))
    if mod is None:
        start = draw(st.integers(0, 10**9))
    else:
        # Often start just below the wrap point so that the register wraps.
        start = draw(st.integers(0, mod - 1) | st.integers(max(0, mod - 30 * CAP), mod - 1))
    increments = draw(st.lists(st.integers(0, CAP), min_size=n, max_size=n))
    kinds = draw(
        st.lists(
            st.sampled_from((PLAIN,) * 6 + EVENTS),
            min_size=n,
            max_size=n,
        )
    )
    runs = draw(st.lists(st.integers(1, 2), min_size=n, max_size=n))
    extras = draw(st.lists(st.integers(1, 2 * CAP), min_size=n, max_size=n))
    spikes = draw(st.lists(st.integers(FAR, (mod or 10**9) // 2), min_size=n, max_size=n))
    new_first = draw(
        st.integers(0, (mod or 10**9) - 1)
        | st.integers(max(0, (mod or 10**9) - 3 * CAP), (mod or 10**9) - 1)
    )
    split = draw(st.floats(0, 1))
    swap_at = draw(st.integers(1, 15))  # minutes after the previous reading

    def shown(raw: int) -> int:
        return raw if mod is None else raw % mod

    def far_from_edges(value: int) -> bool:
        return value >= FAR and (mod is None or value <= mod - FAR)

    register = start  # the current meter's count, before wrapping into its register
    observed = [shown(register)]
    truth = [shown(register)]  # what a healthy reading would have been
    true_total = 0
    true_excess = 0
    swaps: list[Replacement] = []
    events: list[tuple[int, str]] = []
    last_event = -(GLITCH_RUN + 1)
    glitch_left = 0
    glitch_values: list[int] = []
    i = 1
    while i < n:
        inc = increments[i]
        kind = kinds[i]
        if glitch_left:  # inside a glitch run: the counter goes on, the reading is odd
            register += inc
            true_total += inc
            truth.append(shown(register))
            observed.append(glitch_values.pop(0))
            glitch_left -= 1
            i += 1
            continue
        spaced = i - last_event > GLITCH_RUN
        prev = truth[-1]
        if kind != PLAIN and spaced:
            if kind == "reset" and far_from_edges(prev):
                register = inc  # restarted just after the previous reading
                events.append((i, kind))
                last_event = i
            elif kind in ("zero", "spike") and i + runs[i] < n:
                if kind == "zero" and not far_from_edges(prev):
                    register += inc
                else:
                    run = runs[i]
                    values = [0] * run if kind == "zero" else [shown(prev + spikes[i])] * run
                    glitch_values = values[1:]
                    glitch_left = run - 1
                    register += inc
                    true_total += inc
                    truth.append(shown(register))
                    observed.append(values[0])
                    events.append((i, f"{kind} x{run}"))
                    last_event = i + run - 1
                    i += 1
                    continue
            elif kind == "over" and shown(register + CAP + extras[i]) >= shown(register):
                inc = CAP + extras[i]
                true_excess += extras[i]
                register += inc
                events.append((i, kind))
                last_event = i
            elif kind == "replace" and not swaps:
                before = round(inc * split)
                old_final = shown(register + before)
                at = T0 + (i - 1) * STEP + timedelta(minutes=swap_at)
                swaps.append(Replacement(at, kwh(old_final), kwh(new_first)))
                register = new_first + (inc - before)
                events.append((i, kind))
                last_event = i
            else:
                register += inc
        else:
            register += inc
        true_total += inc
        truth.append(shown(register))
        observed.append(shown(register))
        i += 1
    readings = [Reading(T0 + k * STEP, kwh(v)) for k, v in enumerate(observed)]
    return Scenario(width, readings, swaps, kwh(true_total), kwh(true_excess), events)


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(scenarios())
def test_billed_kwh_is_the_true_total_less_the_flagged_excess(s: Scenario) -> None:
    out = meter(
        s.readings,
        rated_w=RATED_W,
        modulus=counter_modulus(s.width, 0.01),
        replacements=s.replacements,
    )
    billed = sum((iv.kwh for iv in out.intervals), Decimal(0))
    excess = sum((iv.excess_kwh for iv in out.intervals), Decimal(0))
    report = (
        f"events {s.events}, intervals {[(str(iv.kwh), sorted(iv.flags)) for iv in out.intervals]}"
    )
    assert all(iv.kwh >= 0 for iv in out.intervals), report
    assert all(iv.excess_kwh >= 0 for iv in out.intervals), report
    assert all(iv.kwh <= cap_kwh(Decimal(RATED_W), iv.start, iv.end) for iv in out.intervals)
    assert billed == s.true_total - s.true_excess, report
    assert excess == s.true_excess, report
    # The intervals tile the whole series, without gaps or overlaps.
    assert [iv.start for iv in out.intervals[1:]] == [iv.end for iv in out.intervals[:-1]]
    if out.intervals:
        assert out.intervals[0].start == s.readings[0].ts
        assert out.intervals[-1].end == s.readings[-1].ts
    assert not out.gaps
    if s.replacements:
        assert any(Flag.REPLACED in iv.flags for iv in out.intervals), report


@PROPERTY
@given(scenarios())
def test_every_event_is_named_by_a_flag(s: Scenario) -> None:
    """Each generated reset, glitch, over-cap and replacement shows in the flags."""
    out = meter(
        s.readings,
        rated_w=RATED_W,
        modulus=counter_modulus(s.width, 0.01),
        replacements=s.replacements,
    )
    flags = [iv.flags for iv in out.intervals]
    wanted = {
        "reset": Flag.RESET,
        "zero": Flag.GLITCH,
        "spike": Flag.GLITCH,
        "over": Flag.CAPPED,
        "replace": Flag.REPLACED,
    }
    for _, event in s.events:
        flag = wanted[event.split()[0]]
        assert any(flag in f for f in flags), (event, flags)
    seen = {f for fs in flags for f in fs}
    assert seen <= {wanted[e.split()[0]] for _, e in s.events} | {Flag.WRAPPED}, (s.events, seen)


@settings(max_examples=200, deadline=None)
@given(
    start=st.integers(0, 10_000),
    length=st.integers(1, 10_000),
    kwh_cents=st.integers(0, 10_000),
    bounds=st.lists(st.integers(-1000, 21_000), max_size=40),
)
def test_cuts_split_as_a_list_does(
    start: int, length: int, kwh_cents: int, bounds: list[int]
) -> None:
    """`Cuts` (sorted once, bisected) cuts an interval exactly where the plain list
    does, and the parts share out all of its energy."""
    iv = Interval(
        T0 + timedelta(seconds=start), T0 + timedelta(seconds=start + length), kwh(kwh_cents)
    )
    instants = [T0 + timedelta(seconds=b) for b in bounds]
    parts = split_interval(iv, Cuts(instants))
    assert parts == split_interval(iv, instants)
    assert sum((p.kwh for p in parts), Decimal(0)) == pytest.approx(iv.kwh, abs=Decimal("1e-20"))
    assert [p.start for p in parts[1:]] == [p.end for p in parts[:-1]]
    window = (T0 + timedelta(seconds=2000), T0 + timedelta(seconds=8000))
    inside = clip(iv, *window)
    if iv.end <= window[0] or iv.start >= window[1]:
        assert inside is None
    else:
        assert inside is not None
        assert (inside.start, inside.end) == (max(iv.start, window[0]), min(iv.end, window[1]))


# ------------------------------------------- the fast metering equals the reference


def same_metered(got: Metered, want: Metered) -> None:
    """Equal intervals and gaps, each kWh and excess with the same digits (Decimal's
    == would take 1.0 for 1.00)."""
    assert got == want
    assert [(str(iv.kwh), str(iv.excess_kwh)) for iv in got.intervals] == [
        (str(iv.kwh), str(iv.excess_kwh)) for iv in want.intervals
    ]


@PROPERTY
@given(
    scenarios(),
    st.sampled_from([timedelta(minutes=10), timedelta(hours=1)]),
    st.booleans(),
)
def test_meter_equals_the_reference_on_scenarios(
    s: Scenario, max_gap: timedelta, estimate: bool
) -> None:
    """Wraps, resets, glitches, over-cap intervals and replacements; with every
    interval a gap (max_gap 10 min) or none."""
    args = {
        "rated_w": RATED_W,
        "modulus": counter_modulus(s.width, 0.01),
        "replacements": s.replacements,
        "max_gap": max_gap,
        "estimate_gaps": estimate,
    }
    same_metered(meter(s.readings, **args), meter_reference(s.readings, **args))  # type: ignore[arg-type]


@st.composite
def rough_series(draw: st.DrawFn) -> tuple[list[Reading], list[Replacement]]:
    """Any counter series: irregular steps (gaps among them), values that rise by
    a little or a lot, drop, stand still or jump, some with many digits; maybe
    replacements between readings."""
    t = T0 + timedelta(seconds=draw(st.integers(0, 3599)))
    value = Decimal(draw(st.integers(0, 70_000))) / 100
    readings = []
    for _ in range(draw(st.integers(0, 50))):
        readings.append(Reading(t, value))
        t += timedelta(seconds=draw(st.sampled_from([1, 60, 840, 900, 3600, 3601, 7200])))
        step = draw(st.sampled_from(["rise", "rise", "rise", "big", "drop", "zero", "same", "odd"]))
        if step == "rise":
            value += Decimal(draw(st.integers(0, 120))) / 100
        elif step == "big":
            value += Decimal(draw(st.integers(0, 10**6))) / 100
        elif step == "drop":
            value = Decimal(draw(st.integers(0, 70_000))) / 100
        elif step == "zero":
            value = Decimal(0)
        elif step == "odd":
            value += Decimal(draw(st.integers(1, 10**6))) / Decimal(7)
    swaps = [
        Replacement(T0 + timedelta(seconds=at), Decimal(old) / 100, Decimal(new) / 100)
        for at, old, new in draw(
            st.lists(
                st.tuples(st.integers(0, 50 * 3600), st.integers(0, 10**5), st.integers(0, 10**4)),
                max_size=2,
            )
        )
    ]
    return readings, swaps


@settings(max_examples=400, deadline=None)
@given(
    rough_series(),
    st.sampled_from([None, "uint16", "uint32"]),
    st.sampled_from([0, 2000, 4000, "3999.5"]),
    st.booleans(),
)
def test_meter_equals_the_reference_on_any_series(
    case: tuple[list[Reading], list[Replacement]],
    width: str | None,
    rated: int | str,
    estimate: bool,
) -> None:
    readings, swaps = case
    args = {
        "rated_w": Decimal(rated),
        "modulus": counter_modulus(width, 0.01),
        "replacements": swaps,
        "estimate_gaps": estimate,
    }
    same_metered(meter(readings, **args), meter_reference(readings, **args))  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    rough_series(),
    st.lists(st.integers(-7200, 60 * 3600), min_size=2, max_size=2),
)
def test_clip_all_clips_each_interval(
    case: tuple[list[Reading], list[Replacement]], window: list[int]
) -> None:
    """On a metered series, `clip_all` gives what `clip` of each interval gives,
    the Nones left out (windows at interval edges, inside one, or empty)."""
    intervals = meter(case[0], rated_w=4000).intervals
    edges = [T0 + timedelta(seconds=s) for s in window]
    edges += [iv.start for iv in intervals[:2]] + [iv.end for iv in intervals[-2:]]
    for start in edges:
        for end in edges:
            want = [p for iv in intervals if (p := clip(iv, start, end)) is not None]
            got = clip_all(intervals, start, end)
            assert got == want
            assert [str(p.kwh) for p in got] == [str(p.kwh) for p in want]
