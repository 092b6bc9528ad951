"""The simulated Modbus devices, over real TCP, read and written with pymodbus's own client."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import pytest
from pymodbus import FramerType
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU, ModbusPDU
from pymodbus.pdu.register_message import ReadInputRegistersRequest

from gateway.adapters.modbus_registers import decode_block, encode_write
from gateway.core.modbus_plan import ReadBlock, plan_reads
from gateway.core.profiles import ModbusMap, Profile, ProfileCatalog, Refused, load_catalog
from gateway.core.site import DeviceSpec, ModbusEndpoint, PoleSpec, SiteSpec
from gateway.errors import ConfigError
from simulators.demo_site import demo_site
from simulators.modbus_devices import Framer, SwitchedLamp, plan_buses, site_device
from simulators.modbus_server import ModbusSimulator, run_modbus_devices

LOCAL = "127.0.0.1"
NOON = datetime(2026, 6, 1, 4, 0, tzinfo=UTC).timestamp()  # 12:00 at the site (UTC+8)
ILLEGAL_ADDRESS, ILLEGAL_VALUE, DEVICE_FAILURE, GATEWAY_NO_RESPONSE = 0x02, 0x03, 0x04, 0x0B


@pytest.fixture(scope="module")
def catalog() -> ProfileCatalog:
    return load_catalog()


class ManualClock:
    """Simulated time that moves only when a test says so."""

    def __init__(self, t: float = NOON) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def device(
    device_id: str,
    profile: str,
    unit: int,
    *,
    port: int = 502,
    framer: Framer = "socket",
    host: str = LOCAL,
) -> DeviceSpec:
    endpoint = ModbusEndpoint(host=host, port=port, unit=unit, framer=framer)
    return DeviceSpec(id=device_id, profile=profile, transport="modbus", modbus=endpoint)


def bus(
    catalog: ProfileCatalog, *devices: tuple[str, str, int]
) -> list[tuple[DeviceSpec, Profile]]:
    return [(device(i, p, u), catalog[p]) for i, p, u in devices]


@contextlib.asynccontextmanager
async def client(
    sim: ModbusSimulator, *, wait_s: float = 1.0, framer: FramerType = FramerType.SOCKET
) -> AsyncIterator[AsyncModbusTcpClient]:
    c = AsyncModbusTcpClient(
        LOCAL, port=sim.port, framer=framer, timeout=wait_s, retries=0, reconnect_delay=0
    )
    assert await c.connect()
    try:
        yield c
    finally:
        c.close()


async def read_block(c: AsyncModbusTcpClient, unit: int, block: ReadBlock) -> ModbusPDU:
    read = {
        "coil": c.read_coils,
        "discrete": c.read_discrete_inputs,
        "holding": c.read_holding_registers,
        "input": c.read_input_registers,
    }[block.table]
    return await read(block.start, count=block.count, device_id=unit)


async def read_device(
    c: AsyncModbusTcpClient, unit: int, profile: Profile
) -> dict[str, float | bool]:
    """Every point of the profile's map, read block by block as the gateway plans it."""
    assert profile.modbus is not None
    out: dict[str, float | bool] = {}
    for block in plan_reads(profile.modbus):
        answer = await read_block(c, unit, block)
        assert not answer.isError(), answer
        values: Sequence[int] | Sequence[bool] = (
            answer.bits if block.table in ("coil", "discrete") else answer.registers
        )
        out.update(decode_block(block, profile.modbus, values))
    return out


# --- values ----------------------------------------------------------------------------------


async def test_every_device_reads_what_its_model_says_within_its_profile(
    catalog: ProfileCatalog,
) -> None:
    devices = bus(
        catalog,
        ("meter", "port-meter-4", 1),
        ("lamp", "lamp-controller", 2),
        ("env", "env-station", 3),
        ("cab", "cabinet-monitor", 4),
        ("tilt", "pole-tilt", 5),
    )
    async with ModbusSimulator(devices, refresh_s=60) as sim, client(sim) as c:
        for spec, profile in devices:
            assert spec.modbus is not None
            read = await read_device(c, spec.modbus.unit, profile)
            assert read == sim.values(spec.id)
            for name, value in read.items():
                checked = profile.metrics[name].check(value)
                assert not isinstance(checked, Refused), (spec.id, name, value, checked)
        meter = await read_device(c, 1, catalog["port-meter-4"])
    for n in (1, 2, 3, 4):
        assert 200 < meter[f"port{n}_voltage_v"] < 250
    assert 300 <= meter["port1_power_w"] <= 800  # the 5G micro station
    assert meter["port1_switch_on"] is True
    assert meter["port4_switch_on"] is False
    assert meter["port4_power_w"] == 0
    assert meter["port1_current_a"] == pytest.approx(
        meter["port1_power_w"] / (meter["port1_voltage_v"] * meter["port1_power_factor"]), rel=0.02
    )


