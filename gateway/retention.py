"""Data retention: raw readings and rollups older than the configured days go.

With TimescaleDB the database does the work: at start-up the retention
policies of `telemetry` and of the continuous aggregates are replaced by ones
with the configured ages (remove_retention_policy + add_retention_policy), and
TimescaleDB's job scheduler drops old chunks. Without TimescaleDB the rollups
are views (nothing to delete), and this task deletes raw readings older than
the limit every `every_s` seconds, in batches of `batch` rows so that no single
transaction holds many locks or much WAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

import psycopg

from gateway.adapters.db import libpq_url
from gateway.config import Settings

log = logging.getLogger(__name__)

ROLLUPS = ("telemetry_15m", "telemetry_1h")


class Retention:
    def __init__(
        self,
        database_url: str,
        *,
        raw_days: int,
        rollup_days: int,
        every_s: float = 3600.0,
        batch: int = 10_000,
    ) -> None:
        self._url = libpq_url(database_url)
        self.raw = timedelta(days=raw_days)
        self.rollup = timedelta(days=rollup_days)
        self.every_s = every_s
        self.batch = batch

    @classmethod
    def from_settings(cls, settings: Settings) -> Retention:
        return cls(
            settings.require_database_url(),
            raw_days=settings.retention_raw_days,
            rollup_days=settings.retention_rollup_days,
            every_s=settings.retention_every_s,
        )

    async def _connect(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        return await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, application_name="polegw-retention", connect_timeout=10
        )

    async def timescale(self) -> bool:
        """Whether telemetry is a hypertable (TimescaleDB owns retention then)."""
        async with await self._connect() as conn:
            cur = await conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
            if await cur.fetchone() is None:
                return False
            cur = await conn.execute(
                "SELECT 1 FROM timescaledb_information.hypertables"
                " WHERE hypertable_name = 'telemetry'"
            )
            return await cur.fetchone() is not None

    async def apply_policies(self) -> None:
        """TimescaleDB: make the retention policies match the settings."""
        async with await self._connect() as conn, conn.transaction():
            targets = [("telemetry", self.raw)]
            for view in ROLLUPS:
                cur = await conn.execute(
                    "SELECT 1 FROM timescaledb_information.continuous_aggregates"
                    " WHERE view_name = %s",
                    (view,),
                )
                if await cur.fetchone() is not None:
                    targets.append((view, self.rollup))
            for relation, age in targets:
                await conn.execute(
                    "SELECT remove_retention_policy(%s::regclass, if_exists => true)", (relation,)
                )
                await conn.execute(
                    "SELECT add_retention_policy(%s::regclass, drop_after => %s::interval,"
                    " if_not_exists => true)",
                    (relation, age),
                )
                log.info("retention: %s keeps %s", relation, age)

    async def sweep(self, stop: asyncio.Event | None = None) -> int:
        """Plain PostgreSQL: delete raw readings older than the limit; returns how many."""
        deleted = 0
        async with await self._connect() as conn:
            # Readings deleted for age are not corrections: the ledger keeps what
            # it metered from them (migration 0019's triggers skip this session).
            await conn.execute("SET polegw.meter_queue = 'off'")
            while True:
                cur = await conn.execute(
                    "DELETE FROM telemetry WHERE ctid = ANY(ARRAY("
                    " SELECT ctid FROM telemetry WHERE ts < now() - %s::interval LIMIT %s))",
                    (self.raw, self.batch),
                )
                deleted += cur.rowcount
                if cur.rowcount < self.batch or (stop is not None and stop.is_set()):
                    break
                await asyncio.sleep(0)  # let the rest of the gateway run between batches
        if deleted:
            log.info("retention: deleted %d readings older than %s", deleted, self.raw)
        return deleted

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: apply the policies once (TimescaleDB) or sweep periodically.
        A database that is down is retried at the next interval, never fatal."""
        while not stop.is_set():
            try:
                if await self.timescale():
                    await self.apply_policies()
                    await stop.wait()
                    return
                await self.sweep(stop)
            except (psycopg.Error, OSError) as exc:
                log.warning("retention: %s; trying again in %ss", exc, self.every_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every_s)
