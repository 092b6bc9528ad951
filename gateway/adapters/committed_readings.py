"""What every replica committed, read back for the alarm leader (docs/scaling-leaders.md).

Each query probes the telemetry table's unique index (device_id, metric, ts) once
per (device, metric) pair — `unnest` of arrays and a LATERAL index range scan —
so its cost follows the number of pairs and the rows returned, never the size of
the table, on plain PostgreSQL and on a TimescaleDB hypertable alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from gateway.core.readings import Reading

Conn = psycopg.AsyncConnection[Any]

# Device ids compare bytewise (COLLATE "C", migration 0001): the arrays' text is
# given that collation so that the probe matches the index.
_READINGS_AFTER = """
SELECT r.ts, p.device_id, p.metric, r.value, r.quality
FROM unnest(%(devices)s::text[], %(metrics)s::text[], %(after)s::timestamptz[])
     AS p(device_id, metric, after)
CROSS JOIN LATERAL (
    SELECT t.ts, t.value, t.quality FROM telemetry t
    WHERE t.device_id = p.device_id COLLATE "C" AND t.metric = p.metric COLLATE "C"
      AND t.ts > p.after
    ORDER BY t.ts LIMIT %(limit)s
) r
"""

_LAST_HEARD = """
SELECT p.device_id, max(r.ts)
FROM unnest(%(devices)s::text[], %(metrics)s::text[]) AS p(device_id, metric)
CROSS JOIN LATERAL (
    SELECT t.ts FROM telemetry t
    WHERE t.device_id = p.device_id COLLATE "C" AND t.metric = p.metric COLLATE "C"
      AND t.ts > %(since)s
    ORDER BY t.ts DESC LIMIT 1
) r
GROUP BY p.device_id
"""

_EVENTS_HEARD = """
SELECT device_id, max(ts) FROM device_events
WHERE device_id = ANY(%(devices)s::text[] COLLATE "C") AND ts > %(since)s
GROUP BY device_id
"""


async def readings_after(
    conn: Conn, pairs: Sequence[tuple[str, str, datetime]], limit: int
) -> list[Reading]:
    """The readings of each (device, metric) after its time, oldest first, at
    most `limit` per pair."""
    if not pairs:
        return []
    cur = await conn.execute(
        _READINGS_AFTER,
        {
            "devices": [d for d, _, _ in pairs],
            "metrics": [m for _, m, _ in pairs],
            "after": [a for _, _, a in pairs],
            "limit": limit,
        },
    )
    return [Reading(r[0], r[1], r[2], float(r[3]), int(r[4])) for r in await cur.fetchall()]


async def last_heard(
    conn: Conn, pairs: Sequence[tuple[str, str]], since: datetime
) -> dict[str, datetime]:
    """The time of each device's newest reading (of the metrics given for it) or
    event after `since`; devices with none are left out."""
    if not pairs:
        return {}
    devices = sorted({d for d, _ in pairs})
    cur = await conn.execute(
        _LAST_HEARD,
        {"devices": [d for d, _ in pairs], "metrics": [m for _, m in pairs], "since": since},
    )
    out: dict[str, datetime] = {str(r[0]): r[1] for r in await cur.fetchall()}
    cur = await conn.execute(_EVENTS_HEARD, {"devices": devices, "since": since})
    for device_id, at in await cur.fetchall():
        if at is not None and (device_id not in out or at > out[device_id]):
            out[device_id] = at
    return out


async def evaluated_until(conn: Conn, since: datetime) -> dict[tuple[str, str], datetime]:
    """Per (rule, device): the newest reading time an alarm was raised or updated
    at after `since` — readings up to it were evaluated by an earlier leader."""
    cur = await conn.execute(
        "SELECT rule_key, device_id, max(last_seen) FROM alarms"
        " WHERE last_seen > %s GROUP BY rule_key, device_id",
        (since,),
    )
    return {(str(r[0]), str(r[1])): r[2] for r in await cur.fetchall()}