def test_site_device_is_the_device_its_bus_serves(catalog: ProfileCatalog) -> None:
    """`site_device` gives the model a site's bus runs (same weather, place, counters),
    and `reads_as` what its registers then show for a model value."""
    site = demo_site(3)
    (bus,) = [b for b in plan_buses(site, catalog).values() if b.devices[0][0].id == "P0002-meter"]
    sim = ModbusSimulator(bus.devices, locations=bus.locations, clock=ManualClock(), refresh_s=60)
    sim.refresh()
    served = sim.values("P0002-meter")
    meter = site_device(site, catalog, "P0002-meter")
    sampled = meter.model.sample(NOON)
    assert {k: meter.reads_as(k, v) for k, v in sampled.items()} == {
        k: v for k, v in served.items() if k in sampled
    }
    assert meter.reads_as("port1_energy_kwh", 1234.5678) == pytest.approx(1234.57)
    assert meter.reads_as("port1_energy_kwh", 2**32 * 0.01 + 1.0) == pytest.approx(1.0)  # wraps
    other = site_device(site, catalog, "P0003-meter").model.sample(NOON)
    assert other["port1_energy_kwh"] != sampled["port1_energy_kwh"]  # not just any meter
    with pytest.raises(ConfigError, match="P0001-lamp is not a Modbus device"):
        site_device(site, catalog, "P0001-lamp")


async def test_energy_counters_grow_with_the_port_load(catalog: ProfileCatalog) -> None:
    clock = ManualClock()
    devices = bus(catalog, ("meter", "port-meter-4", 1))
    async with ModbusSimulator(devices, clock=clock, refresh_s=60) as sim, client(sim) as c:
        before = await read_device(c, 1, catalog["port-meter-4"])
        clock.t += 3600
        sim.refresh()
        after = await read_device(c, 1, catalog["port-meter-4"])
    for n in (1, 2, 3):
        used = after[f"port{n}_energy_kwh"] - before[f"port{n}_energy_kwh"]
        mean_kw = (after[f"port{n}_power_w"] + before[f"port{n}_power_w"]) / 2 / 1000
        assert used == pytest.approx(mean_kw * 1.0, rel=0.25, abs=0.011)  # over one hour
        assert used > 0
    assert after["port4_energy_kwh"] == before["port4_energy_kwh"]  # nothing plugged in


async def test_registers_follow_the_model_on_their_own(catalog: ProfileCatalog) -> None:
    devices = bus(catalog, ("meter", "port-meter-4", 1))
    async with (
        ModbusSimulator(devices, time_scale=3600, refresh_s=0.05) as sim,  # an hour a second
        client(sim) as c,
    ):
        first = await read_device(c, 1, catalog["port-meter-4"])
        await asyncio.sleep(0.3)
        later = await read_device(c, 1, catalog["port-meter-4"])
    assert later["port1_energy_kwh"] > first["port1_energy_kwh"]  # about 0.15 kWh on


async def test_a_counter_wraps_at_its_register_width(catalog: ProfileCatalog) -> None:
    clock = ManualClock()
    metric = "port1_energy_kwh"
    devices = bus(catalog, ("meter", "port-meter-4", 1))
    async with ModbusSimulator(devices, clock=clock, refresh_s=60) as sim, client(sim) as c:
        wrap_at = sim.wrap_counter("meter", metric, headroom=0.05)
        assert wrap_at == pytest.approx(2**32 * 0.01)  # uint32, 0.01 kWh a step
        near_top = (await read_device(c, 1, catalog["port-meter-4"]))[metric]
        assert wrap_at - 0.06 <= near_top < wrap_at
        assert sim.registers("meter")["input"][6] == 0xFFFF  # high word of 2**32 - 5
        clock.t += 600  # a 5G station uses far more than 0.05 kWh in 10 minutes
        sim.refresh()
        wrapped = (await read_device(c, 1, catalog["port-meter-4"]))[metric]
        counted = sim.device("meter").counter(metric)
    assert 0 <= wrapped < 0.2
    assert counted > wrap_at  # the meter counted on; only its register wrapped
    assert wrapped == pytest.approx(counted - wrap_at, abs=0.011)


