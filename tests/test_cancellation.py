"""A cancelled task ends even when a library under it swallows the cancellation
(issue 16 item 2: `polegw demo` whose poles task failed hung for ever, its
Modbus buses polling on after the task group had cancelled them)."""

from __future__ import annotations

import asyncio

from gateway.adapters.modbus_bus import BusAddress, ModbusBus, PolledDevice
from gateway.core.readings import Decoded
from gateway.core.registry import DeviceRef
from gateway.metrics import Metrics
from simulators.modbus_server import ModbusSimulator
from tests.test_modbus_bus import CATALOG, INTERVAL, OPTIONS, lamps


async def test_a_bus_whose_poll_swallows_the_cancel_still_stops() -> None:
    specs = lamps(2)
    delivering = asyncio.Event()
    swallowed: list[bool] = []

    async def deliver(decoded: Decoded) -> None:
        delivering.set()
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            swallowed.append(True)  # as pymodbus's wait_for can, on Python 3.11

    async with ModbusSimulator([(s, CATALOG[s.profile]) for s in specs]) as sim:
        bus = ModbusBus(
            BusAddress("127.0.0.1", sim.port, "socket"),
            [
                PolledDevice.of(
                    DeviceRef(s.id, "P1", CATALOG[s.profile], "modbus", s.modbus),
                    s.modbus.unit,
                    INTERVAL,
                )
                for s in specs
                if s.modbus is not None
            ],
            deliver=deliver,
            on_state=lambda *_: None,
            metrics=Metrics(),
            options=OPTIONS,
        )
        stop = asyncio.Event()  # only set to clean up after a failure
        task = asyncio.create_task(bus.run(stop))
        try:
            async with asyncio.timeout(5):
                await delivering.wait()
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=3)
            assert task in done, "the cancelled bus is still polling"
            assert task.cancelled()
        finally:
            stop.set()
            await asyncio.wait({task}, timeout=5)
    assert swallowed == [True]
