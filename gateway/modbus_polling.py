"""Modbus polling: one ModbusBus per endpoint of the site's polled devices.

The buses are built from the registry and rebuilt when its set of polled
devices changes (a site import). Readings go into the same pipeline as MQTT
readings; state changes (online/offline) are written to `device_state`.

With replicas (a LeaseKeeper that is enabled) each bus is polled only while
this replica holds its lease `bus/<address>`: exactly one replica talks to a
converter at a time; when it dies another takes the bus over after the TTL,
and one that stops hands its buses back at once. A bus taken over starts from
the device states recorded in `device_state`, as after a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.adapters.leases import LeaseKeeper
from gateway.adapters.modbus_bus import BusAddress, BusOptions, ModbusBus, PolledDevice
from gateway.backoff import Backoff
from gateway.core.ownership import bus as bus_lease
from gateway.core.readings import Decoded
from gateway.core.registry import DeviceRef, Registry
from gateway.ingest import IngestPipeline
from gateway.metrics import Metrics

log = logging.getLogger(__name__)


def _no_ack() -> bool:
    return False


def group_by_bus(devices: list[DeviceRef]) -> dict[BusAddress, list[PolledDevice]]:
    """Polled devices by the endpoint they share (devices without a map are skipped)."""
    buses: dict[BusAddress, list[PolledDevice]] = defaultdict(list)
    for ref in devices:
        endpoint = ref.modbus
        if endpoint is None:
            continue
        if ref.profile.modbus is None:
            log.warning(
                "device %s: profile %r has no register map; not polled", ref.id, ref.profile.profile
            )
            continue
        address = BusAddress(endpoint.host, endpoint.port, endpoint.framer)
        buses[address].append(PolledDevice.of(ref, endpoint.unit, endpoint.interval_s))
    return dict(buses)


def bus_of(ref: DeviceRef) -> str | None:
    """The lease of the bus that polls a device (None: the device is not polled)."""
    endpoint = ref.modbus
    if endpoint is None or ref.profile.modbus is None:
        return None
    return bus_lease(BusAddress(endpoint.host, endpoint.port, endpoint.framer))


def _fingerprint(registry: Registry) -> frozenset[tuple[str, object, str]]:
    return frozenset((d.id, d.modbus, d.profile.profile) for d in registry.polled_devices())


class StateStore:
    """Writes devices' online/offline changes (polled devices' from their polls,
    publishing devices' from gateway/presence.py) from one task, on one pooled
    connection, coalescing per device: a burst (every device coming online at
    start-up) is one batch, not one database session per device, and polling
    never waits on the database."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool
        self._pending: dict[str, tuple[bool, datetime, str | None]] = {}
        self._wake = asyncio.Event()
        # Called once a batch in which devices came online is recorded (the
        # lighting dispatcher sends a returning lamp the level it missed).
        self.on_online: list[Callable[[], None]] = []

    def __call__(self, device_id: str, online: bool, since: datetime, detail: str | None) -> None:
        self._pending[device_id] = (online, since, detail)  # the latest state wins
        self._wake.set()

    async def recorded(self) -> dict[str, bool]:
        """Every device's last recorded state ({} when the database cannot say)."""
        try:
            async with self._pool.connection() as conn, conn.cursor() as cur:
                await cur.execute("SELECT device_id, online FROM device_state")
                return {str(d): bool(online) for d, online in await cur.fetchall()}
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("could not read the recorded device states: %s", exc)
            return {}

    async def run(self) -> None:
        """Write pending changes until cancelled; a failed batch is retried later."""
        backoff = Backoff(first=0.5, cap=10.0)
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, {}
            try:
                await self._write(batch)
                backoff.reset()
                if any(online for online, _, _ in batch.values()):
                    for listener in self.on_online:
                        listener()
            except (psycopg.Error, PoolTimeout) as exc:
                log.warning("could not record %d device state changes: %s", len(batch), exc)
                for device_id, state in batch.items():  # newer changes win over retries
                    self._pending.setdefault(device_id, state)
                await asyncio.sleep(backoff.next_delay())
                self._wake.set()

    async def _write(self, batch: dict[str, tuple[bool, datetime, str | None]]) -> None:
        async with self._pool.connection() as conn, conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO device_state (device_id, online, since, detail)"
                " VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (device_id) DO UPDATE SET online = excluded.online,"
                " since = excluded.since, detail = excluded.detail, updated_at = now()"
                # a rebuilt bus or a restart re-reports the same state: keep 'since'
                " WHERE device_state.online IS DISTINCT FROM excluded.online",
                [(d, online, since, detail) for d, (online, since, detail) in batch.items()],
            )