async def test_a_counter_resets_to_zero_and_counts_on(catalog: ProfileCatalog) -> None:
    clock = ManualClock()
    devices = bus(catalog, ("meter", "port-meter-4", 1))
    async with ModbusSimulator(devices, clock=clock, refresh_s=60) as sim, client(sim) as c:
        before = await read_device(c, 1, catalog["port-meter-4"])
        sim.reset_counter("meter", "port2_energy_kwh")
        reset = await read_device(c, 1, catalog["port-meter-4"])
        clock.t += 3600
        sim.refresh()
        later = await read_device(c, 1, catalog["port-meter-4"])
    assert before["port2_energy_kwh"] > 1
    assert reset["port2_energy_kwh"] == 0
    assert reset["port1_energy_kwh"] == before["port1_energy_kwh"]  # only that port
    assert 0.02 < later["port2_energy_kwh"] < 0.05  # an hour of a ~30 W camera


# --- writes ------------------------------------------------------------------------------------


async def test_dimming_a_lamp_changes_its_register_and_its_power(catalog: ProfileCatalog) -> None:
    clock = ManualClock()  # noon: the schedule has the lamp off
    lamp = catalog["lamp-controller"]
    devices = bus(catalog, ("lamp", "lamp-controller", 1), ("tilt", "pole-tilt", 2))
    async with ModbusSimulator(devices, clock=clock, refresh_s=60) as sim, client(sim) as c:
        model = sim.device("lamp").model
        assert isinstance(model, SwitchedLamp)
        dark = await read_device(c, 1, lamp)
        written = await c.write_register(0, 40, device_id=1)
        assert not written.isError()
        assert (await c.read_holding_registers(0, count=1, device_id=1)).registers == [40]
        dimmed = await read_device(c, 1, lamp)
        assert (await c.write_coil(0, False, device_id=1)).bits[0] is False
        off = await read_device(c, 1, lamp)
        await c.write_coil(0, True, device_id=1)
        on_again = await read_device(c, 1, lamp)
        too_bright = await c.write_register(0, 150, device_id=1)
        nowhere = await c.write_register(1, 1, device_id=1)  # past the map
        read_only = await c.write_register(0, 5, device_id=2)  # the tilt sensor's tilt_x_deg
    assert dark["lamp_on"] is False
    assert dark["power_w"] == 0
    assert dimmed["lamp_on"] is True
    assert dimmed["dim_pct"] == 40
    assert dimmed["power_w"] == pytest.approx(0.4 * model.rated_w, rel=0.02)
    assert off["lamp_on"] is False
    assert off["power_w"] == 0
    assert off["dim_pct"] == 0
    assert on_again["dim_pct"] == 40
    assert on_again["power_w"] > 0
    assert code_of(too_bright) == ILLEGAL_VALUE
    assert code_of(nowhere) == ILLEGAL_ADDRESS
    assert code_of(read_only) == ILLEGAL_ADDRESS


async def test_a_port_switched_off_draws_and_counts_nothing(catalog: ProfileCatalog) -> None:
    clock = ManualClock()
    meter = catalog["port-meter-4"]
    devices = bus(catalog, ("meter", "port-meter-4", 1))
    async with ModbusSimulator(devices, clock=clock, refresh_s=60) as sim, client(sim) as c:
        assert not (await c.write_coil(0, False, device_id=1)).isError()
        off = await read_device(c, 1, meter)
        clock.t += 3600
        sim.refresh()
        an_hour_later = await read_device(c, 1, meter)
        await c.write_coils(0, [True, True, True, True], device_id=1)
        on = await read_device(c, 1, meter)
    assert off["port1_switch_on"] is False
    assert off["port1_power_w"] == 0
    assert an_hour_later["port1_energy_kwh"] == off["port1_energy_kwh"]
    assert an_hour_later["port2_energy_kwh"] > off["port2_energy_kwh"]
    assert on["port1_switch_on"] is True
    assert on["port1_power_w"] > 300
    assert on["port4_switch_on"] is True
    assert on["port4_power_w"] == 0


