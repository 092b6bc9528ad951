"""Keeps the gateway's registry snapshot fresh from the database."""

from __future__ import annotations

import asyncio
import logging

import psycopg

from gateway.adapters.db import libpq_url
from gateway.adapters.site_store import load_registry
from gateway.backoff import Backoff
from gateway.core.profiles import ProfileCatalog
from gateway.core.registry import Registry
from gateway.metrics import Metrics

log = logging.getLogger(__name__)


class RegistrySource:
    """Holds the current Registry; `refresh_forever` reloads it every few seconds.

    Reloading a few hundred thousand rows' worth of ids is cheap, and polling
    needs no trigger machinery; a pole imported while the gateway runs is
    accepted within one refresh interval (until then its messages are
    dead-lettered as unknown_pole).
    """

    def __init__(
        self, database_url: str, catalog: ProfileCatalog, metrics: Metrics, *, every_s: float
    ) -> None:
        self._url = libpq_url(database_url)
        self._catalog = catalog
        self._metrics = metrics
        self._every_s = every_s
        self._current = Registry((), ())

    def __call__(self) -> Registry:
        return self._current

    async def load(self) -> Registry:
        async with await psycopg.AsyncConnection.connect(
            self._url, application_name="polegw-registry", connect_timeout=5
        ) as conn:
            self._current = await load_registry(conn, self._catalog)
        self._metrics.registry_devices.set(self._current.device_count)
        return self._current

    async def load_with_retry(self, stop: asyncio.Event) -> bool:
        """At start-up: wait for the database rather than ingest with an empty
        registry. False when `stop` was set first."""
        backoff = Backoff(first=0.5, cap=10)
        while not stop.is_set():
            try:
                await self.load()
            except psycopg.OperationalError as exc:
                delay = backoff.next_delay()
                log.warning(
                    "registry: database unreachable (%s); retrying in %.1fs",
                    str(exc).strip(),
                    delay,
                )
                try:
                    async with asyncio.timeout(delay):
                        await stop.wait()
                except TimeoutError:
                    pass
            else:
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
            failing = False
