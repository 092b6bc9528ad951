"""The Modbus bus against simulated devices over real TCP: one dead device does not
hold up the others, a late reply is never taken for a later request's answer, and
commands write and read back."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import datetime

import pytest

from gateway.adapters.modbus_bus import BusAddress, BusOptions, ModbusBus, PolledDevice, PollFailed
from gateway.core.profiles import ModbusWrite, ProfileCatalog, load_catalog
from gateway.core.readings import Decoded
from gateway.core.registry import DeviceRef
from gateway.core.site import DeviceSpec, ModbusEndpoint
from gateway.metrics import Metrics
from simulators.modbus_devices import SwitchedLamp
from simulators.modbus_server import Fault, ModbusSimulator

CATALOG: ProfileCatalog = load_catalog()
INTERVAL = 0.5
OPTIONS = BusOptions(timeout_s=0.2, rtu_gap_s=0.002, offline_after=2, quarantine_cap_s=1.0)


def lamps(n: int, framer: str = "socket") -> list[DeviceSpec]:
    return [
        DeviceSpec(
            id=f"L{i:02d}",
            profile="lamp-controller",
            transport="modbus",
            modbus=ModbusEndpoint(
                host="127.0.0.1", port=1, unit=i, framer=framer, interval_s=INTERVAL
            ),
        )
        for i in range(1, n + 1)
    ]


class Recorder:
    """Collects what the bus delivers and the state changes it reports."""

    def __init__(self) -> None:
        self.polls: defaultdict[str, list[float]] = defaultdict(list)
        self.values: dict[str, dict[str, float]] = {}
        self.history: defaultdict[str, list[dict[str, float]]] = defaultdict(list)
        self.states: list[tuple[str, bool]] = []

    async def deliver(self, decoded: Decoded) -> None:
        assert not decoded.dead_letters, decoded.dead_letters
        device = decoded.readings[0].device_id
        self.polls[device].append(time.monotonic())
        self.values[device] = {r.metric: r.value for r in decoded.readings}
        self.history[device].append(self.values[device])

    def on_state(self, device: str, online: bool, since: datetime, detail: str | None) -> None:
        self.states.append((device, online))


def bus_for(
    sim: ModbusSimulator,
    specs: list[DeviceSpec],
    framer: str,
    rec: Recorder,
    known_online: dict[str, bool] | None = None,
) -> ModbusBus:
    devices = [
        PolledDevice.of(
            DeviceRef(s.id, "P1", CATALOG[s.profile], "modbus", s.modbus), s.modbus.unit, INTERVAL
        )
        for s in specs
        if s.modbus is not None
    ]
    return ModbusBus(
        BusAddress("127.0.0.1", sim.port, framer),
        devices,
        deliver=rec.deliver,
        on_state=rec.on_state,
        metrics=Metrics(),
        options=OPTIONS,
        known_online=known_online,
    )


@pytest.fixture
async def ten_lamps() -> AsyncIterator[tuple[ModbusSimulator, list[DeviceSpec]]]:
    specs = lamps(10)
    async with ModbusSimulator([(s, CATALOG[s.profile]) for s in specs]) as sim:
        yield sim, specs


async def run_for(bus: ModbusBus, seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(bus.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_a_dead_device_does_not_hold_up_the_others_and_comes_back(
    ten_lamps: tuple[ModbusSimulator, list[DeviceSpec]],
) -> None:
    sim, specs = ten_lamps
    sim.set_fault("L03", Fault.NO_ANSWER)
    rec = Recorder()
    bus = bus_for(sim, specs, "socket", rec)
    await run_for(bus, 4.0)

    # Every healthy device kept its interval: ~8 polls in 4 s, gaps near 0.5 s.
    for spec in specs:
        if spec.id == "L03":
            continue
        times = rec.polls[spec.id]
        assert len(times) >= 7, (spec.id, len(times))
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps) < INTERVAL + OPTIONS.timeout_s * 1.5 + 0.1, (spec.id, gaps)
    # The dead one was taken offline (after 2 failures) and retried, not polled each cycle.
    assert ("L03", False) in rec.states
    assert "L03" not in rec.polls
    assert sim.requests["L03"] <= 6  # 8 cycles, but quarantined with back-off

    sim.set_fault("L03", None)
    await run_for(bus, 2.5)  # quarantine cap is 1 s
    assert rec.states[-1] == ("L03", True) or ("L03", True) in rec.states
    assert rec.polls["L03"], "the device did not come back"


@pytest.mark.parametrize("framer", ["socket", "rtu"])
async def test_a_late_reply_is_never_taken_for_the_next_answer(framer: str) -> None:
    specs = lamps(2, framer)
    async with ModbusSimulator([(s, CATALOG[s.profile]) for s in specs], framer=framer) as sim:  # type: ignore[arg-type]
        # L01 answers after the bus's timeout; L02 is polled right after on the same bus.
        sim.set_fault("L01", Fault.SLOW, delay_s=OPTIONS.timeout_s * 2)
        lamp = sim.device("L02").model
        assert isinstance(lamp, SwitchedLamp)
        lamp.obey("dim_pct", 37)  # a value L01 never has
        sim.refresh()
        rec = Recorder()
        bus = bus_for(sim, specs, framer, rec)
        await run_for(bus, 2.0)
        assert "L01" not in rec.values
        # Every poll of L02 (not just the last) got L02's own answer.
        assert len(rec.history["L02"]) >= 3
        assert all(v["dim_pct"] == 37 for v in rec.history["L02"])
        expected = sim.values("L02")
        for metric in ("voltage_v", "dim_pct", "lamp_on"):
            assert rec.values["L02"][metric] == pytest.approx(float(expected[metric]), abs=0.2)


async def test_a_write_changes_the_device_and_reads_back(
    ten_lamps: tuple[ModbusSimulator, list[DeviceSpec]],
) -> None:
    sim, specs = ten_lamps
    rec = Recorder()
    bus = bus_for(sim, specs[:2], "socket", rec)
    got = await bus.write("L01", ModbusWrite("dim_pct", 40, readback=True))
    assert got == 40
    assert sim.values("L01")["dim_pct"] == 40

    sim.set_fault("L02", Fault.NO_ANSWER)
    with pytest.raises(PollFailed) as failed:
        await bus.write("L02", ModbusWrite("dim_pct", 10, readback=True))
    assert failed.value.kind == "timeout"
    sim.set_fault("L02", Fault.EXCEPTION, code=0x04)
    with pytest.raises(PollFailed) as refused:
        await bus.write("L02", ModbusWrite("lamp_on", True, readback=True))
    assert refused.value.kind == "exception"

    await run_for(bus, 1.2)  # the polls see the written value
    assert rec.values["L01"]["dim_pct"] == 40
    assert rec.values["L01"]["power_w"] > 0
    with pytest.raises(PollFailed) as stopped:  # a stopped (rebuilt) bus takes no writes
        await bus.write("L01", ModbusWrite("dim_pct", 10, readback=True))
    assert stopped.value.kind == "stopped"


async def test_a_slow_but_answering_device_is_quarantined_too(
    ten_lamps: tuple[ModbusSimulator, list[DeviceSpec]],
) -> None:
    """Each of its three reads answers within the timeout, but together they hold the
    bus longer than one request may: it is taken offline, the others keep time."""
    sim, specs = ten_lamps
    # Three reads of 0.9 x timeout each: every one answers, the poll takes 2.7 x.
    sim.set_fault("L05", Fault.SLOW, delay_s=OPTIONS.timeout_s * 0.9)
    rec = Recorder()
    bus = bus_for(sim, specs[:6], "socket", rec)
    await run_for(bus, 4.0)
    assert ("L05", False) in rec.states
    # 8 cycles in 4 s. Each of L05's two slow polls before its quarantine may cost the
    # others a cycle; without the quarantine they would lose every other one (<= 4).
    for spec in specs[:6]:
        if spec.id != "L05":
            assert len(rec.polls[spec.id]) >= 6, (spec.id, rec.polls[spec.id])


async def test_the_recorded_state_seeds_the_bus(
    ten_lamps: tuple[ModbusSimulator, list[DeviceSpec]],
) -> None:
    """After a restart, a device recorded online that still answers is not announced
    again, one recorded offline that answers now is reported back online, and one
    recorded offline that still fails is not announced offline a second time."""
    sim, specs = ten_lamps
    sim.set_fault("L03", Fault.NO_ANSWER)
    rec = Recorder()
    known = {"L01": True, "L02": False, "L03": False}
    bus = bus_for(sim, specs[:3], "socket", rec, known_online=known)
    await run_for(bus, 1.5)
    assert rec.polls["L01"]
    assert rec.polls["L02"]
    assert rec.states == [("L02", True)]
    assert bus.known_online() == {"L01": True, "L02": True, "L03": False}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_a_dead_device_logs_once_per_failure_run_not_per_poll(
    ten_lamps: tuple[ModbusSimulator, list[DeviceSpec]], caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 16 item 12: pymodbus's own "No response received" (ERROR) and
    "Failed to connect" (WARNING) lines, one per failed poll, are demoted to DEBUG;
    the bus's one line per run of failures and one on recovery remain."""
    caplog.set_level(logging.INFO)
    sim, specs = ten_lamps
    sim.set_fault("L03", Fault.NO_ANSWER)
    rec = Recorder()
    answering = bus_for(sim, specs, "socket", rec)
    # A bus where nothing listens at all: every connection attempt fails.
    dead = ModbusBus(
        BusAddress("127.0.0.1", _free_port(), "socket"),
        [
            PolledDevice.of(
                DeviceRef("X1", "P1", CATALOG["lamp-controller"], "modbus", None), 1, 0.3
            )
        ],
        deliver=rec.deliver,
        on_state=rec.on_state,
        metrics=Metrics(),
        options=BusOptions(
            timeout_s=0.2, offline_after=2, reconnect_first_s=0.1, reconnect_cap_s=0.2
        ),
    )
    await asyncio.gather(run_for(answering, 3.0), run_for(dead, 3.0))
    assert sim.requests["L03"] >= 3  # it failed over and over
    noisy = [
        r for r in caplog.records if r.name.startswith("pymodbus") and r.levelno > logging.DEBUG
    ]
    assert noisy == [], [r.getMessage() for r in noisy]
    about_l03 = [r.getMessage() for r in caplog.records if "L03" in r.getMessage()]
    assert len(about_l03) == 2, about_l03  # the first failure, then "offline"
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1, [r.getMessage() for r in unreachable]

    caplog.clear()
    sim.set_fault("L03", None)
    await run_for(answering, 2.5)
    back = [r.getMessage() for r in caplog.records if "L03" in r.getMessage()]
    assert back == ["Modbus device L03 back online"], back


async def test_stop_ends_the_wait_for_a_poll_far_ahead(
    ten_lamps: tuple[ModbusSimulator, list[DeviceSpec]],
) -> None:
    # The scheduler waits for the next due poll on a timer that `stop` cuts short: a
    # bus whose next poll is a minute away still stops at once.
    sim, specs = ten_lamps
    rec = Recorder()
    ref = DeviceRef("L01", "P1", CATALOG["lamp-controller"], "modbus", specs[0].modbus)
    polled = asyncio.Event()

    async def deliver(decoded: Decoded) -> None:
        await rec.deliver(decoded)
        polled.set()

    bus = ModbusBus(
        BusAddress("127.0.0.1", sim.port, "socket"),
        [PolledDevice.of(ref, 1, 60.0)],
        deliver=deliver,
        on_state=rec.on_state,
        metrics=Metrics(),
        options=OPTIONS,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(bus.run(stop))
    await asyncio.wait_for(polled.wait(), 5)
    await asyncio.sleep(0.2)  # now waiting for the poll due in 60 s
    started = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 0.5
    assert len(rec.polls["L01"]) == 1
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("modbus-bus")]