def odd_lamp(catalog: ProfileCatalog) -> Profile:
    """The lamp controller with a map that uses the awkward corners: little-endian bytes
    and words, 64-bit and float types, the relay as a bit of a holding register and a
    16-bit burning-hours counter."""
    modbus = ModbusMap.model_validate(
        {
            "byte_order": "little",
            "word_order": "little",
            "points": {
                "lamp_on": {"table": "holding", "address": 10, "type": "bool", "bit": 3},
                "dim_pct": {"table": "holding", "address": 11, "type": "uint16"},
                "voltage_v": {"table": "input", "address": 0, "type": "float32"},
                "current_a": {"table": "input", "address": 2, "type": "int32", "scale": 0.001},
                "power_w": {"table": "input", "address": 4, "type": "float64"},
                "power_factor": {"table": "input", "address": 8, "type": "int16", "scale": 0.001},
                "energy_kwh": {"table": "input", "address": 10, "type": "uint64", "scale": 0.001},
                "burning_hours": {"table": "input", "address": 14, "type": "uint16"},
            },
        }
    )
    return catalog["lamp-controller"].model_copy(update={"modbus": modbus, "commands": {}})


async def test_an_awkward_map_reads_and_obeys_the_same(catalog: ProfileCatalog) -> None:
    clock = ManualClock()
    lamp = odd_lamp(catalog)
    devices = [(device("lamp", "lamp-controller", 1), lamp)]
    async with ModbusSimulator(devices, clock=clock, refresh_s=60) as sim, client(sim) as c:
        dark = await read_device(c, 1, lamp)
        assert dark == sim.values("lamp")
        assert lamp.modbus is not None
        sixty = encode_write(lamp.modbus.points["dim_pct"], 60)  # bytes swapped: [0x3C00]
        assert sixty == [0x3C00]
        assert not (await c.write_registers(11, sixty, device_id=1)).isError()
        lit = await read_device(c, 1, lamp)
        switched = await c.mask_write_register(address=10, and_mask=0xFFF7, or_mask=0, device_id=1)
        off = await read_device(c, 1, lamp)
        assert sim.wrap_counter("lamp", "burning_hours", headroom=1) == 2**16
        before_wrap = await read_device(c, 1, lamp)
        assert not (await c.write_register(10, 0x0008, device_id=1)).isError()  # bit 3: on
        clock.t += 3600
        sim.refresh()
        wrapped = await read_device(c, 1, lamp)
    assert dark["lamp_on"] is False
    assert lit["lamp_on"] is True
    assert lit["dim_pct"] == 60
    model = sim.device("lamp").model
    assert isinstance(model, SwitchedLamp)
    assert lit["power_w"] == pytest.approx(0.6 * model.rated_w, rel=0.02)
    assert 200 < float(lit["voltage_v"]) < 250
    assert not switched.isError()
    assert off["lamp_on"] is False
    assert off["power_w"] == 0
    assert before_wrap["burning_hours"] == 2**16 - 1
    assert wrapped["burning_hours"] == 0  # an hour lit later: the 16-bit counter went round
    assert wrapped["lamp_on"] is True


# --- faults ------------------------------------------------------------------------------------


def frame(unit: int, tid: int) -> bytes:
    """A Modbus TCP request for input registers 0..1 of `unit`, transaction `tid`."""
    request = ReadInputRegistersRequest(address=0, count=2, dev_id=unit, transaction_id=tid)
    return FramerSocket(DecodePDU(False)).buildFrame(request)


def code_of(response: ModbusPDU) -> int | None:
    """The exception code of an exception response; None for a normal answer."""
    return response.exception_code if response.isError() else None


def answer(data: bytes) -> ModbusPDU:
    used, pdu = FramerSocket(DecodePDU(False)).handleFrame(data, 0, 0)
    assert pdu is not None, data
    assert used == len(data), data
    return pdu


async def test_a_unit_that_never_answers_times_out_and_spares_the_others(
    catalog: ProfileCatalog,
) -> None:
    devices = bus(catalog, ("m1", "port-meter-4", 1), ("m2", "port-meter-4", 2))
    async with ModbusSimulator(devices, refresh_s=60) as sim, client(sim, wait_s=0.3) as c:
        sim.set_fault("m1", "no_answer")
        started = time.monotonic()
        with pytest.raises(ModbusIOException):
            await c.read_input_registers(0, count=2, device_id=1)
        assert time.monotonic() - started >= 0.29
        assert not (await c.read_input_registers(0, count=2, device_id=2)).isError()
        sim.set_fault("m1", None)
        assert not (await c.read_input_registers(0, count=2, device_id=1)).isError()
        assert sim.requests == {"m1": 2, "m2": 1}


