"""`telemetry_15m_between(device, metric, start, end)`: the 15-minute rollup rows of
one counter with `start <= bucket < end`, read the fast way for each storage.

Metering (gateway/adapters/billing_store.py) reads a port's counter series from
the `telemetry_15m` rollup. With TimescaleDB that is a continuous aggregate and
the function is a plain filter on it. Without TimescaleDB `telemetry_15m` is a
view that aggregates the raw readings; a filter on its `bucket` (a `date_bin`
of `ts`) is no index condition, so every query read the counter's whole
history. Here the function adds bounds on `ts` itself that the bucket bounds
imply (a reading lies in its bucket: `bucket <= ts < bucket + 15 min`), which
the index `telemetry_reading_key (device_id, metric, ts)` serves, and keeps the
view's exact bucket condition and aggregates, so its rows are the view's rows.

SECURITY DEFINER (owned by the gateway's role, search path fixed) so that the
tenant role, which may read `telemetry_15m` but not `telemetry`, can call it.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

SIGNATURE = "telemetry_15m_between(text, text, timestamptz, timestamptz)"

HEAD = """
CREATE FUNCTION telemetry_15m_between(
    p_device text, p_metric text, p_start timestamptz, p_end timestamptz
)
RETURNS TABLE (
    bucket timestamptz,
    first double precision,
    first_ts timestamptz,
    last double precision,
    last_ts timestamptz
)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT
AS $fn$
"""

# The continuous aggregate: what the gateway read before this function.
CONTINUOUS = """
SELECT bucket, first, first_ts, last, last_ts FROM telemetry_15m
WHERE device_id = p_device AND metric = p_metric
  AND bucket >= p_start AND bucket < p_end
ORDER BY bucket
"""

# The plain view's definition (migration 0001) for one counter, with ts bounds.
PLAIN = """
SELECT date_bin(INTERVAL '15 minutes', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
       (array_agg(value ORDER BY ts ASC))[1] AS first,
       min(ts) AS first_ts,
       (array_agg(value ORDER BY ts DESC))[1] AS last,
       max(ts) AS last_ts
FROM telemetry
WHERE device_id = p_device AND metric = p_metric
  AND ts >= p_start AND ts < p_end + INTERVAL '15 minutes'
  AND date_bin(INTERVAL '15 minutes', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00') >= p_start
  AND date_bin(INTERVAL '15 minutes', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00') < p_end
GROUP BY 1
ORDER BY 1
"""


def _continuous() -> bool:
    """Whether telemetry_15m is a TimescaleDB continuous aggregate (as 0001 made it)."""
    bind = op.get_bind()
    installed = "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"
    if not bind.execute(sa.text(installed)).first():
        return False
    return bool(
        bind.execute(
            sa.text(
                "SELECT 1 FROM timescaledb_information.continuous_aggregates"
                " WHERE view_name = 'telemetry_15m'"
            )
        ).first()
    )


def upgrade() -> None:
    body = CONTINUOUS if _continuous() else PLAIN
    op.execute(HEAD + body + "$fn$")
    op.execute(f"REVOKE ALL ON FUNCTION {SIGNATURE} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {SIGNATURE} TO polegw_tenant")


def downgrade() -> None:
    op.execute(f"DROP FUNCTION IF EXISTS {SIGNATURE}")
