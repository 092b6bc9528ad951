"""The gateway process: ingest (MQTT -> pipeline -> database) and the API, supervised."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
from collections.abc import Iterable, Iterator
from datetime import timedelta

import uvicorn
from psycopg_pool import AsyncConnectionPool

from gateway.adapters.adoption import SessionAdoption
from gateway.adapters.command_store import CommandStore
from gateway.adapters.credentials import TokenIssuer
from gateway.adapters.db import DatabaseHealth, TenantScopedPool, libpq_url
from gateway.adapters.events import LiveEvents, TelemetryAnnouncer, poles_from
from gateway.adapters.leases import LeaseKeeper
from gateway.adapters.modbus_bus import BusOptions
from gateway.adapters.mqtt import MqttSubscription, client_id_lock, settings_tls_context
from gateway.adapters.spool import AsyncSpool, FullPolicy, SpoolError
from gateway.adapters.telemetry_writer import TelemetryWriter
from gateway.alarming import build_alarm_runner
from gateway.api.app import create_app, create_internals_app
from gateway.api.deps import ApiContext
from gateway.clocks import ClockSync
from gateway.command_routing import CommandRouting
from gateway.commands import CommandDispatcher
from gateway.config import MqttEndpoint, Settings
from gateway.core.auth import LoginThrottle
from gateway.core.ownership import LEADER_ROLES, leader
from gateway.core.profiles import ProfileCatalog, load_catalog
from gateway.core.rate_limit import TokenBuckets
from gateway.errors import ConfigError
from gateway.ingest import IngestPipeline
from gateway.metrics import Metrics
from gateway.modbus_polling import ModbusPolling, StateStore
from gateway.presence import MqttPresence, heard_in
from gateway.registry_source import RegistrySource

log = logging.getLogger(__name__)

# The cyclic collector's young generation, in tracked objects allocated net of those
# freed. CPython's default, 700, is crossed by every batch of readings in flight, so
# each batch was walked and promoted, and every ~15 s a full collection (~90 ms of CPU)
# stalled the event loop: ~6 % of a polling gateway's CPU (docs/performance.md).
GC_YOUNG_THRESHOLD = 10_000


def tune_collector() -> None:
    """Once the process is built: what exists now lives as long as the process and
    is left out of every collection (gc.freeze); the young generation is raised so
    that batches are freed by reference counting before the collector sees them."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


# The last known registry, beside the spool (RegistrySource): a gateway started
# while the database is down starts from it.
REGISTRY_CACHE = "registry.json"


