"""Metering (计量): energy per interval from a port meter's cumulative kWh counter.

Pure: an ordered series of (ts, counter value) for one port in, intervals and
gaps out. The rules (docs/decisions-billing.md):

- consecutive readings make an interval; its energy is the counter delta;
- a single reading that breaks an otherwise plausible run (a momentary 0, or
  any one-off drop or spike, with the readings on both sides consistent) is a
  glitch: it is dropped, and the interval across it is flagged `glitch`;
- a drop where `value + modulus - prev` fits the rated power for the interval
  (and is not negative: a reading above the modulus is no counter's)
  is a wrap (the register rolled over);
- any other drop is a reset: the meter restarted from 0, delta = new value;
- a recorded meter replacement between two readings: delta = (old final -
  prev) + (cur - new first), flagged `replaced`; each side is a counter of its
  own, so either may have wrapped (or reset) by the rules above;
- no interval is negative; an interval above rated power x duration is capped
  and the excess returned for review (`capped`, `excess_kwh`), never billed;
- readings further apart than `max_gap` make a gap (reported). The counter
  delta across it is still measured energy; only a reset across a gap leaves
  the energy unknown (the part before the reset is lost): with `estimate_gaps`
  it is then estimated from the mean power of the neighbouring intervals
  (never less than the measured part), and flagged `estimated`.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from itertools import pairwise
from typing import Generic, TypeVar

ZERO = Decimal(0)
# kWh as shown and billed (usage, bill lines): 1 Wh, as fine as the finest port
# meter register (0.01 kWh in the shipped profiles). Below it a split interval's
# share or a float reading's noise (115.819999) is no energy anyone measured.
KWH = Decimal("0.001")
MICRO_KWH = Decimal("0.000001")


def shown_kwh(kwh: Decimal) -> Decimal:
    """kWh as shown and billed: to the Wh from its value to the µWh, so that two ways
    of summing the same energy (the ledger's pieces, the readings' intervals) that
    agree to the µWh also agree to the Wh, whichever side of a half-Wh their last
    digits fall."""
    return kwh.quantize(MICRO_KWH).quantize(KWH)


HOUR_S = Decimal(3600)
GLITCH_RUN = 3  # the longest run of odd readings taken for a glitch
V = TypeVar("V")


class Flag(StrEnum):
    """What happened to an interval's counter delta (FLAG_MEANINGS says each in words)."""

    WRAPPED = "wrapped"
    RESET = "reset"
    GLITCH = "glitch"
    REPLACED = "replaced"
    CAPPED = "capped"
    GAP = "gap"
    ESTIMATED = "estimated"
    # Set by the ledger, not by metering: a clock-suspect reading was held out of
    # the piece (gateway/core/ledger.py).
    CLOCK_SUSPECT = "clock_suspect"


FLAG_MEANINGS: dict[Flag, str] = {
    Flag.WRAPPED: "the counter rolled over its maximum (the delta counts across it)",
    Flag.RESET: "the meter restarted from 0 (the delta is the new value)",
    Flag.GLITCH: "a one-off odd reading was dropped",
    Flag.REPLACED: "the meter was replaced (old and new counters both counted)",
    Flag.CAPPED: "above rated power x time: capped, the excess not billed (excess_kwh)",
    Flag.GAP: "readings further apart than the gap limit",
    Flag.ESTIMATED: "energy across a gap with a reset, estimated from the neighbours",
    Flag.CLOCK_SUSPECT: "a reading stamped by a wrong clock was held out; the energy across"
    " it comes from the readings around it",
}
FLAGS_DOC = "; ".join(f"`{f.value}`: {text}" for f, text in FLAG_MEANINGS.items())


@dataclass(frozen=True, slots=True)
class Reading:
    ts: datetime
    value: Decimal


@dataclass(frozen=True, slots=True)
class Replacement:
    """A meter swapped at `at`: the old meter's final reading and the new one's first."""

    at: datetime
    old_final: Decimal
    new_first: Decimal


@dataclass(frozen=True, slots=True)
class Interval:
    start: datetime
    end: datetime
    kwh: Decimal
    flags: frozenset[Flag] = frozenset()
    excess_kwh: Decimal = ZERO  # above rated power x duration: flagged, not billed

    @property
    def seconds(self) -> Decimal:
        return Decimal((self.end - self.start).total_seconds())


