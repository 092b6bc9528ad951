"""Fault suite item 6: a simulated meter restarts under polling.

Two port meters share one Modbus TCP endpoint. The endpoint goes away (the
simulator server is stopped, dropping the connection mid-poll) and comes back on
the same port as a rebooted device: a new simulator whose first meter's port 1
counter was reset. Polling resumes within the bound the bus's back-off settings
give, and no value is ever attributed to the wrong request: each meter's ports
hold counters in ranges no other (meter, port) uses, and switch patterns of their
own, so a reply taken for another device or another block shows.

Size: POLEGW_FAULT_SCALE (tests/faults.py) multiplies the number of restarts (2 in CI).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from datetime import datetime

import pytest

from gateway.adapters.modbus_bus import BusAddress, BusOptions, ModbusBus, PolledDevice
from gateway.core.profiles import ProfileCatalog, load_catalog
from gateway.core.readings import Decoded
from gateway.core.registry import DeviceRef
from gateway.core.site import DeviceSpec, ModbusEndpoint
from gateway.metrics import Metrics
from simulators.modbus_server import Fault, ModbusSimulator
from tests.faults import scaled

pytestmark = pytest.mark.slow

CATALOG: ProfileCatalog = load_catalog()
RESTARTS = scaled(2)
INTERVAL = 0.25
OUTAGE_S = 1.5
OPTIONS = BusOptions(
    timeout_s=0.2,
    offline_after=2,
    quarantine_cap_s=1.0,
    reconnect_first_s=0.2,
    reconnect_cap_s=2.0,
)
# After the endpoint is back: the reconnect delay in effect (see BusOptions), a device
# quarantined by timeouts while the server went down (at most quarantine_cap_s), the
# wait for its next slot (one interval) and one poll (two reads, each bounded by the
# exchange timeout), plus 0.5 s for a loaded machine.
RESUME_BOUND_S = (
    OPTIONS.max_reconnect_wait_s(OUTAGE_S)
    + OPTIONS.quarantine_cap_s
    + INTERVAL
    + 2 * 1.5 * OPTIONS.timeout_s
    + 0.5
)

# Connection attempts during one outage, with the back-off: attempt k comes at least
# first * (2**k - 1) / 2 after the first one. Without back-off it would be one per poll.
MAX_ATTEMPTS_PER_OUTAGE = 1 + math.ceil(math.log2(2 * OUTAGE_S / OPTIONS.reconnect_first_s + 1))

METERS = {"M1": 1, "M2": 2}  # device id -> unit
# Each (meter, port) counter starts at its own value, kWh; it only grows by a few
# thousandths during the test, so a value outside [base, base + 1) was misattributed.
BASE = {("M1", n): 1000.0 * n for n in (1, 2, 3, 4)} | {
    ("M2", n): 5000.0 + 1000 * n for n in (1, 2, 3, 4)
}
# Switches: M1's port 4 is empty and off (the simulator's default), M2's port 3 is
# switched off too.
SWITCHES = {"M1": (True, True, True, False), "M2": (True, True, False, False)}


def specs(port: int) -> list[DeviceSpec]:
    return [
        DeviceSpec(
            id=device,
            profile="port-meter-4",
            transport="modbus",
            modbus=ModbusEndpoint(host="127.0.0.1", port=port, unit=unit, interval_s=INTERVAL),
        )
        for device, unit in METERS.items()
    ]


async def start_meters(port: int = 0, *, reset_m1_port1: bool = False) -> ModbusSimulator:
    """The meters behind one endpoint, with their identifying counters and switches."""
    sim = ModbusSimulator([(s, CATALOG[s.profile]) for s in specs(port or 1)], port=port)
    for (device, n), base in BASE.items():
        sim.set_counter(device, f"port{n}_energy_kwh", base)
    if reset_m1_port1:
        sim.reset_counter("M1", "port1_energy_kwh")  # the meter's counter restarted at 0
    m2 = sim.device("M2")
    assert m2.write("coil", 2, [False], sim.clock()) is None  # M2 port 3 off
    await sim.start()
    return sim


class Recorder:
    def __init__(self) -> None:
        self.polls: defaultdict[str, list[float]] = defaultdict(list)
        self.readings: defaultdict[str, list[dict[str, float]]] = defaultdict(list)

    async def deliver(self, decoded: Decoded) -> None:
        assert not decoded.dead_letters, decoded.dead_letters
        device = decoded.readings[0].device_id
        self.polls[device].append(time.monotonic())
        self.readings[device].append({r.metric: r.value for r in decoded.readings})

    def on_state(self, device: str, online: bool, since: datetime, detail: str | None) -> None:
        pass


def check_attribution(rec: Recorder, *, reset_from: dict[str, int]) -> int:
    """Every poll's values are its own meter's; returns the number of polls checked.
    `reset_from[device]`: the index of the first poll after which M1's port 1 may read
    its reset counter (its range then starts at 0)."""
    checked = 0
    for device, polls in rec.readings.items():
        for i, values in enumerate(polls):
            for n in (1, 2, 3, 4):
                energy = values[f"port{n}_energy_kwh"]
                base = BASE[(device, n)]
                if device == "M1" and n == 1 and i >= reset_from.get(device, len(polls)):
                    assert 0 <= energy < 1 or base <= energy < base + 1, (device, i, energy)
                else:
                    assert base <= energy < base + 1, (device, n, i, energy)
                assert values[f"port{n}_switch_on"] == float(SWITCHES[device][n - 1]), (
                    device,
                    n,
                    i,
                )
            checked += 1
    return checked


async def test_polling_resumes_within_the_back_off_bound_after_a_meter_restart() -> None:
    sim = await start_meters()
    port = sim.port
    rec = Recorder()
    metrics = Metrics()
    devices = [
        PolledDevice.of(
            DeviceRef(s.id, "P1", CATALOG[s.profile], "modbus", s.modbus), s.modbus.unit, INTERVAL
        )
        for s in specs(port)
        if s.modbus is not None
    ]
    bus = ModbusBus(
        BusAddress("127.0.0.1", port, "socket"),
        devices,
        deliver=rec.deliver,
        on_state=rec.on_state,
        metrics=metrics,
        options=OPTIONS,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(bus.run(stop))
    resumed: list[float] = []
    connect_failures = metrics.modbus_connect_failures.labels(str(bus.address))
    reset_from: dict[str, int] = {}
    try:
        await asyncio.sleep(1.0)
        for cycle in range(RESTARTS):
            # M1 answers late for a while before the restart: its late replies are in
            # flight on the connection the restart drops.
            sim.set_fault("M1", Fault.SLOW, delay_s=OPTIONS.timeout_s * 1.3)
            await asyncio.sleep(0.3)
            failures_before = connect_failures._value.get()
            await sim.stop()
            down = time.monotonic()
            await asyncio.sleep(0.05)  # a reply already on its way when the server stopped
            before = {d: len(rec.polls[d]) for d in METERS}
            await asyncio.sleep(OUTAGE_S - 0.05)
            assert {d: len(rec.polls[d]) for d in METERS} == before, "polled a stopped server"
            sim = await start_meters(port, reset_m1_port1=cycle == 0)
            back = time.monotonic()
            assert back - down >= OUTAGE_S
            attempts = connect_failures._value.get() - failures_before
            assert 1 <= attempts <= MAX_ATTEMPTS_PER_OUTAGE, attempts
            if cycle == 0:
                reset_from["M1"] = len(rec.readings["M1"])
            deadline = back + RESUME_BOUND_S + 2  # fail with figures, not a hang
            while any(len(rec.polls[d]) == before[d] for d in METERS):
                assert time.monotonic() < deadline, f"polling did not resume: {rec.polls}"
                await asyncio.sleep(0.02)
            first_after = max(next(t for t in rec.polls[d] if t > back) for d in METERS)
            resumed.append(first_after - back)
            await asyncio.sleep(1.0)  # polled steadily again
            for d in METERS:
                recent = [t for t in rec.polls[d] if t > time.monotonic() - 1.0]
                assert len(recent) >= 2, (d, recent)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await sim.stop()
    assert max(resumed) <= RESUME_BOUND_S, (resumed, RESUME_BOUND_S)
    # The rebooted M1 reads its reset counter from the first poll after the restart.
    assert rec.readings["M1"][reset_from["M1"]]["port1_energy_kwh"] < 1
    assert check_attribution(rec, reset_from=reset_from) >= 5 * RESTARTS
    print(
        f"\nmodbus restarts: {RESTARTS}, outage {OUTAGE_S}s each, resumed after"
        f" {', '.join(f'{r:.2f}' for r in resumed)}s (bound {RESUME_BOUND_S:.2f}s),"
        f" polls {sum(len(p) for p in rec.polls.values())}, misattributed 0"
    )
