"""`polegw metering …`: the meter-data ledger from the command line.

- `rebuild --from DATE [--port ID]`: meter a range again from the raw readings
  (after a profile fix, or to fill the ledger of data loaded before it), with a
  progress bar. Idempotent (pieces are values: a second run writes nothing) and
  safe while ingestion and the gateway's metering worker run (each port's step
  holds the lock on its watermark row).
- `run`: the metering worker alone (`polegw run` runs it too).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from typing import Annotated
from zoneinfo import ZoneInfo

import typer

from gateway.cli import fail, settings_or_exit, setup_logging
from gateway.cli_errors import run_until_signal

metering_app = typer.Typer(
    help="The meter-data ledger: 15-minute energy per port, kept as readings commit.",
    no_args_is_help=True,
)


def parse_from(value: str, tz: ZoneInfo) -> datetime:
    """YYYY-MM-DD (local midnight in the site's zone) or an RFC 3339 time with offset."""
    try:
        day = date.fromisoformat(value)
    except ValueError:
        pass
    else:
        return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise fail(
            f"--from: {value!r} is neither YYYY-MM-DD nor a time like 2026-11-01T00:00:00+08:00"
        ) from None
    if ts.tzinfo is None:
        raise fail(f"--from: {value!r} has no time zone (add Z or +08:00)")
    return ts.astimezone(UTC)


@metering_app.command("rebuild")
def metering_rebuild(
    since: Annotated[
        str,
        typer.Option(
            "--from", help="YYYY-MM-DD (the site's time zone) or an RFC 3339 time: meter from"
        ),
    ],
    port: Annotated[str | None, typer.Option("--port", help="Only this port (its id)")] = None,
) -> None:
    """Meter the ledger again from the raw readings, from a date on."""
    import psycopg

    from gateway.adapters.ledger_store import LedgerStore
    from gateway.core.profiles import load_catalog
    from gateway.errors import ConfigError
    from gateway.service import open_pool

    settings = settings_or_exit()
    setup_logging(settings.log_level)
    start = parse_from(since, ZoneInfo(settings.site_timezone))

    async def rebuild() -> tuple[int, int, int, int]:
        pool = open_pool(settings.require_database_url())
        await pool.open()
        try:
            ledger = LedgerStore(pool, load_catalog(settings.profiles_dir))
            if port is not None:
                async with pool.connection() as conn:
                    cur = await conn.execute("SELECT 1 FROM ports WHERE id = %s", (port,))
                    if await cur.fetchone() is None:
                        raise fail(f"--port: no port {port!r}")
            async with pool.connection() as conn, conn.transaction():
                await ledger.enqueue(
                    conn, start, reason="rebuild", port_ids=None if port is None else [port]
                )
            jobs = await ledger.queued(None if port is None else [port])
            written = deleted = changes = 0
            with typer.progressbar(length=len(jobs), label="metering ports", show_pos=True) as bar:
                for job in jobs:
                    r = await ledger.step(job)
                    written += r.written
                    deleted += r.deleted
                    changes += r.changes
                    bar.update(1)
            return len(jobs), written, deleted, changes
        finally:
            await pool.close()

    try:
        ports, written, deleted, changes = asyncio.run(rebuild())
    except ConfigError as exc:
        raise fail(str(exc)) from None
    except (OSError, psycopg.Error) as exc:
        raise fail(f"database: {(str(exc) or repr(exc)).splitlines()[0]}") from None
    typer.echo(
        f"metered {ports} port(s) from {start.isoformat()}: {written} piece(s) written,"
        f" {deleted} removed, {changes} change(s) to complete pieces recorded"
    )


@metering_app.command("run")
def metering_run() -> None:
    """Run the metering worker alone until Ctrl-C (`polegw run` runs it too)."""
    from gateway.core.profiles import load_catalog
    from gateway.metering_worker import MeteringWorker
    from gateway.metrics import Metrics
    from gateway.service import open_pool

    settings = settings_or_exit()
    setup_logging(settings.log_level)

    async def main(stop: asyncio.Event) -> None:
        pool = open_pool(settings.require_database_url())
        await pool.open(wait=False)
        try:
            worker = MeteringWorker(
                pool,
                load_catalog(settings.profiles_dir),
                Metrics(),
                every_s=settings.metering_every_s,
            )
            await worker.run(stop)
        finally:
            await pool.close()

    run_until_signal(main)