@dataclass(frozen=True, slots=True)
class Gap:
    start: datetime
    end: datetime

    @property
    def duration(self) -> timedelta:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Metered:
    intervals: list[Interval] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)


def to_decimal(value: float | int | str | Decimal) -> Decimal:
    """A float reading as the decimal it was written as (repr: shortest round trip)."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(value)


def counter_modulus(data_type: str | None, scale: float = 1.0) -> Decimal | None:
    """Where a register counter wraps, in its engineering unit: 2^bits x scale.
    None for floats and for counters not read from registers (no wrap known)."""
    bits = {"int16": 16, "uint16": 16, "int32": 32, "uint32": 32, "int64": 64, "uint64": 64}
    if data_type not in bits:
        return None
    return Decimal(2 ** bits[data_type]) * to_decimal(scale)


def cap_kwh(rated_w: Decimal, start: datetime, end: datetime) -> Decimal:
    """The most a port can draw in [start, end): rated power x duration."""
    return _cap(str(rated_w), end - start)


@lru_cache(maxsize=4096)
def _cap(rated_w: str, duration: timedelta) -> Decimal:
    # A series has few distinct interval lengths: computed once each. Keyed by the
    # rating as written, so 4000 and 4000.0 keep their own (equal) results.
    return Decimal(rated_w) * Decimal(duration.total_seconds()) / HOUR_S / 1000


def meter(
    readings: Sequence[Reading],
    *,
    rated_w: float | Decimal,
    modulus: Decimal | None = None,
    replacements: Sequence[Replacement] = (),
    max_gap: timedelta = timedelta(hours=1),
    estimate_gaps: bool = False,
    neighbours: int = 4,
) -> Metered:
    """Intervals and gaps of one port's counter series (ordered by ts, distinct ts).

    The same intervals and gaps as `meter_reference` (the rules written out once,
    tested against this): the usual interval (the counter rose by no more than
    the cap, no gap, glitch or replacement) takes a short path that gives it
    what the rules would (the delta, no flags), and the cap of each interval
    length is computed once per series."""
    rated = to_decimal(rated_w)
    swaps = sorted(replacements, key=lambda r: r.at)
    limits = _Limits(rated)
    series, glitched = _drop_glitches(readings, rated, modulus, swaps, limits)
    intervals: list[Interval] = []
    gaps: list[Gap] = []
    to_estimate: list[int] = []
    for prev, cur in pairwise(series):
        a, b = prev.value, cur.value
        duration = cur.ts - prev.ts
        limit = limits.get(duration) or limits.of(duration)
        if (
            b >= a
            and b - a <= limit
            and duration <= max_gap
            and not swaps
            and not (glitched and cur.ts in glitched)
        ):
            intervals.append(Interval(prev.ts, cur.ts, b - a))
            continue
        flags: set[Flag] = set()
        if cur.ts in glitched:
            flags.add(Flag.GLITCH)
        delta = _delta(prev, cur, limit, modulus, swaps, flags)
        if duration > max_gap:
            gaps.append(Gap(prev.ts, cur.ts))
            flags.add(Flag.GAP)
            if Flag.RESET in flags and estimate_gaps:
                to_estimate.append(len(intervals))
        excess = ZERO
        if delta > limit:
            excess = delta - limit
            delta = limit
            flags.add(Flag.CAPPED)
        intervals.append(Interval(prev.ts, cur.ts, delta, frozenset(flags), excess))
    for index in to_estimate:
        intervals[index] = _estimate(intervals, index, rated, neighbours)
    return Metered(intervals, gaps)


class _Limits(dict[timedelta, Decimal]):
    """`cap_kwh` of one rating by interval length, each computed once (a series has
    few lengths). `limits.get(d) or limits.of(d)`: a cap of 0 is looked up again."""

    def __init__(self, rated: Decimal) -> None:
        super().__init__()
        self._rated = str(rated)  # as `cap_kwh` keys it

    def of(self, duration: timedelta) -> Decimal:
        limit = self[duration] = _cap(self._rated, duration)
        return limit


def meter_reference(
    readings: Sequence[Reading],
    *,
    rated_w: float | Decimal,
    modulus: Decimal | None = None,
    replacements: Sequence[Replacement] = (),
    max_gap: timedelta = timedelta(hours=1),
    estimate_gaps: bool = False,
    neighbours: int = 4,
) -> Metered:
    """`meter` reading by reading, every interval through all the rules (slow; the
    definition the fast one is tested against)."""
    rated = to_decimal(rated_w)
    swaps = sorted(replacements, key=lambda r: r.at)
    series, glitched = _drop_glitches_reference(readings, rated, modulus, swaps)
    intervals: list[Interval] = []
    gaps: list[Gap] = []
    to_estimate: list[int] = []
    for i in range(1, len(series)):
        prev, cur = series[i - 1], series[i]
        flags: set[Flag] = set()
        if cur.ts in glitched:
            flags.add(Flag.GLITCH)
        limit = cap_kwh(rated, prev.ts, cur.ts)
        delta = _delta(prev, cur, limit, modulus, swaps, flags)
        is_gap = cur.ts - prev.ts > max_gap
        if is_gap:
            gaps.append(Gap(prev.ts, cur.ts))
            flags.add(Flag.GAP)
            if Flag.RESET in flags and estimate_gaps:
                to_estimate.append(len(intervals))
        excess = ZERO
        if delta > limit:
            excess = delta - limit
            delta = limit
            flags.add(Flag.CAPPED)
        intervals.append(Interval(prev.ts, cur.ts, delta, frozenset(flags), excess))
    for index in to_estimate:
        intervals[index] = _estimate(intervals, index, rated, neighbours)
    return Metered(intervals, gaps)


def _between(swaps: Sequence[Replacement], a: datetime, b: datetime) -> Replacement | None:
    """The first replacement in (a, b]."""
    if not swaps:  # nearly always: no generator for each of a month's intervals
        return None
    return next((s for s in swaps if a < s.at <= b), None)


def _plausible(prev: Reading, cur: Reading, rated: Decimal, modulus: Decimal | None) -> bool:
    """cur follows prev without a drop, reset or excess (a wrap counts)."""
    limit = cap_kwh(rated, prev.ts, cur.ts)
    if cur.value >= prev.value:
        return cur.value - prev.value <= limit
    return modulus is not None and 0 <= cur.value + modulus - prev.value <= limit


def _drop_glitches(
    readings: Sequence[Reading],
    rated: Decimal,
    modulus: Decimal | None,
    swaps: Sequence[Replacement],
    limits: _Limits,
) -> tuple[list[Reading], set[datetime]]:
    """The series without one-off outliers, and the ts of the readings after each
    (`_drop_glitches_reference` with the plausibility of each reading after the
    last one kept worked out inline, from the cached caps)."""
    out: list[Reading] = []
    glitched: set[datetime] = set()
    n = len(readings)
    i = 0
    while i < n:
        cur = readings[i]
        if out:
            prev = out[-1]
            a, b = prev.value, cur.value
            duration = cur.ts - prev.ts
            limit = limits.get(duration) or limits.of(duration)
            if b >= a:
                plausible = b - a <= limit
            else:
                plausible = modulus is not None and 0 <= b + modulus - a <= limit
            if not plausible:
                # As in the reference: up to GLITCH_RUN odd readings, then one that
                # follows prev plausibly but not the odd one before it.
                for j in range(i + 1, min(n, i + 1 + GLITCH_RUN)):
                    nxt = readings[j]
                    if (
                        _between(swaps, prev.ts, nxt.ts) is None
                        and _plausible(prev, nxt, rated, modulus)
                        and not _plausible(readings[j - 1], nxt, rated, modulus)
                    ):
                        glitched.add(nxt.ts)
                        i = j
                        break
                else:
                    out.append(cur)
                    i += 1
                continue
        out.append(cur)
        i += 1
    return out, glitched


def _drop_glitches_reference(
    readings: Sequence[Reading],
    rated: Decimal,
    modulus: Decimal | None,
    swaps: Sequence[Replacement],
) -> tuple[list[Reading], set[datetime]]:
    """The series without one-off outliers, and the ts of the readings after each."""
    out: list[Reading] = []
    glitched: set[datetime] = set()
    n = len(readings)
    i = 0
    while i < n:
        cur = readings[i]
        if out and not _plausible(out[-1], cur, rated, modulus):
            prev = out[-1]
            # Up to GLITCH_RUN odd readings, then one that follows prev plausibly
            # but not the odd one before it (else the odd one was real: a reset,
            # or energy above the cap).
            for j in range(i + 1, min(n, i + 1 + GLITCH_RUN)):
                nxt = readings[j]
                if (
                    _between(swaps, prev.ts, nxt.ts) is None
                    and _plausible(prev, nxt, rated, modulus)
                    and not _plausible(readings[j - 1], nxt, rated, modulus)
                ):
                    glitched.add(nxt.ts)
                    i = j
                    break
            else:
                out.append(cur)
                i += 1
            continue
        out.append(cur)
        i += 1
    return out, glitched


def _delta(
    prev: Reading,
    cur: Reading,
    limit: Decimal,
    modulus: Decimal | None,
    swaps: Sequence[Replacement],
    flags: set[Flag],
) -> Decimal:
    swap = _between(swaps, prev.ts, cur.ts)
    if swap is not None:
        # The old meter from prev to its final reading, the new one from its first
        # reading to cur: each side may have wrapped (or reset) on its own.
        flags.add(Flag.REPLACED)
        old = _step(prev.value, swap.old_final, limit, modulus, flags)
        return old + _step(swap.new_first, cur.value, limit, modulus, flags)
    return _step(prev.value, cur.value, limit, modulus, flags)


def _step(
    a: Decimal, b: Decimal, limit: Decimal, modulus: Decimal | None, flags: set[Flag]
) -> Decimal:
    """One counter's rise from a to b: plain, a wrap if it fits the limit, else a reset."""
    if b >= a:
        return b - a
    if modulus is not None and 0 <= b + modulus - a <= limit:
        flags.add(Flag.WRAPPED)
        return b + modulus - a
    flags.add(Flag.RESET)
    return max(ZERO, b)


