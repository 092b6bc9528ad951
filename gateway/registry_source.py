"""Keeps the gateway's registry snapshot fresh from the database, and a copy of it
on disk for a start while the database is down."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg

from gateway.adapters.db import libpq_url, redacted
from gateway.adapters.site_store import SiteRows, fetch_site_rows, registry_from_rows
from gateway.backoff import Backoff
from gateway.core.profiles import ProfileCatalog
from gateway.core.registry import Registry
from gateway.metrics import Metrics

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def _why(exc: Exception) -> str:
    """The first line of an error's message (psycopg's run to several)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class RegistrySource:
    """Holds the current Registry; `refresh_forever` reloads it every few seconds.

    Reloading a few hundred thousand rows' worth of ids is cheap, and polling
    needs no trigger machinery; a pole imported while the gateway runs is
    accepted within one refresh interval (until then its messages are
    dead-lettered as unknown_pole).

    With `cache`, every registry that differs from the last one is also written
    there (atomically: a temporary file, fsynced, renamed over the old one), so a
    gateway started while the database is down starts from the last known site
    (`start`) and spools what arrives instead of waiting.
    """

    def __init__(
        self,
        database_url: str,
        catalog: ProfileCatalog,
        metrics: Metrics,
        *,
        every_s: float,
        cache: Path | None = None,
    ) -> None:
        self._url = libpq_url(database_url)
        self._source = redacted(self._url)  # which database a cache is of
        self._catalog = catalog
        self._metrics = metrics
        self._every_s = every_s
        self._cache = cache
        self._rows: SiteRows | None = None
        self._current = Registry((), ())

    def __call__(self) -> Registry:
        return self._current

    @property
    def loaded(self) -> bool:
        """A registry was loaded (from the database or the cache)."""
        return self._rows is not None

    async def load(self) -> Registry:
        async with await psycopg.AsyncConnection.connect(
            self._url, application_name="polegw-registry", connect_timeout=5
        ) as conn:
            rows = await fetch_site_rows(conn)
        if rows != self._rows:
            self._adopt(rows)
            await self._write_cache(rows)
        return self._current

    def _adopt(self, rows: SiteRows) -> None:
        self._current = registry_from_rows(rows, self._catalog)
        self._rows = rows
        self._metrics.registry_devices.set(self._current.device_count)

    async def start(self) -> bool:
        """At start-up: the registry from the database, or else from the cache.
        False when neither is available (then `load_with_retry`)."""
        try:
            await self.load()
        except psycopg.OperationalError as exc:
            why = _why(exc)
        else:
            return True
        rows, missing = await asyncio.to_thread(self._read_cache)
        if rows is None:
            log.error(
                "the database is unreachable (%s) and %s: nothing is ingested until the"
                " database answers; the API is up meanwhile (/readyz says what is missing)",
                why,
                missing,
            )
            return False
        self._adopt(rows)
        log.warning(
            "the database is unreachable (%s); starting with the registry cached in %s"
            " (%d poles, %d devices); readings are spooled until the database answers",
            why,
            self._cache,
            len(rows.poles),
            self._current.device_count,
        )
        return True

    def _read_cache(self) -> tuple[SiteRows | None, str]:
        """The cached rows, or None and what is missing."""
        path = self._cache
        if path is None:
            return None, "no registry cache is configured"
        try:
            body = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return None, f"there is no registry cache ({path}) from an earlier run"
        except (OSError, orjson.JSONDecodeError) as exc:
            return None, f"the registry cache {path} cannot be read ({exc})"
        try:
            if body["version"] != CACHE_VERSION:
                return None, f"the registry cache {path} has version {body['version']}"
            if body["database"] != self._source:
                return None, f"the registry cache {path} is of another database"
            poles = [str(p) for p in body["poles"]]
            devices = [dict(d) for d in body["devices"]]
        except (KeyError, TypeError, ValueError) as exc:
            return None, f"the registry cache {path} is damaged ({exc!r})"
        return SiteRows(poles, devices), ""

    async def _write_cache(self, rows: SiteRows) -> None:
        if self._cache is None:
            return
        try:
            await asyncio.to_thread(self._write_cache_sync, rows)
        except OSError as exc:
            log.warning("cannot write the registry cache %s: %s", self._cache, exc)

    def _write_cache_sync(self, rows: SiteRows) -> None:
        assert self._cache is not None
        body = {
            "version": CACHE_VERSION,
            "database": self._source,
            "written_at": datetime.now(UTC).isoformat(),
            "poles": rows.poles,
            "devices": rows.devices,
        }
        folder = self._cache.parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self._cache.name}.", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(orjson.dumps(body))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._cache)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def load_with_retry(self, stop: asyncio.Event) -> bool:
        """Wait for the database rather than ingest with an empty registry.
        False when `stop` was set first."""
        cap_s = 10.0
        backoff = Backoff(first=0.5, cap=cap_s)
        while not stop.is_set():
            try:
                await self.load()
            except psycopg.OperationalError as exc:
                delay = backoff.next_delay()
                # Once at WARNING (the outage may last hours), then at DEBUG.
                log.log(
                    logging.WARNING if backoff.failures == 1 else logging.DEBUG,
                    "registry: database unreachable (%s); retrying every %.0fs at most",
                    _why(exc),
                    cap_s,
                )
                try:
                    async with asyncio.timeout(delay):
                        await stop.wait()
                except TimeoutError:
                    pass
            else:
                if backoff.failures:
                    log.info("registry loaded from the database; ingest starts")
                return True
        return False

    async def refresh_forever(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._every_s)
            try:
                await self.load()
            except psycopg.OperationalError as exc:
                if not failing:
                    log.warning(
                        "registry refresh failed, keeping the last one: %s", str(exc).strip()
                    )
                failing = True
                continue
            if failing:
                log.info("registry refreshed from the database again")
            failing = False
