"""A gateway started while the database is down (issue 16 item 3).

With no cached registry it still serves the API (/healthz up, /readyz 503 naming
the database), says in the log what is missing, and starts ingesting once the
database answers. The restart from a cached registry during an outage, with real
processes, is in tests/test_fault_database.py."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.core.profiles import load_catalog
from gateway.metrics import Metrics
from gateway.registry_source import RegistrySource
from gateway.service import REGISTRY_CACHE, cancel_all, run_gateway
from tests.faults import gated
from tests.support import count, eventually, gateway_settings, publish, stream, wait_for_port


async def test_without_database_or_cache_the_api_starts_and_ingest_waits(
    database_url: str,
    pool: AsyncConnectionPool,
    mqtt_url: str,
    topic_prefix: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with gated(database_url, opened=False) as (gate, url):
        settings = gateway_settings(url, mqtt_url, topic_prefix, spool_dir=tmp_path / "spool")
        stop, subscribed = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_gateway(settings, stop, subscribed=subscribed))
        api = f"http://127.0.0.1:{settings.api_port}"
        try:
            await asyncio.wait_for(wait_for_port(settings.api_port), 10)
            async with httpx.AsyncClient(base_url=api, timeout=2) as http:
                assert (await http.get("/healthz")).status_code == 200
                await eventually(lambda: "no registry cache" in caplog.text, within=5)
                ready = await http.get("/readyz")
                assert ready.status_code == 503
                assert ready.json()["checks"]["database"].startswith("unreachable"), ready.text
                assert (await http.get("/metrics")).status_code == 200
                assert not subscribed.is_set()  # nothing to ingest with: not subscribed

                await gate.open()
                await asyncio.wait_for(subscribed.wait(), 20)
                messages = stream(topic_prefix, 5)
                await asyncio.to_thread(publish, mqtt_url, messages)
                await eventually(
                    lambda: count(database_url, "SELECT count(*) FROM telemetry") > 0,
                    within=15,
                    what="telemetry after the database returned",
                )
                assert (tmp_path / "spool" / REGISTRY_CACHE).exists()
                for _ in range(50):
                    if (await http.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.2)
                else:
                    raise AssertionError("not ready after the database returned")
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)


async def test_a_damaged_cache_is_refused_with_a_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with gated("postgresql://postgres@127.0.0.1:5432/x", opened=False) as (_, url):
        cache = tmp_path / REGISTRY_CACHE
        cache.write_text('{"version": 1, "poles": ')
        source = RegistrySource(url, load_catalog(), Metrics(), every_s=60, cache=cache)
        assert not await source.start()
        assert not source.loaded
        assert f"the registry cache {cache} cannot be read" in caplog.text


async def test_shutdown_cancels_again_a_task_that_lost_its_cancellation() -> None:
    """On Python 3.11 a cancellation racing a completing wait_for is lost (the
    alarm runner then waited for ever in its TaskGroup at shutdown)."""
    lost = asyncio.Event()

    async def loses_one_cancellation() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            lost.set()  # swallowed, as the lost one was
        await asyncio.sleep(3600)

    task = asyncio.create_task(loses_one_cancellation())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_all([task, None])
    assert lost.is_set()
    assert task.cancelled()