def _estimate(intervals: list[Interval], index: int, rated: Decimal, k: int) -> Interval:
    """The gap interval at `index` with kWh from the mean power of up to k measured
    intervals on each side (at least what was measured, at most the cap)."""
    gap = intervals[index]

    def measured(iv: Interval) -> bool:
        return not (iv.flags & {Flag.GAP, Flag.ESTIMATED, Flag.CAPPED})

    before = [iv for iv in intervals[:index] if measured(iv)][-k:]
    after = [iv for iv in intervals[index + 1 :] if measured(iv)][:k]
    near = before + after
    seconds = sum((iv.seconds for iv in near), ZERO)
    if seconds == 0:
        return gap
    power_kw = sum((iv.kwh for iv in near), ZERO) / seconds  # kWh per second
    estimate = min(power_kw * gap.seconds, cap_kwh(rated, gap.start, gap.end))
    if estimate <= gap.kwh:
        return gap
    return Interval(gap.start, gap.end, estimate, gap.flags | {Flag.ESTIMATED}, gap.excess_kwh)


def gap_estimates(
    intervals: Sequence[Interval], *, rated_w: float | Decimal, neighbours: int = 4
) -> dict[int, Interval]:
    """What `meter(..., estimate_gaps=True)` puts in place of intervals of
    `meter(..., estimate_gaps=False)`: by index, each gap across a reset that the
    neighbours' mean power estimates above what was measured. (The estimates look
    only at measured neighbours, never at other gaps, so they are the same
    whether worked out one by one in `meter` or here afterwards.)"""
    rated = to_decimal(rated_w)
    out: dict[int, Interval] = {}
    for index, iv in enumerate(intervals):
        if Flag.GAP in iv.flags and Flag.RESET in iv.flags:
            estimate = _estimate(list(intervals), index, rated, neighbours)
            if estimate is not iv:
                out[index] = estimate
    return out


