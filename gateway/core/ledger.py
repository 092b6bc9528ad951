"""The meter-data ledger (计量台账): a port's metered energy kept as pieces of
15-minute slots, so that a bill or a usage report is a sum.

Pure. The rules are those of `metering` (one source): a window of a port's
readings, reduced as the 15-minute rollup reduces them (first and last reading
of each slot, `slot_ends`), is metered by `metering.meter`; each interval is cut
at the slot bounds (`metering.split_interval`, energy pro rata by time) into
pieces. A piece keeps the interval it came from (for pro rata cuts at a lease's
start or a tariff change inside it, and to report an interval's excess whole),
its kWh as measured, the kWh the gap rule would estimate for it (only pieces of
a gap across a reset, and only where the estimate is above the measure: a
tariff that estimates gaps bills that), and its flags as a bit set.

`window` says which pieces one step of the metering worker may write: the
readings of the window reach `CONTEXT` before and `LOOKAHEAD` after the slots
written, so the pieces written are those the metering of all readings gives
(the rules look at most a few readings around: a glitch run, four neighbours of
an estimated gap).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from gateway.core import metering as mt

SLOT = timedelta(minutes=15)
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # the rollup's date_bin origin
MAX_GAP = timedelta(hours=1)  # readings further apart make a gap (as usage_store)
CONTEXT = timedelta(hours=6)  # readings read before the slots a step writes
WRITE_BACK = timedelta(hours=2)  # slots rewritten before the first changed reading
LOOKAHEAD = timedelta(hours=6)  # readings read after the slots a step writes

# Flags as bits (smallint in the database); CLOCK_SUSPECT is the ledger's own:
# a reading held out of metering (its clock cannot be right) fell in the piece.
CLOCK_SUSPECT = mt.Flag.CLOCK_SUSPECT
BITS: dict[str, int] = {
    mt.Flag.WRAPPED: 1,
    mt.Flag.RESET: 2,
    mt.Flag.GLITCH: 4,
    mt.Flag.REPLACED: 8,
    mt.Flag.CAPPED: 16,
    mt.Flag.GAP: 32,
    mt.Flag.ESTIMATED: 64,
    CLOCK_SUSPECT: 128,
}
ESTIMATED_BIT = BITS[mt.Flag.ESTIMATED]


def bits(flags: Iterable[str]) -> int:
    out = 0
    for f in flags:
        out |= BITS[f]
    return out


def flag_names(value: int) -> frozenset[str]:
    return frozenset(str(name) for name, bit in BITS.items() if value & bit)


def slot_of(ts: datetime) -> datetime:
    """The start of the 15-minute slot holding ts (date_bin from 2000-01-01 UTC)."""
    return EPOCH + ((mt.utc(ts) - EPOCH) // SLOT) * SLOT


@dataclass(frozen=True, slots=True)
class Piece:
    start: datetime
    end: datetime
    iv_start: datetime
    iv_end: datetime
    kwh: Decimal
    est_kwh: Decimal | None
    excess_kwh: Decimal
    flags: int

    def same(self, other: Piece) -> bool:
        """Equal in what is stored (numeric equality, not representation)."""
        return (
            self.end == other.end
            and self.iv_start == other.iv_start
            and self.iv_end == other.iv_end
            and self.kwh == other.kwh
            and self.est_kwh == other.est_kwh
            and self.excess_kwh == other.excess_kwh
            and self.flags == other.flags
        )


def slot_ends(readings: Iterable[mt.Reading]) -> list[mt.Reading]:
    """The first and last reading of each 15-minute slot (ordered by ts): what the
    `telemetry_15m` rollup keeps of a counter, and so what metering reads."""
    out: list[mt.Reading] = []
    slot: datetime | None = None
    last: mt.Reading | None = None
    for r in readings:
        s = slot_of(r.ts)
        if s != slot:
            if last is not None and (not out or out[-1] is not last):
                out.append(last)
            out.append(r)
            slot = s
            last = r
        else:
            last = r
    if last is not None and (not out or out[-1] is not last):
        out.append(last)
    return out


def _slot_cuts(start: datetime, end: datetime) -> list[datetime]:
    cuts = []
    t = slot_of(start) + SLOT
    while t < end:
        cuts.append(t)
        t += SLOT
    return cuts


def pieces(
    intervals: Sequence[mt.Interval], estimates: Mapping[int, mt.Interval] | None = None
) -> list[Piece]:
    """Each interval cut at the slot bounds; `estimates` (`metering.gap_estimates`)
    gives a piece its estimated kWh, shared out the same way."""
    out: list[Piece] = []
    estimates = estimates or {}
    for index, iv in enumerate(intervals):
        if iv.start == iv.end:
            continue
        flags = bits(iv.flags)
        cuts = _slot_cuts(iv.start, iv.end)
        parts = mt.split_interval(iv, cuts) if cuts else [iv]
        est = estimates.get(index)
        est_parts = (mt.split_interval(est, cuts) if cuts else [est]) if est else None
        for k, p in enumerate(parts):
            out.append(
                Piece(
                    p.start,
                    p.end,
                    iv.start,
                    iv.end,
                    p.kwh,
                    est_parts[k].kwh if est_parts is not None else None,
                    p.excess_kwh,
                    flags,
                )
            )
    return out


def meter_pieces(
    readings: Sequence[mt.Reading],
    *,
    rated_w: Decimal,
    modulus: Decimal | None,
    replacements: Sequence[mt.Replacement] = (),
    reduce: bool = True,
) -> list[Piece]:
    """The pieces of a series of readings (ordered by ts, distinct): reduced to
    slot ends as the rollup does, metered without estimates, the estimates
    worked out beside them."""
    series = slot_ends(readings) if reduce else list(readings)
    metered = mt.meter(
        series,
        rated_w=rated_w,
        modulus=modulus,
        replacements=replacements,
        max_gap=MAX_GAP,
        estimate_gaps=False,
    )
    estimates = mt.gap_estimates(metered.intervals, rated_w=rated_w)
    return pieces(metered.intervals, estimates)


@dataclass(frozen=True, slots=True)
class Window:
    """One step of a port: write the pieces starting in [write_from, write_to),
    metered from the readings in [read_from, read_to)."""

    read_from: datetime
    write_from: datetime
    write_to: datetime
    read_to: datetime


def window(
    since: datetime,
    until: datetime,
    *,
    before_since: datetime | None,
    before_write: datetime | None,
) -> Window:
    """The window of a step for changed readings from `since` on, writing up to
    `until`. `before_since`: the newest reading before `since` (the interval
    ending at the first changed reading starts there); `before_write`: the newest
    reading before the write start less CONTEXT (so the first interval written
    is whole). Both None when there is none."""
    write_from = slot_of(since - WRITE_BACK)
    if before_since is not None:
        write_from = min(write_from, slot_of(before_since))
    read_from = slot_of(write_from - CONTEXT)
    if before_write is not None:
        read_from = min(read_from, slot_of(before_write))
    write_to = slot_of(until) + SLOT if until > slot_of(until) else slot_of(until)
    return Window(read_from, write_from, write_to, write_to + LOOKAHEAD)


@dataclass(frozen=True, slots=True)
class Change:
    """A piece that changed: None on a side where there was none."""

    start: datetime
    end: datetime
    old: Piece | None
    new: Piece | None


def diff(
    old: Sequence[Piece], new: Sequence[Piece]
) -> tuple[list[Piece], list[Piece], list[Change]]:
    """(pieces to write, pieces to delete, changes) taking `old` to `new`."""
    before = {p.start: p for p in old}
    after = {p.start: p for p in new}
    upserts = [p for p in new if p.start not in before or not before[p.start].same(p)]
    deletes = [p for p in old if p.start not in after]
    changes = [Change(p.start, p.end, before.get(p.start), p) for p in upserts]
    changes += [Change(p.start, p.end, p, None) for p in deletes]
    changes.sort(key=lambda c: c.start)
    return upserts, deletes, changes


def complete(change: Change, metered_to: datetime | None) -> bool:
    """Whether the ledger had counted the old piece as final: it ended at or
    before the newest reading metered then (a piece after it is still open)."""
    return change.old is not None and metered_to is not None and change.old.end <= metered_to


def estimates_back(
    metered: Sequence[Piece], write_from: datetime, *, neighbours: int = 4
) -> tuple[datetime | None, bool]:
    """Where a step must start writing so that the estimates of gaps before
    `write_from` follow the readings from it on: the start of the earliest gap
    across a reset with fewer than `neighbours` measured intervals between it
    and the first interval ending after `write_from` (its estimate looks at
    those, skipping other gaps, so readings hours later can change it), or None;
    and whether the pieces hold that gap's `neighbours` measured intervals
    before it (else the window must read further back)."""
    ivs: list[tuple[datetime, int]] = []
    for p in metered:
        if not ivs or ivs[-1][0] != p.iv_start:
            ivs.append((p.iv_start, p.flags))
    ends = {p.iv_start: p.iv_end for p in metered}
    unmeasured = BITS[mt.Flag.GAP] | BITS[mt.Flag.CAPPED]
    across_reset = BITS[mt.Flag.GAP] | BITS[mt.Flag.RESET]
    k = next((i for i, (s, _) in enumerate(ivs) if ends[s] > write_from), len(ivs))
    found: int | None = None
    seen = 0
    for i in range(k - 1, -1, -1):
        if seen >= neighbours:
            break
        flags = ivs[i][1]
        if flags & across_reset == across_reset:
            found = i
        if not flags & unmeasured:
            seen += 1
    if found is None:
        return None, True
    before = sum(1 for _, f in ivs[:found] if not f & unmeasured)
    return ivs[found][0], before >= neighbours


def estimates_short(
    metered: Sequence[Piece], write_from: datetime, write_to: datetime, *, neighbours: int = 4
) -> tuple[bool, bool]:
    """Whether a gap across a reset written in [write_from, write_to) has fewer
    than `neighbours` measured intervals before it, or after it, in the pieces
    (the window must then read further back, or further on, if it can)."""
    ivs: list[tuple[datetime, int]] = []
    for p in metered:
        if not ivs or ivs[-1][0] != p.iv_start:
            ivs.append((p.iv_start, p.flags))
    unmeasured = BITS[mt.Flag.GAP] | BITS[mt.Flag.CAPPED]
    across_reset = BITS[mt.Flag.GAP] | BITS[mt.Flag.RESET]
    measured = [not f & unmeasured for _, f in ivs]
    short_before = short_after = False
    for i, (start, flags) in enumerate(ivs):
        if flags & across_reset == across_reset and start < write_to:
            short_before |= sum(measured[:i]) < neighbours
            short_after |= sum(measured[i + 1 :]) < neighbours
    return short_before, short_after