async def test_a_slow_answer_arrives_late_with_its_own_transaction_id(
    catalog: ProfileCatalog,
) -> None:
    devices = bus(catalog, ("m1", "port-meter-4", 1), ("m2", "port-meter-4", 2))
    async with ModbusSimulator(devices, refresh_s=60) as sim:
        sim.set_fault("m1", "slow", delay_s=0.5)
        reader, writer = await asyncio.open_connection(LOCAL, sim.port)
        try:
            started = time.monotonic()
            writer.write(frame(1, tid=7))
            await asyncio.sleep(0.1)
            writer.write(frame(2, tid=8))  # the bus goes on serving while unit 1 dawdles
            first = answer(await asyncio.wait_for(reader.read(256), 1))
            second = answer(await asyncio.wait_for(reader.read(256), 1))
            late = time.monotonic() - started
        finally:
            writer.close()
    assert (first.transaction_id, first.dev_id) == (8, 2)
    assert (second.transaction_id, second.dev_id) == (7, 1)
    assert late >= 0.5
    assert second.registers == sim.registers("m1")["input"][0:2]


async def test_a_late_answer_is_not_taken_for_a_later_request(catalog: ProfileCatalog) -> None:
    devices = bus(catalog, ("m1", "port-meter-4", 1))
    async with ModbusSimulator(devices, refresh_s=60) as sim, client(sim, wait_s=0.2) as c:
        sim.set_fault("m1", "slow", delay_s=0.4)
        with pytest.raises(ModbusIOException):
            await c.read_input_registers(0, count=2, device_id=1)
        sim.set_fault("m1", None)
        await asyncio.sleep(0.3)  # the late answer lands while nothing is asked
        energy = await c.read_input_registers(6, count=2, device_id=1)
    assert energy.registers == sim.registers("m1")["input"][6:8]


@pytest.mark.parametrize("code", [DEVICE_FAILURE, GATEWAY_NO_RESPONSE])
async def test_an_exception_fault_answers_with_its_code(catalog: ProfileCatalog, code: int) -> None:
    devices = bus(catalog, ("m1", "port-meter-4", 1), ("m2", "port-meter-4", 2))
    async with ModbusSimulator(devices, refresh_s=60) as sim, client(sim) as c:
        sim.set_fault("m1", "exception", code=code)
        failed = await c.read_input_registers(0, count=2, device_id=1)
        fine = await c.read_input_registers(0, count=2, device_id=2)
    assert code_of(failed) == code
    assert not fine.isError()


async def test_a_disconnect_fault_closes_the_connection(catalog: ProfileCatalog) -> None:
    devices = bus(catalog, ("m1", "port-meter-4", 1), ("m2", "port-meter-4", 2))
    async with ModbusSimulator(devices, refresh_s=60) as sim:
        sim.set_fault("m1", "disconnect")
        reader, writer = await asyncio.open_connection(LOCAL, sim.port)
        try:
            writer.write(frame(2, tid=1))
            assert answer(await asyncio.wait_for(reader.read(256), 1)).dev_id == 2
            started = time.monotonic()
            writer.write(frame(1, tid=2))
            assert await asyncio.wait_for(reader.read(256), 1) == b""  # EOF: closed by the bus
            assert time.monotonic() - started < 0.2
        finally:
            writer.close()
        async with client(sim, wait_s=0.3) as c:  # a new connection is served again
            assert not (await c.read_input_registers(0, count=2, device_id=2)).isError()


async def test_rtu_over_tcp_serves_its_units_and_leaves_unknown_ones_silent(
    catalog: ProfileCatalog,
) -> None:
    lamp = catalog["lamp-controller"]
    devices = bus(catalog, ("lamp", "lamp-controller", 3), ("tilt", "pole-tilt", 4))
    async with (
        ModbusSimulator(devices, framer="rtu", refresh_s=60) as sim,
        client(sim, wait_s=0.3, framer=FramerType.RTU) as c,
    ):
        assert await read_device(c, 3, lamp) == sim.values("lamp")
        assert not (await c.write_register(0, 70, device_id=3)).isError()
        assert (await read_device(c, 3, lamp))["dim_pct"] == 70
        with pytest.raises(ModbusIOException):
            await c.read_input_registers(0, count=1, device_id=9)