def utc(ts: datetime) -> datetime:
    """The instant in datetime.UTC (as it is if it is in it already)."""
    return ts if ts.tzinfo is UTC else ts.astimezone(UTC)


class Cuts:
    """Instants to cut intervals at, sorted once: `split_interval` finds the ones
    inside an interval by bisection instead of looking at every one. Build it once
    for a series (e.g. the day and hour bounds of a month: 750 instants) and pass
    it for each interval."""

    __slots__ = ("_at", "_utc")

    def __init__(self, instants: Iterable[datetime]) -> None:
        self._at = sorted(set(instants))
        # Bisected in UTC: comparing datetimes of two time zones costs a utcoffset
        # call on each side, of one zone (the same tzinfo object) nearly nothing.
        self._utc = [utc(t) for t in self._at]

    def inside(self, start: datetime, end: datetime) -> list[datetime]:
        """The instants strictly inside (start, end), in order."""
        return self._at[bisect_right(self._utc, utc(start)) : bisect_left(self._utc, utc(end))]

    def __len__(self) -> int:
        return len(self._at)


def split_interval(iv: Interval, bounds: Sequence[datetime] | Cuts) -> list[Interval]:
    """The interval cut at the given instants, energy (and excess) pro rata by time."""
    if isinstance(bounds, Cuts):
        cuts = bounds.inside(iv.start, iv.end)
    else:
        cuts = sorted({b for b in bounds if iv.start < b < iv.end})
    if not cuts:
        return [iv]
    total = iv.seconds
    edges = [iv.start, *cuts, iv.end]
    parts = []
    for a, b in pairwise(edges):
        share = Decimal((b - a).total_seconds()) / total
        parts.append(Interval(a, b, iv.kwh * share, iv.flags, iv.excess_kwh * share))
    return parts


