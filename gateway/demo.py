"""`polegw demo`: broker, database, demo site, simulators, gateway and API in one process.

Uses the broker and database the settings point at when POLEGW_MQTT_URL /
POLEGW_DATABASE_URL are set; otherwise a Mosquitto already listening on
127.0.0.1:1883, else an embedded amqtt broker; and an embedded PostgreSQL
whose data stays under --data-dir, so a second run reuses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
from pathlib import Path

from gateway.adapters import migrate
from gateway.adapters.db import redacted
from gateway.adapters.site_store import import_site
from gateway.config import Settings
from gateway.service import run_gateway
from simulators.demo_site import demo_site
from simulators.mqtt_poles import run_poles

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _say(text: str) -> None:
    print(text, flush=True)


async def run_demo(
    settings: Settings,
    stop: asyncio.Event,
    *,
    poles: int,
    data_dir: Path,
    interval_s: float,
    embedded_broker_only: bool = False,
) -> None:
    """`data_dir` must exist (the CLI creates it)."""
    from gateway.embedded import embedded_broker, embedded_postgres, port_is_open

    async with contextlib.AsyncExitStack() as stack:
        update: dict[str, object] = {}
        if settings.database_url:
            database_url = settings.database_url
            _say(f"database: {redacted(database_url)} (POLEGW_DATABASE_URL)")
        else:
            _say(f"database: starting embedded PostgreSQL, data in {data_dir}")
            database_url = await stack.enter_async_context(
                embedded_postgres(data_dir / "postgres", port=free_port())
            )
            update["database_url"] = database_url

        if "mqtt_url" in settings.model_fields_set:
            mqtt_url = settings.mqtt_url
            _say(f"broker:   {mqtt_url} (POLEGW_MQTT_URL)")
        elif not embedded_broker_only and port_is_open("127.0.0.1", 1883):
            mqtt_url = "mqtt://127.0.0.1:1883"
            _say(f"broker:   {mqtt_url} (found running)")
        else:
            mqtt_url = await stack.enter_async_context(embedded_broker("127.0.0.1", free_port()))
            update["mqtt_protocol"] = "3.1.1"  # amqtt speaks MQTT 3.1.1 only
            _say(f"broker:   {mqtt_url} (embedded amqtt)")
        update["mqtt_url"] = mqtt_url
        if port_is_open(settings.api_host, settings.api_port):
            update["api_port"] = free_port(settings.api_host)
            _say(f"port {settings.api_port} is taken; the API uses {update['api_port']}")
        if "mqtt_client_id" not in settings.model_fields_set:
            # One persistent session per demo database: two demos on one
            # broker must not take each other's session over.
            tag = hashlib.sha256(database_url.encode()).hexdigest()[:10]
            update["mqtt_client_id"] = f"polegw-demo-{tag}"
        settings = settings.model_copy(update=update)

        await asyncio.to_thread(migrate.upgrade, database_url)
        site = demo_site(poles)
        counts = await import_site(database_url, site)
        _say(f"demo site: {len(site.poles)} poles ({counts})")

        subscribed = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            gateway = tg.create_task(
                run_gateway(settings, stop, subscribed=subscribed), name="gateway"
            )
            waiting = tg.create_task(subscribed.wait())
            stopping = tg.create_task(stop.wait())
            await asyncio.wait({waiting, stopping, gateway}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            stopping.cancel()
            if not stop.is_set():
                tg.create_task(
                    run_poles(
                        site,
                        mqtt_url,
                        prefix=settings.mqtt_topic_prefix,
                        interval_s=interval_s,
                        stop=stop,
                    ),
                    name="simulators",
                )
                api = f"http://{settings.api_host}:{settings.api_port}"
                first = site.poles[0]
                _say(
                    "\npolegw demo is running. Ctrl-C stops it.\n"
                    f"  API docs:        {api}/docs\n"
                    f"  poles:           {api}/api/v1/poles\n"
                    f"  latest values:   {api}/api/v1/devices/{first.devices[0].id}/latest\n"
                    f"  metrics:         {api}/metrics\n"
                    f"  readiness:       {api}/readyz\n"
                )
    _say("polegw demo stopped.")