async def test_an_unknown_unit_behind_a_modbus_tcp_gateway_gets_exception_0x0b(
    catalog: ProfileCatalog,
) -> None:
    devices = bus(catalog, ("m1", "port-meter-4", 1))
    async with ModbusSimulator(devices, refresh_s=60) as sim, client(sim) as c:
        missing = await c.read_input_registers(0, count=1, device_id=9)
        outside = await c.read_input_registers(60, count=1, device_id=1)
    assert code_of(missing) == GATEWAY_NO_RESPONSE
    assert code_of(outside) == ILLEGAL_ADDRESS


# --- a site's buses ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        port: int = s.getsockname()[1]
        return port


def site_of(*devices: DeviceSpec) -> SiteSpec:
    return SiteSpec(poles=[PoleSpec(id=f"pole-{i}", devices=[d]) for i, d in enumerate(devices)])


async def test_a_site_gets_one_bus_per_endpoint(catalog: ProfileCatalog) -> None:
    tcp, rtu = free_port(), free_port()
    site = site_of(
        device("meter", "port-meter-4", 1, port=tcp),
        device("lamp", "lamp-controller", 2, port=tcp),
        device("env", "env-station", 1, port=rtu, framer="rtu"),
    )
    stop = asyncio.Event()
    running = asyncio.create_task(run_modbus_devices(site, catalog, stop=stop))
    try:
        for port, framer, unit, profile in (
            (tcp, FramerType.SOCKET, 2, "lamp-controller"),
            (rtu, FramerType.RTU, 1, "env-station"),
        ):
            c = AsyncModbusTcpClient(LOCAL, port=port, framer=framer, timeout=1, retries=0)
            for _ in range(50):  # the buses come up in a moment
                if await c.connect():
                    break
                await asyncio.sleep(0.05)
            try:
                read = await read_device(c, unit, catalog[profile])
            finally:
                c.close()
            assert set(read) == set(catalog[profile].metrics)
    finally:
        stop.set()
        await asyncio.wait_for(running, 5)


@pytest.mark.parametrize(
    ("devices", "complaint"),
    [
        ((device("m", "port-meter-4", 1, host="192.0.2.10"),), "not an address of this machine"),
        (
            (device("a", "port-meter-4", 1), device("b", "lamp-controller", 2, framer="rtu")),
            "cannot also be rtu",
        ),
        ((device("a", "port-meter-4", 1), device("b", "lamp-controller", 1)), "share unit 1"),
        ((device("s", "sos-button", 1),), "no modbus register map"),
    ],
)
async def test_a_site_the_simulator_cannot_serve_is_refused(
    catalog: ProfileCatalog, devices: tuple[DeviceSpec, ...], complaint: str
) -> None:
    with pytest.raises(ConfigError, match=complaint):
        await run_modbus_devices(site_of(*devices), catalog, stop=asyncio.Event())


async def test_the_bus_records_its_clients_and_their_requests(catalog: ProfileCatalog) -> None:
    spec = device("L1", "lamp-controller", 1)
    async with ModbusSimulator([(spec, catalog["lamp-controller"])]) as sim:
        for _ in range(2):  # two connections, one after the other
            client = AsyncModbusTcpClient(LOCAL, port=sim.port, timeout=1, retries=0)
            assert await client.connect()
            await client.read_holding_registers(0, count=1, device_id=1)
            await client.write_register(0, 1, device_id=1)
            client.close()
            for _ in range(50):
                if sim.clients and sim.clients[-1].closed is not None:
                    break
                await asyncio.sleep(0.02)
        first, second = sim.clients
        assert [r.function_code for r in first.requests] == [3, 6]
        assert [r.is_write for r in first.requests] == [False, True]
        assert first.closed is not None
        assert first.opened <= first.requests[0].at <= first.requests[-1].at <= first.closed
        assert first.peer is not None
        assert first.peer[0] == LOCAL
        busy_first, busy_second = first.busy(), second.busy()
        assert busy_first is not None
        assert busy_second is not None
        assert busy_first[1] < busy_second[0]