def clip(iv: Interval, start: datetime, end: datetime) -> Interval | None:
    """The part of the interval inside [start, end), pro rata; None if none."""
    if iv.end <= start or iv.start >= end:
        return None
    if start <= iv.start and iv.end <= end:
        return iv  # all of it (most intervals of a window): nothing to share out
    for part in split_interval(iv, (start, end)):
        if part.start >= start and part.end <= end:
            return part
    return None  # pragma: no cover - one part always lies inside


def clip_all(intervals: Sequence[Interval], start: datetime, end: datetime) -> list[Interval]:
    """`clip` of each interval of a series in time order (each starting no earlier
    than the one before ends, as `meter` gives them), the ones outside left out:
    the first and last inside are found by bisection and only they are cut (those
    between lie inside whole, and `clip` gives them as they are)."""
    if not start < end:
        return []  # an empty window: `clip` gives None for every interval
    lo = bisect_right(intervals, start, key=_end)  # the first ending after start
    hi = bisect_left(intervals, end, key=_start)  # the first starting at or after end
    if lo >= hi:
        return []
    inside = list(intervals[lo:hi])
    for k in {0, len(inside) - 1}:
        part = clip(inside[k], start, end)
        assert part is not None  # it ends after start and starts before end
        inside[k] = part
    return inside


def _start(iv: Interval) -> datetime:
    return iv.start


def _end(iv: Interval) -> datetime:
    return iv.end


class Pieces(Generic[V]):
    """[lo, hi) cut at the given instants, with a value for each piece, worked out
    at its start: for looking up something that changes only at those instants
    (the tariff version, a local hour's period, a usage bucket) once per interval
    instead of cutting the interval and looking up each part. `find` gives the
    piece an interval lies in whole; one that crosses an instant is the caller's
    to cut (rare: an interval of a few minutes, instants an hour apart)."""

    __slots__ = ("_edges", "_last", "values")

    def __init__(
        self,
        lo: datetime,
        hi: datetime,
        instants: Iterable[datetime],
        value: Callable[[datetime], V],
    ) -> None:
        lo, hi = utc(lo), utc(hi)
        inner = {u for t in instants if lo < (u := utc(t)) < hi}
        self._edges = sorted({lo, hi} | inner)  # bisected in UTC, as in `Cuts`
        self.values = [value(t) for t in self._edges[:-1]]
        # The piece found last (start, end, index): a series' next interval is
        # most likely in it too, and two comparisons tell.
        self._last = (self._edges[0], self._edges[0], -1)

    def find(self, start: datetime, end: datetime) -> int:
        """The index in `values` of the piece holding all of [start, end) (a
        zero-length interval: the piece holding start), or -1 if there is none
        (the interval crosses an instant or lies outside [lo, hi))."""
        a, b, i = self._last
        if a <= start < b and end <= b:
            return i
        edges = self._edges
        i = bisect_right(edges, utc(start)) - 1
        if i < 0 or i >= len(self.values) or utc(end) > edges[i + 1]:
            return -1
        self._last = (edges[i], edges[i + 1], i)
        return i
