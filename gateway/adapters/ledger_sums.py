"""Sums over the meter-data ledger (migration 0019), set-based: bills and usage
ask the database for kWh by lease (or port), tariff version, period, bucket and
estimated, and Python touches only the result rows.

The time-of-use side is a small table made in Python from the tariff versions
(`segments`): [start, end) cut at every 15-minute slot bound, local hour,
bucket bound and version change, each piece with its version and period (the
rules of `tariffs.Clock`, the one source). The database joins the ledger's
pieces to it by slot (an equality: a hash join) and to the leases' spans; a
piece crossing a span's start or end or a version change inside its slot is
shared pro rata by time, as `metering.split_interval` shares an interval.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from gateway.core import ledger as lg
from gateway.core import metering as mt
from gateway.core import tariffs as tf

MARGIN = timedelta(days=1)  # as usage_store: readings this far around a window


@dataclass(frozen=True, slots=True)
class SpanKey:
    """Whose energy a sum is: a lease (or a port alone: lease_id 0) on a port
    from start to end, priced by the tariff named `tariff`."""

    lease_id: int
    port_id: str
    tariff: str
    start: datetime
    end: datetime
    estimate: bool


@dataclass(frozen=True, slots=True)
class Sum:
    lease_id: int
    port_id: str
    tariff_id: int | None
    period: str | None
    bucket: datetime | None
    estimated: bool
    kwh: Decimal
    positive: int  # parts above 0 kWh
    flags: int  # of the parts above 0 kWh
    first: datetime  # the start of the earliest part
    total: Decimal  # of all parts (0 kWh ones too)


@dataclass(frozen=True, slots=True)
class FlaggedInterval:
    lease_id: int
    port_id: str
    start: datetime
    end: datetime
    kwh: Decimal
    excess_kwh: Decimal
    flags: int


def segments(
    name: str,
    tariffs: Sequence[tf.Tariff],
    tz: ZoneInfo,
    start: datetime,
    end: datetime,
    buckets: Sequence[datetime] = (),
) -> list[tuple[str, datetime, datetime, datetime, int | None, str | None, datetime | None]]:
    """(tariff name, slot, a, b, version id, period, bucket) covering [start, end)."""
    start, end = mt.utc(start), mt.utc(end)
    clock = tf.Clock(tariffs, tz, start, end)
    changes = [mt.utc(t.valid_from) for t in tariffs] + [
        mt.utc(t.valid_to) for t in tariffs if t.valid_to
    ]
    slots = []
    t = lg.slot_of(start) + lg.SLOT
    while t < end:
        slots.append(t)
        t += lg.SLOT
    bucket_utc = sorted(mt.utc(b) for b in buckets)
    edges = sorted(
        {start, end}
        | {x for x in [*slots, *clock.hours, *changes, *bucket_utc] if start < mt.utc(x) < end}
    )
    edges = [mt.utc(x) for x in edges]
    out = []
    for a, b in pairwise(edges):
        tariff, period = clock.at(a)
        bucket = None
        if bucket_utc:
            i = bisect_right(bucket_utc, a) - 1
            bucket = bucket_utc[i] if i >= 0 else start
        out.append(
            (
                name,
                lg.slot_of(a),
                a,
                b,
                None if tariff is None else tariff.id,
                None if period is None else period.value,
                bucket,
            )
        )
    return out


_PARTS = """
WITH seg AS (
    SELECT *, a = slot AND b = slot + INTERVAL '15 minutes' AS whole
    FROM unnest(%(s_key)s::text[], %(s_slot)s::timestamptz[], %(s_a)s::timestamptz[],
        %(s_b)s::timestamptz[], %(s_cls)s::int[]) AS s(key, slot, a, b, cls)
), span AS (
    SELECT * FROM unnest(%(l_id)s::bigint[], %(l_port)s::text[], %(l_key)s::text[],
        %(l_a)s::timestamptz[], %(l_b)s::timestamptz[], %(l_est)s::boolean[])
        AS l(lease_id, port_id, key, a, b, est)
), slots AS MATERIALIZED (
    -- Each span's slot sums (meter_slots), read by index range: a few per port.
    SELECT span.lease_id, span.key, span.est, s.slot, s.kwh, s.gap_kwh, s.est_kwh,
           s.flags, s.gap_flags, s.est_flags
    FROM span
    JOIN meter_slots s ON s.port_id = span.port_id
        AND s.slot >= span.a AND s.slot <= span.b - INTERVAL '15 minutes'
), whole AS (
    -- Slots lying whole in a span and in one segment, not estimated (pieces
    -- without an estimate, and with one where the tariff does not estimate) ...
    SELECT w.lease_id, seg.cls, false AS estimated, w.slot,
           CASE WHEN w.est THEN w.kwh ELSE w.kwh + w.gap_kwh END AS kwh,
           CASE WHEN w.est THEN w.flags ELSE w.flags | w.gap_flags END AS flags
    FROM slots w JOIN seg ON seg.key = w.key AND seg.slot = w.slot AND seg.whole
    UNION ALL
    -- ... and estimated
    SELECT w.lease_id, seg.cls, true, w.slot, w.est_kwh, w.est_flags
    FROM slots w JOIN seg ON seg.key = w.key AND seg.slot = w.slot AND seg.whole
    WHERE w.est AND w.est_kwh > 0
), whole_sums AS (
    SELECT lease_id, cls, estimated,
           coalesce(sum(kwh) FILTER (WHERE kwh > 0), 0) AS kwh,
           count(*) FILTER (WHERE kwh > 0) AS n,
           coalesce(bit_or(flags) FILTER (WHERE kwh > 0), 0) AS flags, min(slot) AS lo,
           sum(kwh) AS total
    FROM whole
    GROUP BY lease_id, cls, estimated
), edge AS MATERIALIZED (
    -- The other pieces: near a span's ends, or in a slot a version change cuts.
    SELECT span.lease_id, span.port_id, span.key, span.a AS span_a, span.b AS span_b,
           span.est AND m.est_kwh IS NOT NULL AS estimated,
           CASE WHEN span.est AND m.est_kwh IS NOT NULL THEN m.est_kwh ELSE m.kwh END AS whole,
           m.start, m."end", m.flags,
           date_bin(INTERVAL '15 minutes', m.start, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS slot
    FROM span
    JOIN meter_ledger m ON m.port_id = span.port_id AND m."end" > span.a
        AND m.start >= span.a - INTERVAL '15 minutes' AND m.start < span.a + INTERVAL '15 minutes'
        AND m.start < span.b
    UNION
    SELECT span.lease_id, span.port_id, span.key, span.a, span.b,
           span.est AND m.est_kwh IS NOT NULL,
           CASE WHEN span.est AND m.est_kwh IS NOT NULL THEN m.est_kwh ELSE m.kwh END,
           m.start, m."end", m.flags,
           date_bin(INTERVAL '15 minutes', m.start, TIMESTAMPTZ '2000-01-01 00:00:00+00')
    FROM span
    JOIN meter_ledger m ON m.port_id = span.port_id AND m."end" > span.a
        AND m.start >= span.b - INTERVAL '15 minutes' AND m.start < span.b
    UNION
    SELECT span.lease_id, span.port_id, span.key, span.a, span.b,
           span.est AND m.est_kwh IS NOT NULL,
           CASE WHEN span.est AND m.est_kwh IS NOT NULL THEN m.est_kwh ELSE m.kwh END,
           m.start, m."end", m.flags, cut.slot
    FROM span
    JOIN seg cut ON cut.key = span.key AND NOT cut.whole
    JOIN meter_ledger m ON m.port_id = span.port_id AND m."end" > span.a AND m.start < span.b
        AND m.start >= cut.slot AND m.start < cut.slot + INTERVAL '15 minutes'
), share AS (
    SELECT p.lease_id, seg.cls, p.estimated,
           p.flags, greatest(p.start, p.span_a, seg.a) AS lo,
           CASE WHEN greatest(p.start, p.span_a, seg.a) = p.start
                     AND least(p."end", p.span_b, seg.b) = p."end" THEN p.whole
                ELSE p.whole * extract(epoch FROM least(p."end", p.span_b, seg.b)
                                                  - greatest(p.start, p.span_a, seg.a))
                     / extract(epoch FROM p."end" - p.start)
           END AS kwh
    FROM edge p
    JOIN seg ON seg.key = p.key AND seg.slot = p.slot AND p.start < seg.b AND p."end" > seg.a
    WHERE least(p."end", p.span_b, seg.b) > greatest(p.start, p.span_a, seg.a)
      AND NOT (seg.whole AND p.slot >= p.span_a AND p.slot <= p.span_b - INTERVAL '15 minutes')
), rows AS (
    SELECT lease_id, cls, estimated, kwh, n, flags, lo, total
    FROM whole_sums
    UNION ALL
    SELECT lease_id, cls, estimated,
           CASE WHEN kwh > 0 THEN kwh ELSE 0 END, CASE WHEN kwh > 0 THEN 1 ELSE 0 END,
           CASE WHEN kwh > 0 THEN flags ELSE 0 END, lo, kwh
    FROM share
)
SELECT lease_id, cls, estimated,
       sum(kwh), sum(n), bit_or(flags), min(lo), sum(total)
FROM rows
GROUP BY lease_id, cls, estimated
"""

_FLAGGED = """
WITH span AS (
    SELECT * FROM unnest(%(l_id)s::bigint[], %(l_port)s::text[], %(l_a)s::timestamptz[],
        %(l_b)s::timestamptz[], %(l_est)s::boolean[]) AS l(lease_id, port_id, a, b, est)
), part AS (
    SELECT span.lease_id, span.port_id, m.iv_start, m.iv_end, m.start, m."end",
           greatest(m.start, span.a) AS lo, least(m."end", span.b) AS hi,
           greatest(m.iv_start, span.a) AS iv_lo, least(m.iv_end, span.b) AS iv_hi,
           CASE WHEN span.est AND m.est_kwh IS NOT NULL THEN m.est_kwh ELSE m.kwh END AS whole,
           m.excess_kwh,
           m.flags | CASE WHEN span.est AND m.est_kwh IS NOT NULL THEN %(est_bit)s ELSE 0 END
               AS flags
    FROM span
    JOIN meter_ledger m ON m.port_id = span.port_id
        AND m.start >= span.a - INTERVAL '15 minutes' AND m.start < span.b AND m."end" > span.a
    WHERE (m.flags <> 0 OR m.est_kwh IS NOT NULL)
      AND (m.flags <> 0 OR span.est)
      AND (%(excess_only)s = false OR m.excess_kwh > 0)
)
SELECT lease_id, port_id, min(iv_lo), max(iv_hi),
       sum(CASE WHEN lo = start AND hi = "end" THEN whole
           ELSE whole * extract(epoch FROM hi - lo) / extract(epoch FROM "end" - start) END),
       sum(CASE WHEN lo = start AND hi = "end" THEN excess_kwh
           ELSE excess_kwh * extract(epoch FROM hi - lo) / extract(epoch FROM "end" - start) END),
       bit_or(flags)
FROM part WHERE hi > lo
GROUP BY lease_id, port_id, iv_start, iv_end
ORDER BY lease_id, port_id, min(iv_lo)
"""


def _span_args(spans: Sequence[SpanKey]) -> dict[str, Any]:
    return {
        "l_id": [s.lease_id for s in spans],
        "l_port": [s.port_id for s in spans],
        "l_key": [s.tariff for s in spans],
        "l_a": [s.start for s in spans],
        "l_b": [s.end for s in spans],
        "l_est": [s.estimate for s in spans],
    }


async def sums(
    conn: psycopg.AsyncConnection[Any],
    spans: Sequence[SpanKey],
    segs: Sequence[
        tuple[str, datetime, datetime, datetime, int | None, str | None, datetime | None]
    ],
) -> list[Sum]:
    """kWh of the spans by (lease, port, version, period, bucket, estimated).
    The database groups by small integers (the span's index, the segment's class
    of version, period and bucket); they are named here."""
    if not spans:
        return []
    classes: dict[tuple[int | None, str | None, datetime | None], int] = {}
    cls = [classes.setdefault((s[4], s[5], s[6]), len(classes)) for s in segs]
    named = list(classes)
    # A month of 100 ports groups ~300,000 slot rows into a few hundred sums:
    # hashed in memory (the planner, unable to see into the arrays, would sort).
    # Both only for this statement: put back after it (SET LOCAL would last to
    # the end of the caller's transaction, and a later query without sorts is slow).
    cur = await conn.execute(
        "SELECT current_setting('work_mem'), current_setting('enable_sort'),"
        " set_config('work_mem', '64MB', true), set_config('enable_sort', 'off', true)"
    )
    saved = await cur.fetchone()
    assert saved is not None
    cur = await conn.execute(
        _PARTS,
        _span_args(spans)
        | {
            "l_id": list(range(len(spans))),
            "s_key": [s[0] for s in segs],
            "s_slot": [s[1] for s in segs],
            "s_a": [s[2] for s in segs],
            "s_b": [s[3] for s in segs],
            "s_cls": cls,
        },
    )
    rows = await cur.fetchall()
    await conn.execute(
        "SELECT set_config('work_mem', %s, true), set_config('enable_sort', %s, true)",
        (saved[0], saved[1]),
    )
    out = []
    for sid, c, est, kwh, n, flags, first, total in rows:
        span = spans[sid]
        tariff, period, bucket = named[c]
        out.append(
            Sum(
                span.lease_id,
                span.port_id,
                tariff,
                period,
                bucket,
                est,
                kwh,
                n,
                flags,
                first,
                total,
            )
        )
    return out


async def flagged(
    conn: psycopg.AsyncConnection[Any], spans: Sequence[SpanKey], *, excess_only: bool = False
) -> list[FlaggedInterval]:
    """The flagged intervals of the spans (or just those with excess), each cut
    to its span, with its kWh and excess pro rata."""
    if not spans:
        return []
    cur = await conn.execute(
        _FLAGGED,
        _span_args(spans) | {"est_bit": lg.ESTIMATED_BIT, "excess_only": excess_only},
    )
    return [FlaggedInterval(*row) for row in await cur.fetchall()]


async def extents(
    conn: psycopg.AsyncConnection[Any], port_ids: Sequence[str], start: datetime, end: datetime
) -> dict[str, tuple[datetime | None, datetime | None, list[tuple[datetime, datetime]]]]:
    """For each port: the first and last reading the ledger knows around [start,
    end) (a day beyond either side) and its gaps inside it."""
    out: dict[str, tuple[datetime | None, datetime | None, list[tuple[datetime, datetime]]]] = {}
    if not port_ids:
        return out
    # Pieces are in time order: the first one's interval starts earliest.
    cur = await conn.execute(
        "SELECT p, (SELECT iv_start FROM meter_ledger WHERE port_id = p"
        " AND start >= %(lo)s AND start < %(hi)s ORDER BY start LIMIT 1),"
        " (SELECT iv_end FROM meter_ledger WHERE port_id = p"
        " AND start >= %(lo)s AND start < %(hi)s ORDER BY start DESC LIMIT 1)"
        " FROM unnest(%(ports)s::text[]) AS p",
        {"ports": list(port_ids), "lo": start - MARGIN, "hi": end + MARGIN},
    )
    ends = {p: (a, b) for p, a, b in await cur.fetchall()}
    cur = await conn.execute(
        "SELECT DISTINCT port_id, greatest(iv_start, %(a)s), least(iv_end, %(b)s)"
        " FROM meter_ledger WHERE port_id = ANY(%(ports)s)"
        " AND start >= %(a)s - INTERVAL '15 minutes' AND start < %(b)s AND \"end\" > %(a)s"
        " AND (flags <> 0 OR est_kwh IS NOT NULL) AND flags & %(gap)s <> 0 ORDER BY 1, 2",
        {"ports": list(port_ids), "a": start, "b": end, "gap": lg.BITS[mt.Flag.GAP]},
    )
    gaps: dict[str, list[tuple[datetime, datetime]]] = {}
    for p, a, b in await cur.fetchall():
        if a < b:
            gaps.setdefault(p, []).append((a, b))
    for p in port_ids:
        first, last = ends.get(p, (None, None))
        out[p] = (first, last, gaps.get(p, []))
    return out


async def held(
    conn: psycopg.AsyncConnection[Any], port_ids: Sequence[str], start: datetime, end: datetime
) -> list[tuple[str, datetime, float, int, datetime]]:
    """Readings held out of metering (clock-suspect) stamped or seen in [start, end)."""
    cur = await conn.execute(
        "SELECT port_id, ts, value, quality, seen_at FROM meter_held"
        " WHERE port_id = ANY(%(ports)s) AND ((ts >= %(a)s AND ts < %(b)s)"
        " OR (seen_at >= %(a)s AND seen_at < %(b)s)) ORDER BY port_id, ts",
        {"ports": list(port_ids), "a": start, "b": end},
    )
    return [(r[0], r[1], r[2], r[3], r[4]) for r in await cur.fetchall()]