class ApiServer(uvicorn.Server):
    """uvicorn without its own signal handling: the supervisor owns SIGINT/SIGTERM.

    It binds its socket itself: uvicorn answers a port in use with sys.exit(1)
    from inside a task, which no supervisor can report as one line."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        if sockets is None:
            sockets = [listening_socket(self.config.host, self.config.port)]
        try:
            await super().serve(sockets)
        finally:
            for sock in sockets:
                sock.close()


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port, or a ConfigError naming the settings to change."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise ConfigError(
            f"the API cannot listen on {host}:{port}:"
            f" {os.strerror(exc.errno) if exc.errno else exc}"
            " (another polegw running? choose POLEGW_API_PORT or POLEGW_API_HOST)"
        ) from None


def open_pool(database_url: str) -> AsyncConnectionPool:
    """The API's pool; connections are checked before use, so a restarted
    PostgreSQL costs failed requests only while it is down. A tenant's request
    gets connections scoped to the tenant (row-level security, migration 0013)."""
    return TenantScopedPool(
        libpq_url(database_url),
        min_size=1,
        max_size=10,
        open=False,
        check=AsyncConnectionPool.check_connection,
        kwargs={"application_name": "polegw-api", "connect_timeout": 5},
        timeout=5,
        # Give up the pool's own reconnect back-off after 5 s: from then on each
        # request that needs a connection makes a fresh attempt, so the first
        # request after PostgreSQL is back succeeds (the back-off alone grows to
        # tens of seconds in a long outage).
        reconnect_timeout=5,
    )


def open_spool(settings: Settings) -> AsyncSpool | None:
    """The on-disk spool (None when POLEGW_SPOOL_MAX_BYTES is 0)."""
    if settings.spool_max_bytes == 0:
        return None
    try:
        return AsyncSpool.open(
            settings.spool_dir,
            max_bytes=settings.spool_max_bytes,
            policy=FullPolicy(settings.spool_full_policy),
        )
    except (OSError, SpoolError) as exc:
        raise ConfigError(f"POLEGW_SPOOL_DIR={settings.spool_dir}: {exc}") from exc


async def cancel_all(tasks: Iterable[asyncio.Task[None] | None]) -> None:
    """Cancel the tasks and wait for them, cancelling again those still running a
    second later: on Python 3.11 a cancellation that arrives as an awaited
    `wait_for` completes (psycopg_pool's getconn, when the database has just come
    back) is lost, and a task that lost it would hold shutdown for ever."""
    pending = {t for t in tasks if t is not None}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
        if pending:
            log.warning(
                "stopping: %s did not stop when cancelled; again",
                sorted(t.get_name() for t in pending),
            )


async def run_gateway(
    settings: Settings,
    stop: asyncio.Event,
    *,
    catalog: ProfileCatalog | None = None,
    metrics: Metrics | None = None,
    api: bool = True,
    subscribed: asyncio.Event | None = None,
    tune_gc: bool = False,
) -> None:
    """Run ingest and (optionally) the API until `stop` is set, then shut down cleanly.

    `subscribed` is set whenever the MQTT subscription is in place (for callers
    that must not publish before the gateway listens).
    """
    database_url = settings.require_database_url()
    secret = settings.require_secret_key() if api else ""  # fail before starting anything
    with client_id_lock(settings):  # held by MqttSubscription.run; checked here, early
        pass
    if MqttEndpoint(settings.mqtt_url).tls:
        settings_tls_context(settings)  # unreadable TLS files: say so now, once
    tokens = TokenIssuer(secret, timedelta(seconds=settings.token_ttl_s))
    catalog = catalog or load_catalog(settings.profiles_dir)
    metrics = metrics or Metrics()
    registry = RegistrySource(
        database_url,
        catalog,
        metrics,
        every_s=settings.registry_refresh_s,
        cache=settings.spool_dir / REGISTRY_CACHE,
    )
    # From the database, else from the copy beside the spool; with neither the
    # API starts anyway and ingest waits for the database (below).
    have_registry = await registry.start()
    writer = TelemetryWriter(database_url)
    spool = open_spool(settings)
    pipeline = IngestPipeline(
        writer=writer,
        registry=registry,
        metrics=metrics,
        prefix=settings.mqtt_topic_prefix,
        max_readings=settings.batch_max_readings,
        max_delay_s=settings.batch_max_delay_s,
        clock_max_ahead=timedelta(seconds=settings.clock_max_ahead_s),
        clock_max_age=timedelta(seconds=settings.clock_max_age_s),
        spool=spool,
        spool_after_s=settings.spool_after_s,
        pole_limit=(
            TokenBuckets(settings.mqtt_pole_rate_per_s, settings.mqtt_pole_burst)
            if settings.mqtt_pole_rate_per_s > 0
            else None
        ),
    )
    pool = open_pool(database_url)
    database = DatabaseHealth(database_url)
    # Replicas share the work that must happen once through leases (docs/scaling.md);
    # a single gateway (no share group) owns everything without asking.
    leases = LeaseKeeper(
        database_url,
        settings.mqtt_client_id,
        ttl_s=settings.lease_ttl_s,
        enabled=settings.replicated,
        metrics=metrics,
    )
    leases.want("leader", lambda: [leader(role) for role in LEADER_ROLES])
    metrics.replica.labels(settings.mqtt_client_id, settings.mqtt_share_group or "").set(1)
    command_store = CommandStore(
        pool,
        replica=settings.mqtt_client_id if settings.replicated else None,
        lease_ttl_s=settings.lease_ttl_s,
    )
    replies: list[CommandDispatcher] = []  # the dispatcher needs mqtt, mqtt routes replies to it
    mqtt = MqttSubscription(
        settings,
        metrics,
        subscribed=subscribed,
        on_reply=lambda topic, payload: replies[0].on_reply(topic, payload),
    )
    states = StateStore(pool)
    modbus = ModbusPolling(
        registry=registry,
        pipeline=pipeline,
        metrics=metrics,
        on_state=states,
        options=BusOptions(
            timeout_s=settings.modbus_timeout_s,
            rtu_gap_s=settings.modbus_rtu_gap_s,
            offline_after=settings.modbus_offline_after,
            quarantine_cap_s=settings.modbus_quarantine_cap_s,
        ),
        refresh_s=settings.registry_refresh_s,
        leases=leases,  # replicas: each bus polled by the holder of its lease
    )
    routing = (  # replicas: commands reach the owner of the device's bus via the database
        CommandRouting(
            database_url=database_url,
            store=command_store,
            leases=leases,
            registry=registry,
            polls=modbus.bus_for,
            prefix=settings.mqtt_topic_prefix,
            command_timeout_s=settings.command_timeout_s,
            sweep_s=max(1.0, settings.lease_ttl_s / 3),
        )
        if settings.replicated
        else None
    )
    if routing is not None:
        modbus.on_polling.append(routing.kick)
    dispatcher = CommandDispatcher(
        store=command_store,
        bus_for=modbus.bus_for,
        publish=mqtt.publish,
        prefix=settings.mqtt_topic_prefix,
        timeout_s=settings.command_timeout_s,
        routing=routing,
    )
    replies.append(dispatcher)
    await pool.open(wait=False)
    alarms = build_alarm_runner(  # docs/decisions-alarms.md
        settings=settings,
        pool=pool,
        catalog=catalog,
        registry=registry,
        dispatcher=dispatcher,
        fence=(lambda conn: leases.fence(conn, leader("alarms"))) if settings.replicated else None,
    )
    pipeline.on_committed.append(alarms.on_batch)
    announcer = TelemetryAnnouncer(pool)  # the console's live telemetry events
    pipeline.on_committed.append(announcer.committed)
    clocks = ClockSync(  # README "Clocks"
        publish=mqtt.publish,
        metrics=metrics,
        prefix=settings.mqtt_topic_prefix,
        max_skew_s=settings.clock_sync_max_skew_s,
        interval_s=settings.clock_sync_interval_s,
    )
    pipeline.on_stamp.append(clocks.observe)
    presence = MqttPresence(  # MQTT devices' state from data and status
        registry, states, heard=heard_in(pool, registry) if settings.replicated else None
    )
    pipeline.on_committed.append(presence.on_batch)
    server: ApiServer | None = None
    internals: ApiServer | None = None
    if tune_gc:  # `polegw run`: this process is the gateway (docs/decisions.md, issue 20)
        tune_collector()
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(database.run(stop), name="database-probe")
            lease_keeper = tg.create_task(leases.run(stop), name="leases")
            # Commands the last run left unfinished are failed once the database answers.
            tg.create_task(command_store.abandon_unfinished_when_reachable(stop), name="commands")
            if routing is not None:
                tg.create_task(routing.run(dispatcher, stop), name="command-routing")
            commit = tg.create_task(pipeline.run(), name="ingest-commit")
            state_writer = tg.create_task(states.run(), name="device-state-writer")
            tg.create_task(presence.run(stop), name="mqtt-presence")
            # The alarm engine, offline detection and protective actions run in the
            # alarm leader only; with replicas it evaluates what all of them
            # committed (gateway/alarm_feed.py).
            alarm_task = tg.create_task(
                leases.while_held(leader("alarms"), alarms.run, stop), name="alarms"
            )
            tg.create_task(announcer.run(stop), name="telemetry-announcer")
            from gateway.retention import Retention  # data management (docs/decisions-archive.md)

            retention = Retention.from_settings(settings)
            tg.create_task(
                leases.while_held(leader("retention"), lambda: retention.run(stop), stop),
                name="retention",
            )
            from gateway.inspections import InspectionScheduler  # docs/decisions-maintenance.md

            scheduler = InspectionScheduler(pool, settings)
            tg.create_task(
                leases.while_held(leader("inspections"), lambda: scheduler.run(stop), stop),
                name="inspection-scheduler",
            )
            from gateway.lighting import LightingDispatcher  # docs/decisions-lighting.md

            lighting = LightingDispatcher.from_settings(settings, pool, registry, dispatcher)
            states.on_online.append(lighting.poke)  # a lamp that is back gets its level
            tg.create_task(
                leases.while_held(leader("lighting"), lambda: lighting.run(stop), stop),
                name="lighting-dispatcher",
            )
            from gateway.metering_worker import MeteringWorker  # the meter-data ledger

            metering = MeteringWorker(pool, catalog, metrics, every_s=settings.metering_every_s)
            tg.create_task(
                leases.while_held(leader("metering"), lambda: metering.run(stop), stop),
                name="metering-worker",
            )
            if api:
                # Live events end their streams when `stop` is set, so open
                # streams never hold the server's shutdown.
                events = LiveEvents(database_url, pole_of=poles_from(registry))
                tg.create_task(events.run(stop), name="live-events")
                ctx = ApiContext(
                    settings=settings,
                    pool=pool,
                    catalog=catalog,
                    metrics=metrics,
                    tokens=tokens,
                    registry=registry,
                    mqtt_connected=lambda: mqtt.connected,
                    commands=dispatcher,
                    throttle=LoginThrottle(window_s=settings.login_window_s),
                    events=events,
                    database=database,
                    clock_skew=clocks.watch.skew.get,
                    leases=leases,
                )
                config = uvicorn.Config(
                    create_app(ctx),
                    host=settings.api_host,
                    port=settings.api_port,
                    log_config=None,
                    access_log=False,
                    lifespan="off",
                    # A slow client (a long CSV export) must not hold shutdown forever.
                    timeout_graceful_shutdown=10,
                )
                server = ApiServer(config)
                tg.create_task(server.serve(), name="api")
                if settings.metrics_port is not None:
                    internals = ApiServer(
                        uvicorn.Config(
                            create_internals_app(ctx),
                            host=settings.api_host,
                            port=settings.metrics_port,
                            log_config=None,
                            access_log=False,
                            lifespan="off",
                        )
                    )
                    tg.create_task(internals.serve(), name="api-internals")
            polling: asyncio.Task[None] | None = None
            ingest: asyncio.Task[None] | None = None
            refresh: asyncio.Task[None] | None = None
            if have_registry or await registry.load_with_retry(stop):
                refresh = tg.create_task(registry.refresh_forever(), name="registry-refresh")
                polling = tg.create_task(modbus.run(stop), name="modbus-polling")
                ingest = tg.create_task(
                    mqtt.run(pipeline.offer, stop, pipeline.drain), name="mqtt-ingest"
                )
                if settings.replicated:  # the share a gone replica's session still holds
                    adoption = SessionAdoption(
                        database_url=database_url,
                        leases=leases,
                        mqtt=mqtt,
                        deliver=pipeline.offer,
                        metrics=metrics,
                    )
                    tg.create_task(adoption.run(stop), name="mqtt-session-adoption")
            await stop.wait()
            log.info("stopping: draining ingest")
            if polling is not None:
                await polling
            if ingest is not None:
                await ingest  # drains and disconnects
            await pipeline.drain()  # whatever the last polls delivered meanwhile
            await alarms.flush()  # the last batches' alarms
            if server is not None:
                server.should_exit = True
            if internals is not None:
                internals.should_exit = True
            await cancel_all([alarm_task, commit, state_writer, refresh])
            await lease_keeper
            # The others take over at once, and one adopts this replica's MQTT
            # session (its share keeps arriving there; docs/scaling.md).
            await leases.release_all(expire_heartbeat=settings.replicated)
    finally:
        await dispatcher.close()
        await clocks.close()
        await writer.close()
        await pool.close()
        if spool is not None:
            if spool:
                log.warning(
                    "the spool holds %d readings the database has not got yet;"
                    " they are drained at the next start",
                    spool.depth.readings,
                )
            await spool.close()
    log.info("stopped")