class ModbusPolling:
    def __init__(
        self,
        *,
        registry: Callable[[], Registry],
        pipeline: IngestPipeline,
        metrics: Metrics,
        on_state: StateStore,
        options: BusOptions,
        refresh_s: float,
        leases: LeaseKeeper | None = None,
    ) -> None:
        self._registry = registry
        self._pipeline = pipeline
        self._metrics = metrics
        self._on_state = on_state
        self._options = options
        self._refresh_s = refresh_s
        self._bus_of: dict[str, ModbusBus] = {}
        # Replicas: each bus only under its lease (a single gateway polls them all).
        self._leases = leases if leases is not None and leases.enabled else None
        self._wanted: list[str] = []
        self._devices_of: dict[BusAddress, list[PolledDevice]] = {}
        # Called when a bus starts polling under its lease (commands waiting for
        # this bus's owner can be claimed now).
        self.on_polling: list[Callable[[], None]] = []
        if self._leases is not None:
            self._leases.want("bus", lambda: self._wanted)

    def bus_for(self, device_id: str) -> ModbusBus | None:
        """The bus polling a device now (commands to it go through the same bus);
        with replicas, only while this replica holds the bus's lease."""
        bus = self._bus_of.get(device_id)
        leases = self._leases
        if bus is None or leases is None or leases.holds(bus_lease(bus.address)):
            return bus
        return None

    async def _deliver(self, decoded: Decoded) -> None:
        await self._pipeline.put_decoded(decoded, _no_ack)

    @staticmethod
    async def _supervised(bus: ModbusBus, stop: asyncio.Event) -> None:
        """Run one bus; an error nobody foresaw restarts that bus, never the gateway."""
        while not stop.is_set():
            try:
                await bus.run(stop)
            except Exception:  # the supervisor of one bus: log everything, keep polling
                log.exception("Modbus bus %s failed; restarting it in 5 s", bus.address)
                try:
                    async with asyncio.timeout(5):
                        await stop.wait()
                except TimeoutError:
                    pass

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set, rebuilding the buses when the site changes."""
        known = await self._on_state.recorded()
        while not stop.is_set():
            snapshot = self._registry()
            fingerprint = _fingerprint(snapshot)
            self._devices_of = group_by_bus(snapshot.polled_devices())
            buses = [
                self._bus(address, devices, known) for address, devices in self._devices_of.items()
            ]
            if buses:
                log.info(
                    "Modbus: %s %d devices on %d buses",
                    "polling" if self._leases is None else "sharing (by lease)",
                    sum(b.device_count for b in buses),
                    len(buses),
                )
            # With replicas a bus is known to commands only while it polls (below).
            self._bus_of = (
                {d: bus for bus in buses for d in bus.device_ids} if self._leases is None else {}
            )
            if self._leases is not None:
                self._wanted = [bus_lease(b.address) for b in buses]
                self._leases.poke()
            restart = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                for bus in buses:
                    tg.create_task(self._keep(bus, restart), name=f"modbus-bus {bus.address}")
                while not stop.is_set():
                    try:
                        async with asyncio.timeout(self._refresh_s):
                            await stop.wait()
                    except TimeoutError:
                        pass
                    if _fingerprint(self._registry()) != fingerprint:
                        log.info("Modbus: the site's polled devices changed; rebuilding buses")
                        break
                restart.set()
            for bus in buses:  # a rebuilt bus starts from what the old one knew
                known.update(bus.known_online())

    def _bus(
        self, address: BusAddress, devices: list[PolledDevice], known: dict[str, bool]
    ) -> ModbusBus:
        return ModbusBus(
            address,
            devices,
            deliver=self._deliver,
            on_state=self._on_state,
            metrics=self._metrics,
            options=self._options,
            known_online=known,
        )

    async def _keep(self, bus: ModbusBus, restart: asyncio.Event) -> None:
        """Run one bus: at once (one gateway), or whenever this replica holds its lease."""
        if self._leases is None:
            await self._supervised(bus, restart)
            return
        name = bus_lease(bus.address)

        async def owned() -> None:
            # Taken (perhaps after another replica polled it): start from the
            # states recorded in device_state, as a restart does, on a new
            # ModbusBus, so that nothing of an earlier run (a connection) is reused.
            known = await self._on_state.recorded()
            current = self._bus(bus.address, self._devices_of[bus.address], known)
            for device_id in current.device_ids:
                self._bus_of[device_id] = current
            log.info("Modbus bus %s: polling it (lease %s held)", bus.address, name)
            for listener in self.on_polling:
                listener()
            try:
                await self._supervised(current, restart)
            finally:
                for device_id in current.device_ids:
                    if self._bus_of.get(device_id) is current:
                        del self._bus_of[device_id]
                log.info("Modbus bus %s: not polling it any more", bus.address)

        await self._leases.while_held(name, owned, restart)
