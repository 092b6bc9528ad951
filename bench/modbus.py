#!/usr/bin/env python3
"""Modbus polling benchmark: `polegw run` polling 20 buses x 25 devices every second,
next to a bare pymodbus loop doing the same reads on the same schedule.

    .venv/bin/python bench/modbus.py                         # 20 x 25 devices, 1 s, 60 s phases
    .venv/bin/python bench/modbus.py --mode concurrent       # bare loop and gateway at once
    .venv/bin/python bench/modbus.py --py-spy /tmp/mb.txt    # + profile of the gateway
    .venv/bin/python bench/modbus.py --summarise /tmp/mb.txt # that profile by component

One run does, on this machine:

1. Simulators, in a process of their own (``--_simulators``): one
   ``ModbusSimulator`` (simulators/modbus_server.py, pymodbus's server) per bus, each
   on its own port of 127.0.0.1 with ``--devices`` unit ids (1..25) behind it, all of
   the benchmark profile ``bench/profiles/bench-meter.yaml``: 28 points in 40 input
   registers (uint16, int16, uint32, float32) in two blocks of 20, so one poll is two
   read requests. The device model (``BenchMeter`` below) gives every point a value
   that moves with time; registers are refreshed from it at most every
   ``--sim-refresh`` seconds (0.5: every poll sees new values).

2. Set-up. A database of its own (``polegw_bench_mb_<hex>``, from template0, dropped
   at the end), migrated with ``polegw migrate``; a site of ``--buses`` poles, each with
   ``--devices`` Modbus devices on one bus (``interval_s: --interval``), imported with
   ``polegw site import``; ``POLEGW_PROFILES_DIR=bench/profiles`` for both and for the
   gateway.

3. Bare loop (``--_bare``), a process of its own: one ``AsyncModbusTcpClient`` per
   bus (Modbus TCP, timeout 1 s, retries 0, as the gateway configures it), one task
   per bus; device i of n is due at start + interval * (i/n + k), the gateway's
   stagger; a request is sent when due (a poll a whole interval late is skipped and
   counted); each poll sends the same block reads the gateway plans
   (``plan_reads`` of the same profile) one after the other and checks only
   ``isError()`` and the register count. No decoding, no storage. Its lateness
   (loop time at send - due) is recorded for every poll.

4. Gateway. ``polegw run`` as a subprocess (own API port and MQTT client id and
   topic prefix; MQTT is connected but idle). It polls, decodes, validates and
   stores (COPY) every reading. Figures come from its /metrics, read at the start
   and end of the measured window: ``polegw_modbus_polls_total`` (by result),
   ``polegw_modbus_points_read_total``, ``polegw_modbus_skipped_cycles_total``,
   ``polegw_modbus_poll_lateness_seconds`` and ``polegw_modbus_poll_seconds``
   (histograms; quantiles interpolated inside buckets).

   Exact lateness, per poll, from the database: a poll's readings carry ts = the
   wall time at which the device is read (``datetime.now()`` in ``ModbusBus._poll``
   once it holds the bus lock, which nothing else takes here: no commands are sent;
   that is right after the scheduler took the poll off its heap and observed its
   lateness). Device i of n on a bus is due at
   start + interval * (i/n + k), devices in id order (``Registry.polled_devices``).
   So ``(ts - interval * i/n) mod interval`` is start's phase plus the lateness. The
   bus's start phase is taken at the end of the largest gap of these phases on the
   circle, i.e. at its least late poll. Lateness is therefore measured against the
   least late of the bus's ~1,500 polls in the window. That poll is at most one
   event-loop wake-up late (< 1 ms; see the histogram's 1 ms bucket, printed). The
   count of these polls is checked against the gateway's ok-polls counter.

5. A second reference, bare COPY: after the gateway phase, this script stores
   ``--copy-polls`` polls' worth (or fewer: no more than the gateway stored in its
   window) of the same shape of rows (28 per poll; 20 for --shape small) with a bare
   binary COPY (``write_row``, the gateway's column types, into ``LIKE telemetry
   INCLUDING ALL``), in the gateway's mean batch size and at its pace (batches/s from
   ``polegw_batch_readings``), and measures its own CPU. Gateway CPU is then also
   compared with bare loop + bare COPY per point: the part of the gap that storing
   costs at the least.

6. Modes. ``sequential`` (default): the bare loop runs its phase first, then the
   gateway runs its own, against the same simulators, so neither takes CPU from
   the other. ``concurrent``: both poll the same simulators in the same window.

CPU: utime+stime from /proc/PID/stat over each measured window, for the gateway,
the bare loop, the simulator process, the PostgreSQL processes serving the bench
database (plus WAL writer, checkpointer, background writer), this script, and the
whole machine ("other" = everything else: other users of the machine).
"CPU per 1,000 points" = process CPU seconds / points read in the window x 1000;
points are the profile's decoded values (28 per poll; 20 for --shape small) for
both. Per poll: process CPU seconds / ok polls.

Profiling: ``--py-spy FILE`` records the gateway during its window (py-spy is not a
project dependency: ``.venv/bin/pip install py-spy``); it costs the machine CPU, so
use a separate run for the figures. ``--summarise FILE`` sums a profile up by
component.

Needs: PostgreSQL (superuser URL, ``--admin-url``), an MQTT broker (the gateway
connects; nothing is published), and this project's venv.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import importlib.util
import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The ingest benchmark's helpers (/proc CPU accounting, /metrics parsing, gateway process).
_spec = importlib.util.spec_from_file_location("bench_ingest", HERE / "ingest.py")
assert _spec is not None
assert _spec.loader is not None
ib = importlib.util.module_from_spec(_spec)
sys.modules["bench_ingest"] = ib
_spec.loader.exec_module(ib)
import spy_summary  # noqa: E402  (beside this script; run as bench/modbus.py)

PROFILES_DIR = HERE / "profiles"
# --shape: (profile, a metric read once per poll (stamped with the poll's start),
# default buses, default devices per bus).
SHAPES: dict[str, tuple[str, str, int, int]] = {
    # 28 points of mixed types in two blocks of 20 registers: two requests per poll.
    "city": ("bench-meter", "l1_voltage_v", 20, 25),
    # The small site: 100 devices x 20 float32 in one block of 40 registers.
    "small": ("bench-float20", "f00", 4, 25),
}
PROFILE = "bench-meter"  # set from --shape (--profile in the child processes)
MARKER_METRIC = "l1_voltage_v"
HOST = "127.0.0.1"


def device_id(bus: int, unit: int) -> str:
    # Zero-padded: the registry's id order is the unit order, hence the stagger index.
    return f"mb{bus:02d}-u{unit:02d}"


# --------------------------------------------------------------------------- simulators


def bench_model(profile: str) -> type:
    """The simulated device behind a bench profile (defined lazily: simulator process only)."""
    from simulators.model import DeviceModel

    class Float20(DeviceModel):
        """Twenty floats that move with time."""

        profile = "bench-float20"

        def __init__(self, device_id: str, ctx: Any) -> None:
            super().__init__(device_id, ctx)
            self.phase = self.noise.between("phase", 0.0, 6.28)

        def sample(self, t: float) -> dict[str, float | bool]:
            w = math.sin(t / 30.0 + self.phase)
            return {f"f{k:02d}": 100.0 * k + 10.0 * w + t % 7 for k in range(20)}

    class BenchMeter(DeviceModel):
        """A three-phase analyser under a slowly varying load; values for every point."""

        profile = "bench-meter"

        def __init__(self, device_id: str, ctx: Any) -> None:
            super().__init__(device_id, ctx)
            n = self.noise
            self.base_kw = n.between("load", 5.0, 60.0)
            self.phase = n.between("phase", 0.0, 6.28)
            self.energy0 = [n.between(f"e{k}", 1_000.0, 90_000.0) for k in range(3)]
            self.boot = 1_700_000_000.0 + n.between("boot", 0.0, 1e6)

        def sample(self, t: float) -> dict[str, float | bool]:
            w = math.sin(t / 30.0 + self.phase)
            kw = self.base_kw * (1.0 + 0.2 * w)
            hours = (t - 1_700_000_000.0) / 3600.0
            e = [e0 + hours * kw / 3 for e0 in self.energy0]
            v = [230.0 + 3.0 * w, 229.0 - 2.0 * w, 231.0 + 1.5 * w]
            a = [kw * 1000 / 3 / vv for vv in v]
            pf = [0.95 + 0.03 * w, 0.93, 0.97 - 0.02 * w]
            p = [vv * aa * ff for vv, aa, ff in zip(v, a, pf, strict=True)]
            return {
                "l1_voltage_v": v[0],
                "l2_voltage_v": v[1],
                "l3_voltage_v": v[2],
                "l1_current_a": a[0],
                "l2_current_a": a[1],
                "l3_current_a": a[2],
                "l1_power_factor": pf[0],
                "l2_power_factor": pf[1],
                "l3_power_factor": pf[2],
                "temp_c": 35.0 + 5.0 * w,
                "total_power_w": sum(p),
                "reactive_power_var": kw * 300.0,
                "frequency_hz": 50.0 + 0.02 * w,
                "active_energy_kwh": sum(e),
                "reactive_energy_kvarh": sum(e) * 0.3,
                "l1_power_w": p[0],
                "l2_power_w": p[1],
                "l3_power_w": p[2],
                "l1_energy_kwh": e[0],
                "l2_energy_kwh": e[1],
                "l3_energy_kwh": e[2],
                "thd_voltage_pct": 2.5 + 0.5 * w,
                "thd_current_pct": 8.0 + 2.0 * w,
                "neutral_current_a": 2.0 + w,
                "phase_angle_deg": -18.0 + 4.0 * w,
                "unbalance_pct": 1.5 * w,
                "status_word": 1.0,
                "uptime_s": float(int(t - self.boot)),
            }

    return {m.profile: m for m in (BenchMeter, Float20)}[profile]


def simulators_main(argv: list[str]) -> None:
    """Child process: serve the buses until stdin closes; print their ports first."""
    import logging

    p = argparse.ArgumentParser()
    p.add_argument("--buses", type=int)
    p.add_argument("--devices", type=int)
    p.add_argument("--interval", type=float)
    p.add_argument("--refresh", type=float)
    p.add_argument("--profile")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    from gateway.core.profiles import load_catalog
    from gateway.core.site import DeviceSpec, ModbusEndpoint
    from simulators import modbus_devices
    from simulators.modbus_server import ModbusSimulator

    # make_device looks models up in this dict (its default argument): add ours.
    modbus_devices.MODBUS_MODELS[a.profile] = bench_model(a.profile)  # type: ignore[index]
    profile = load_catalog(PROFILES_DIR).get(a.profile)
    assert profile is not None

    async def serve() -> None:
        sims = []
        for b in range(a.buses):
            devices = [
                (
                    DeviceSpec(
                        id=device_id(b, u),
                        profile=a.profile,
                        transport="modbus",
                        modbus=ModbusEndpoint(host=HOST, port=502, unit=u, interval_s=a.interval),
                    ),
                    profile,
                )
                for u in range(1, a.devices + 1)
            ]
            sim = ModbusSimulator(devices, host=HOST, port=0, seed=b + 1, refresh_s=a.refresh)
            await sim.start()
            sims.append(sim)
        print("ports " + ",".join(str(s.port) for s in sims), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for sim in sims:
            await sim.stop()

    asyncio.run(serve())


class Simulators:
    def __init__(self, args: argparse.Namespace, log_path: Path) -> None:
        self.log = open(log_path, "ab")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--_simulators",
                "--buses",
                str(args.buses),
                "--devices",
                str(args.devices),
                "--interval",
                str(args.interval),
                "--refresh",
                str(args.sim_refresh),
                "--profile",
                PROFILE,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "ports":
            raise SystemExit(f"simulators did not start; see {log_path}")
        self.ports = [int(x) for x in line[1].split(",")]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


# --------------------------------------------------------------------------- bare loop


def bare_main(argv: list[str]) -> None:
    """Child process: poll like the gateway with bare pymodbus; print JSON at the end."""
    import logging

    p = argparse.ArgumentParser()
    p.add_argument("--ports")
    p.add_argument("--devices", type=int)
    p.add_argument("--interval", type=float)
    p.add_argument("--t0", type=float, help="epoch seconds: the schedule's start")
    p.add_argument("--warmup", type=float)
    p.add_argument("--duration", type=float)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--profile")
    a = p.parse_args(argv)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    from pymodbus import FramerType
    from pymodbus.client import AsyncModbusTcpClient

    from gateway.core.modbus_plan import plan_reads
    from gateway.core.profiles import load_catalog

    profile = load_catalog(PROFILES_DIR).get(a.profile)
    assert profile is not None
    assert profile.modbus is not None
    blocks = [(b.table, b.start, b.count) for b in plan_reads(profile.modbus)]
    npoints = len(profile.modbus.points)
    ports = [int(x) for x in a.ports.split(",")]
    st: dict[str, Any] = {
        "polls_ok": 0,
        "polls_failed": 0,
        "skipped": 0,
        "requests": 0,
        "late": [],
        "poll_s": [],
    }

    async def bus(port: int, t0: float, w0: float, w1: float) -> None:
        loop = asyncio.get_running_loop()
        client = AsyncModbusTcpClient(
            HOST,
            port=port,
            framer=FramerType.SOCKET,
            timeout=a.timeout,
            retries=0,
            reconnect_delay=0,
        )
        await client.connect()
        read = {
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
            "coil": client.read_coils,
            "discrete": client.read_discrete_inputs,
        }
        reads = [(read[t], s, c) for t, s, c in blocks]
        n, interval = a.devices, a.interval
        cycle = 0
        late_l, poll_l = st["late"], st["poll_s"]
        try:
            while True:
                for i in range(n):
                    due = t0 + interval * (cycle + i / n)
                    if due >= w1:
                        return
                    wait = due - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    now = loop.time()
                    counted = due >= w0
                    if now - due >= interval:
                        if counted:
                            st["skipped"] += 1
                        continue
                    ok = True
                    try:
                        if not client.connected:
                            await client.connect()
                        for fn, start, count in reads:
                            r = await fn(start, count=count, device_id=i + 1)
                            if r.isError() or len(r.registers) != count:
                                ok = False
                                break
                    except Exception:  # noqa: BLE001 (counted; a benchmark, not a gateway)
                        ok = False
                    if counted:
                        st["requests"] += len(reads)
                        if ok:
                            st["polls_ok"] += 1
                            late_l.append(now - due)
                            poll_l.append(loop.time() - now)
                        else:
                            st["polls_failed"] += 1
                cycle += 1
        finally:
            client.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time() + (a.t0 - time.time())
        w0, w1 = t0 + a.warmup, t0 + a.duration
        await asyncio.gather(*(bus(port, t0, w0, w1) for port in ports))

    asyncio.run(main())
    late = sorted(st.pop("late"))
    poll_s = sorted(st.pop("poll_s"))
    st.update(
        points=st["polls_ok"] * npoints,
        points_per_poll=npoints,
        late_p50=ib.pct(late, 0.5),
        late_p99=ib.pct(late, 0.99),
        late_max=late[-1] if late else None,
        poll_p50=ib.pct(poll_s, 0.5),
        poll_p99=ib.pct(poll_s, 0.99),
    )
    print(json.dumps(st), flush=True)


class Bare:
    def __init__(self, args: argparse.Namespace, ports: list[int], t0: float, log: Path) -> None:
        self.log = open(log, "ab")  # noqa: SIM115 (closed in result())
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--_bare",
                "--ports",
                ",".join(map(str, ports)),
                "--devices",
                str(args.devices),
                "--interval",
                str(args.interval),
                "--t0",
                repr(t0),
                "--warmup",
                str(args.warmup),
                "--duration",
                str(args.duration),
                "--profile",
                PROFILE,
            ],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise SystemExit("the bare loop did not finish") from None
        finally:
            self.log.close()
        lines = [x for x in out.splitlines() if x.startswith("{")]
        if self.proc.returncode or not lines:
            raise SystemExit(f"the bare loop failed (rc {self.proc.returncode})")
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


# --------------------------------------------------------------------------- measuring


@dataclass
class Window:
    """CPU of process groups (and the machine) between two instants."""

    start: float = 0.0
    end: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    m_start: dict[str, float] = field(default_factory=dict)
    m_end: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.end - self.start


def measure(
    w0: float,
    w1: float,
    groups: dict[str, list[int]],
    gw: Any | None = None,
    spy: tuple[str, int] | None = None,
) -> Window:
    """Sleep to w0, snapshot; (optionally profile the gateway); sleep to w1, snapshot."""
    meters = {k: ib.CpuMeter() for k in groups}
    time.sleep(max(0.0, w0 - time.time()))
    win = Window()
    if gw is not None:
        win.m_start = gw.metrics()
    for k, pids in groups.items():
        meters[k].start(pids)
    sys0 = ib.all_processes_cpu()
    win.start = time.time()
    profiler = None
    if spy is not None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        profiler = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(spy[1]),
                "--rate",
                "200",
                "--format",
                "raw",
                "--duration",
                str(max(1, int(w1 - w0) - 1)),
                "--output",
                spy[0],
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    time.sleep(max(0.0, w1 - time.time()))
    win.end = time.time()
    win.cpu = {k: m.stop() for k, m in meters.items()}
    sys1 = ib.all_processes_cpu()
    if gw is not None:
        win.m_end = gw.metrics()
    busy = ib.machine_cpu_between(sys0, sys1)
    win.cpu["other"] = max(0.0, busy - sum(win.cpu.values()))
    win.cpu["machine (all processes)"] = busy
    if profiler is not None:
        try:
            profiler.wait(30)
        except subprocess.TimeoutExpired:
            profiler.terminate()
            profiler.wait(5)
    return win


def db_sessions(admin_url: str, dbname: str) -> int:
    """Sessions (connections) the database has had so far (PostgreSQL 14+)."""
    with ib.pg_connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", (dbname,)
        ).fetchone()
    return int(row[0]) if row else -1


def warmup_trace(gw: Any, until: float) -> list[tuple[float, float, float, float, float]]:
    """During the warm-up only (it costs the gateway CPU): every 0.25 s, seconds since the
    gateway process started, its skipped cycles, ok polls, lateness observations above
    100 ms and CPU seconds so far."""
    started = gw.started
    out = []
    while time.time() < until:
        with contextlib.suppress(Exception):
            m = gw.metrics()
            lat = "polegw_modbus_poll_lateness_seconds"
            over = metric_sum(m, lat + "_count") - sum(
                v for k, v in m.items() if k.startswith(lat + "_bucket{") and 'le="0.1"' in k
            )
            out.append(
                (
                    time.time() - started,
                    metric_sum(m, "polegw_modbus_skipped_cycles_total"),
                    metric_sum(m, "polegw_modbus_polls_total", 'result="ok"'),
                    over,
                    ib.proc_cpu_s(gw.pid) or 0.0,
                )
            )
        time.sleep(0.25)
    return out


def metric_sum(m: dict[str, float], name: str, where: str = "") -> float:
    """Sum of a metric's series (optionally those whose labels contain `where`)."""
    return sum(v for k, v in m.items() if (k == name or k.startswith(name + "{")) and where in k)


def hist_total(before: dict[str, float], after: dict[str, float], name: str) -> dict[str, float]:
    """A labelled histogram summed over its label sets: bucket key -> increase, without labels
    other than le (the form ib.histogram_quantiles reads)."""
    out: dict[str, float] = collections.defaultdict(float)
    for src, sign in ((after, 1.0), (before, -1.0)):
        for k, v in src.items():
            if not k.startswith(name + "_bucket{"):
                continue
            le = k[k.index('le="') + 4 :].split('"')[0]
            out[f'{name}_bucket{{le="{le}"}}'] += sign * v
    return dict(out)


def share_le(buckets: dict[str, float], name: str, le: str) -> float | None:
    inf = buckets.get(f'{name}_bucket{{le="+Inf"}}', 0.0)
    got = buckets.get(f'{name}_bucket{{le="{le}"}}')
    return None if not inf or got is None else got / inf


def exact_lateness(
    db_url: str, w0: float, w1: float, buses: int, devices: int, interval: float
) -> dict[str, Any]:
    """Each poll's lateness from its readings' ts (see the module docstring, step 4)."""
    with ib.pg_connect(db_url) as conn:
        rows = conn.execute(
            "SELECT device_id, extract(epoch FROM ts)::float8 FROM telemetry"
            " WHERE metric = %s AND ts >= %s AND ts < %s",
            (MARKER_METRIC, datetime.fromtimestamp(w0, UTC), datetime.fromtimestamp(w1, UTC)),
        ).fetchall()
    phases: dict[int, list[float]] = collections.defaultdict(list)
    for dev, ts in rows:
        b, u = int(dev[2:4]), int(dev[6:8])
        phases[b].append((ts - interval * (u - 1) / devices) % interval)
    late: list[float] = []
    per_bus_p99: list[float] = []
    when: dict[int, list[float]] = collections.defaultdict(list)  # bus -> poll ts
    for dev, ts in rows:
        when[int(dev[2:4])].append(ts)
    slow_at: collections.Counter[int] = collections.Counter()  # second of window -> polls > 50 ms
    for b, ph in phases.items():
        s = sorted(ph)
        gaps = [
            ((s[(k + 1) % len(s)] - s[k]) % interval) if len(s) > 1 else interval
            for k in range(len(s))
        ]
        k = max(range(len(s)), key=gaps.__getitem__)
        start = s[(k + 1) % len(s)]
        lates = [(x - start) % interval for x in ph]
        for x, ts in zip(lates, when[b], strict=True):
            if x > 0.05:
                slow_at[int(ts - w0)] += 1
        bus_late = sorted(lates)
        late.extend(bus_late)
        per_bus_p99.append(ib.pct(bus_late, 0.99) or 0.0)
    late.sort()
    return {
        "polls": len(late),
        "buses": len(phases),
        "p50": ib.pct(late, 0.5),
        "p90": ib.pct(late, 0.9),
        "p99": ib.pct(late, 0.99),
        "max": late[-1] if late else None,
        "worst_bus_p99": max(per_bus_p99) if per_bus_p99 else None,
        "over_100ms": sum(1 for x in late if x > 0.1),
        "over_50ms_by_second": dict(sorted(slow_at.items())),
    }


def bare_copy(
    db_url: str, points_per_poll: int, polls: int, batch: int, every_s: float
) -> dict[str, float]:
    """CPU of this process to store `polls` polls' readings with a bare binary COPY (the
    gateway's columns and types, into a copy of its table with the same unique index),
    `batch` rows per transaction, one transaction every `every_s` seconds (the gateway's
    pace: between batches PostgreSQL goes idle, and waking it is part of the cost), on
    one connection; rows are built before the clock."""
    from psycopg import sql

    metrics = [f"m{k:02d}" for k in range(points_per_poll)]
    t0 = datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    rows = [
        (datetime.fromtimestamp(t0 + p * 0.002, UTC), device_id(p % 20, 1 + p % 25), m, 1.5, 0)
        for p in range(polls)
        for m in metrics
    ]
    table = sql.Identifier("telemetry_bare_copy")
    stmt = sql.SQL(
        "COPY {} (ts, device_id, metric, value, quality) FROM STDIN (FORMAT BINARY)"
    ).format(table)
    types = ["timestamptz", "text", "text", "float8", "int2"]
    with ib.pg_connect(db_url) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE telemetry INCLUDING ALL)").format(table))
        conn.commit()
        cpu0 = ib.proc_cpu_s(os.getpid()) or 0.0
        t = time.perf_counter()
        for n, k in enumerate(range(0, len(rows), batch)):
            time.sleep(max(0.0, t + n * every_s - time.perf_counter()))
            with conn.cursor() as cur, cur.copy(stmt) as copy:
                copy.set_types(types)
                for row in rows[k : k + batch]:
                    copy.write_row(row)
            conn.commit()
        elapsed = time.perf_counter() - t
        cpu = (ib.proc_cpu_s(os.getpid()) or 0.0) - cpu0
        conn.execute(sql.SQL("DROP TABLE {}").format(table))
        conn.commit()
    return {
        "rows": len(rows),
        "batch": batch,
        "every_s": every_s,
        "seconds": elapsed,
        "cpu_s": cpu,
        "cpu_ms_per_1000_rows": 1e6 * cpu / len(rows),
    }


# --------------------------------------------------------------------------- set-up


def code_version() -> str:
    """The commit the gateway runs from, and whether gateway/ differs from it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "gateway"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" + uncommitted changes in gateway/" if dirty else "")


def log_summary(path: Path, limit: int = 6) -> tuple[collections.Counter[str], list[str]]:
    """Lines of the gateway's log by level, and its first distinct warnings/errors."""
    levels: collections.Counter[str] = collections.Counter()
    firsts: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split(None, 4)
            if len(parts) < 5 or parts[2] not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                continue
            levels[parts[2]] += 1
            if parts[2] in ("WARNING", "ERROR"):
                key = parts[3] + " " + parts[4][:60]
                firsts.setdefault(key, f"{parts[2]} {parts[3]} {parts[4][:200]}")
    return levels, list(firsts.values())[:limit]


def site_yaml(buses: int, devices: int, ports: list[int], interval: float) -> str:
    out = ["# bench/modbus.py: one pole per bus, its Modbus devices behind one endpoint", "poles:"]
    for b in range(buses):
        out.append(f"  - id: mbpole-{b:02d}")
        out.append("    devices:")
        for u in range(1, devices + 1):
            out.append(
                f"      - {{id: {device_id(b, u)}, profile: {PROFILE}, transport: modbus,"
                f" modbus: {{host: {HOST}, port: {ports[b]}, unit: {u}, framer: socket,"
                f" interval_s: {interval}}}}}"
            )
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- report


def ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 1000:.1f} ms"


def print_cpu(win: Window) -> None:
    w = win.seconds
    print(f"  CPU in window ({w:.1f} s; % of one core):")
    for k, v in win.cpu.items():
        print(f"    {k:26s} {v:7.2f} s  {100 * v / w:6.1f} %")


COMPONENTS: list[tuple[str, tuple[str, ...]]] = [
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("register decode (modbus_registers.py + pymodbus convert)", ("modbus_registers.py",)),
    ("validate -> Reading (gateway/core/decode.py)", ("gateway/core/",)),
    ("COPY + commit (telemetry_writer, psycopg)", ("telemetry_writer.py", "psycopg/")),
    ("ingest batcher (gateway/ingest.py)", ("gateway/ingest.py",)),
    ("pymodbus client: request, frame, transaction, response PDU", ("pymodbus/",)),
    ("bus scheduler + poll glue (modbus_bus.py)", ("modbus_bus.py",)),
    ("API (uvicorn/fastapi)", ("uvicorn/", "fastapi/", "starlette/")),
    ("MQTT (idle)", ("aiomqtt/", "paho/")),
    ("bare loop (bench/modbus.py)", ("bench/modbus.py",)),
]


def summarise(path: str) -> None:
    """A py-spy raw profile by component (first match in the order above wins)."""
    spy_summary.summarise(
        path, COMPONENTS, other="event loop (selector, transports, tasks) / other", top=30
    )


# --------------------------------------------------------------------------- main


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_simulators":
        simulators_main(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--_bare":
        bare_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--shape",
        choices=SHAPES,
        default="city",
        help="city: bench-meter, 28 points in 2 blocks, 20 x 25 devices (default);"
        " small: bench-float20, 20 float32 in 1 block, 4 x 25 devices",
    )
    ap.add_argument("--buses", type=int, help="default: the shape's")
    ap.add_argument("--devices", type=int, help="devices (unit ids) per bus; default: the shape's")
    ap.add_argument("--interval", type=float, default=1.0, help="poll interval, s")
    ap.add_argument("--duration", type=float, default=70, help="seconds per phase (default 70)")
    ap.add_argument("--warmup", type=float, default=10, help="seconds not measured (default 10)")
    ap.add_argument("--mode", choices=("sequential", "concurrent"), default="sequential")
    ap.add_argument(
        "--copy-polls",
        type=int,
        default=10_000,
        help="polls' worth of rows for the bare COPY reference (default 10000)",
    )
    ap.add_argument("--sim-refresh", type=float, default=0.5, help="simulated register refresh")
    ap.add_argument(
        "--admin-url", default=os.environ.get("POLEGW_BENCH_ADMIN_URL", ib.DEFAULT_ADMIN_URL)
    )
    ap.add_argument("--mqtt-host", default="127.0.0.1")
    ap.add_argument("--mqtt-port", type=int, default=1883)
    ap.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--py-spy", metavar="FILE", help="py-spy record the gateway's window")
    ap.add_argument(
        "--py-spy-bare", metavar="FILE", help="py-spy record the bare loop (sequential mode)"
    )
    ap.add_argument("--summarise", metavar="FILE", help="only summarise a py-spy raw profile")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the database and work dir")
    args = ap.parse_args()
    if args.summarise:
        import signal

        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` is fine
        summarise(args.summarise)
        return
    global PROFILE, MARKER_METRIC
    PROFILE, MARKER_METRIC, buses, devices = SHAPES[args.shape]
    args.buses = args.buses or buses
    args.devices = args.devices or devices
    if args.warmup >= args.duration:
        raise SystemExit("--warmup must be shorter than --duration")

    run_id = "mb-" + secrets.token_hex(4)
    dbname = "polegw_bench_" + run_id.replace("-", "_")
    db_url = ib.with_db(args.admin_url, dbname)
    workdir = Path(tempfile.mkdtemp(prefix=f"polegw-{run_id}-"))
    env_base = {k: v for k, v in os.environ.items() if not k.startswith("POLEGW_")}
    profiles_env = {"POLEGW_PROFILES_DIR": str(PROFILES_DIR)}
    n_dev = args.buses * args.devices
    version = code_version()
    print(
        f"polegw modbus bench {run_id}: {os.cpu_count()} CPUs, load average"
        f" {Path('/proc/loadavg').read_text().split()[:3]}; shape {args.shape} ({PROFILE}),"
        f" {args.buses} buses x {args.devices} devices every {args.interval:g} s; mode {args.mode};"
        f" work dir {workdir}; gateway code {version}",
        flush=True,
    )
    ib.create_database(args.admin_url, dbname)
    sims: Simulators | None = None
    bare: Bare | None = None
    gw: Any = None
    client_id = f"polegw-{run_id}"
    results: dict[str, Any] = {"run_id": run_id, "args": vars(args), "code": version}
    try:
        sims = Simulators(args, workdir / "simulators.log")
        print(f"simulators: pid {sims.pid}, ports {sims.ports[0]}..{sims.ports[-1]}", flush=True)
        site_file = workdir / "site.yaml"
        site_file.write_text(site_yaml(args.buses, args.devices, sims.ports, args.interval))
        env = dict(env_base, POLEGW_DATABASE_URL=db_url, POLEGW_LOG_LEVEL="WARNING")
        env.update(profiles_env)
        for cmd in (["migrate"], ["site", "import", str(site_file)]):
            subprocess.run(
                [ib.polegw_exe(), *cmd], env=env, check=True, cwd=workdir, stdout=subprocess.DEVNULL
            )
        print(f"site: {n_dev} devices imported", flush=True)
        admin = args.admin_url

        def start_bare(t0: float) -> Bare:
            return Bare(args, sims.ports, t0, workdir / "bare.log")

        def start_gw() -> Any:
            extra = dict(kv.split("=", 1) for kv in args.gateway_env)
            sessions["before gateway"] = db_sessions(admin, dbname)
            started = time.time()
            g = ib.start_gateway(
                env_base,
                db_url,
                f"{run_id}/poles",
                client_id,
                f"mqtt://{args.mqtt_host}:{args.mqtt_port}",
                workdir,
                {**profiles_env, **extra},
                None,
            )
            g.started = started
            print(
                f"gateway pid {g.pid}, ready {time.time() - started:.1f} s after start", flush=True
            )
            return g

        bare_win: Window
        sessions: dict[str, int] = {}
        gw_win: Window
        spy = (args.py_spy, 0) if args.py_spy else None
        if args.mode == "sequential":
            t0 = time.time() + 1.0
            bare = start_bare(t0)
            bare_win = measure(
                t0 + args.warmup,
                t0 + args.duration,
                {
                    "bare loop": [bare.pid],
                    "simulators": [sims.pid],
                    "bench script": [os.getpid()],
                },
                spy=(args.py_spy_bare, bare.pid) if args.py_spy_bare else None,
            )
            bare_res = bare.result(30)
            gw = start_gw()
            t0 = time.time()
            warm = warmup_trace(gw, t0 + args.warmup - 1.0)
            sessions["end of warm-up"] = db_sessions(admin, dbname)
            gw_win = measure(
                t0 + args.warmup,
                t0 + args.duration,
                {
                    "gateway": [gw.pid],
                    "simulators": [sims.pid],
                    "postgres": ib.bench_pg_pids(admin, dbname),
                    "bench script": [os.getpid()],
                },
                gw,
                (spy[0], gw.pid) if spy else None,
            )
        else:
            gw = start_gw()
            t0 = time.time() + 1.0
            bare = start_bare(t0)
            warm = warmup_trace(gw, t0 + args.warmup - 1.0)
            sessions["end of warm-up"] = db_sessions(admin, dbname)
            gw_win = measure(
                t0 + args.warmup,
                t0 + args.duration,
                {
                    "gateway": [gw.pid],
                    "bare loop": [bare.pid],
                    "simulators": [sims.pid],
                    "postgres": ib.bench_pg_pids(admin, dbname),
                    "bench script": [os.getpid()],
                },
                gw,
                (spy[0], gw.pid) if spy else None,
            )
            bare_win = gw_win
            bare_res = bare.result(30)
        sessions["window end"] = db_sessions(admin, dbname)
        gw_rss = (ib.proc_status_kb(gw.pid, "VmHWM") or 0) / 1024
        ib.stop_process(gw.proc)
        gw_rc = gw.proc.returncode
        log_levels, log_firsts = log_summary(gw.log_path)
        b_cnt = metric_sum(gw_win.m_end, "polegw_batch_readings_count") - metric_sum(
            gw_win.m_start, "polegw_batch_readings_count"
        )
        b_sum = metric_sum(gw_win.m_end, "polegw_batch_readings_sum") - metric_sum(
            gw_win.m_start, "polegw_batch_readings_sum"
        )
        mean_batch = max(1, round(b_sum / b_cnt)) if b_cnt else 1000
        pace = gw_win.seconds / b_cnt if b_cnt else 0.08
        # At most the polls the gateway stored in its window, so the bare COPY, at the
        # gateway's pace, takes no longer than that window (small runs would take hours).
        per_poll = bare_res["points_per_poll"]
        copy_polls = min(args.copy_polls, max(1, round(b_sum / per_poll)) if b_cnt else 1)
        copy_res = bare_copy(db_url, per_poll, copy_polls, mean_batch, pace)

        # ---- figures
        m0, m1 = gw_win.m_start, gw_win.m_end
        w = gw_win.seconds
        ok = metric_sum(m1, "polegw_modbus_polls_total", 'result="ok"') - metric_sum(
            m0, "polegw_modbus_polls_total", 'result="ok"'
        )
        polls = metric_sum(m1, "polegw_modbus_polls_total") - metric_sum(
            m0, "polegw_modbus_polls_total"
        )
        points = metric_sum(m1, "polegw_modbus_points_read_total") - metric_sum(
            m0, "polegw_modbus_points_read_total"
        )
        skipped = metric_sum(m1, "polegw_modbus_skipped_cycles_total") - metric_sum(
            m0, "polegw_modbus_skipped_cycles_total"
        )
        skipped_all = metric_sum(m1, "polegw_modbus_skipped_cycles_total")
        stored = metric_sum(m1, "polegw_readings_stored_total") - metric_sum(
            m0, "polegw_readings_stored_total"
        )
        dead = metric_sum(m1, "polegw_dead_letters_total") - metric_sum(
            m0, "polegw_dead_letters_total"
        )
        lat_name = "polegw_modbus_poll_lateness_seconds"
        lat_b = hist_total(m0, m1, lat_name)
        lat_q = ib.histogram_quantiles({}, lat_b, lat_name, (0.5, 0.99))
        dur_name = "polegw_modbus_poll_seconds"
        dur_b = hist_total(m0, m1, dur_name)
        dur_q = ib.histogram_quantiles({}, dur_b, dur_name, (0.5, 0.99))
        exact = exact_lateness(
            db_url, gw_win.start, gw_win.end, args.buses, args.devices, args.interval
        )
        gw_cpu = gw_win.cpu["gateway"]
        bare_cpu = bare_win.cpu["bare loop"]
        bw = bare_win.seconds
        gw_per_k = 1000 * gw_cpu / points if points else math.nan
        bare_per_k = 1000 * bare_cpu / bare_res["points"] if bare_res["points"] else math.nan
        ratio = gw_per_k / bare_per_k
        copy_per_k = copy_res["cpu_ms_per_1000_rows"] / 1000
        ratio_io = gw_per_k / (bare_per_k + copy_per_k)
        gw_per_poll = gw_cpu / ok if ok else math.nan
        bare_per_poll = bare_cpu / bare_res["polls_ok"] if bare_res["polls_ok"] else math.nan

        phase = "its own phase" if args.mode == "sequential" else "the gateway's window"
        print(f"\n== bare pymodbus loop ({phase})")
        print(
            f"  polls ok {bare_res['polls_ok']:,} ({bare_res['polls_ok'] / bw:,.1f}/s),"
            f" failed {bare_res['polls_failed']}, skipped {bare_res['skipped']};"
            f" requests {bare_res['requests'] / bw:,.0f}/s"
        )
        print(f"  points {bare_res['points']:,} = {bare_res['points'] / bw:,.0f}/s")
        print(
            f"  lateness p50 {ms(bare_res['late_p50'])}  p99 {ms(bare_res['late_p99'])}"
            f"  max {ms(bare_res['late_max'])};  poll time p50 {ms(bare_res['poll_p50'])}"
            f"  p99 {ms(bare_res['poll_p99'])}"
        )
        print(f"  CPU {bare_cpu:.2f} s = {bare_per_k * 1000:.1f} ms per 1,000 points")
        if args.mode == "sequential":
            print_cpu(bare_win)

        print("\n== gateway (polegw run)")
        print(
            f"  polls ok {ok:,.0f} of {polls:,.0f} ({ok / w:,.1f}/s); skipped cycles {skipped:.0f}"
            f" in window, {skipped_all:.0f} since start"
        )
        print(
            f"  points read {points:,.0f} = {points / w:,.0f}/s;"
            f" readings stored {stored:,.0f} = {stored / w:,.0f}/s; dead letters {dead:.0f}"
        )
        print(
            f"  lateness (histogram, bucket-interpolated) p50 {ms(lat_q[0.5])}"
            f"  p99 {ms(lat_q[0.99])};  <= 1 ms {share_le(lat_b, lat_name, '0.001'):.1%},"
            f" <= 10 ms {share_le(lat_b, lat_name, '0.01'):.1%},"
            f" <= 100 ms {share_le(lat_b, lat_name, '0.1'):.2%}"
        )
        print(
            f"  lateness (exact, from ts)       p50 {ms(exact['p50'])}  p90 {ms(exact['p90'])}"
            f"  p99 {ms(exact['p99'])}  max {ms(exact['max'])}; worst bus p99"
            f" {ms(exact['worst_bus_p99'])}; > 100 ms: {exact['over_100ms']}"
            f" ({exact['polls']:,} polls on {exact['buses']} buses)"
        )
        slow = exact["over_50ms_by_second"]
        print(
            "  polls later than 50 ms, by second of the window (second: polls): "
            + (", ".join(f"{k}: {v}" for k, v in slow.items()) or "none")
        )
        steps = [
            f"{t:.1f} s: {sk:.0f}"
            for (t, sk, *_), prev in zip(warm, [(0, 0.0, 0, 0, 0), *warm], strict=False)
            if sk != prev[1]
        ]
        late_steps = [
            f"{t:.1f} s: {o:.0f}"
            for (t, _, _, o, _), prev in zip(warm, [(0, 0, 0, 0.0, 0), *warm], strict=False)
            if o != prev[3]
        ]
        print(
            "  warm-up (s after the gateway process started: running total):"
            f" skipped cycles {', '.join(steps) or 'none'};"
            f" polls later than 100 ms {', '.join(late_steps) or 'none'}"
            f" (first ok polls at {next((t for t, _, ok, *_ in warm if ok), math.nan):.1f} s)"
        )
        cpu_at = [(t, c) for t, *_, c in warm]
        first5 = max((c for t, c in cpu_at if t <= 5.0), default=math.nan)
        steady = (
            (cpu_at[-1][1] - first5) / (cpu_at[-1][0] - 5.0)
            if cpu_at and cpu_at[-1][0] > 6.0
            else math.nan
        )
        print(
            f"  gateway CPU in its first 5 s: {first5:.2f} s (from then to the end of the"
            f" warm-up: {100 * steady:.0f} % of a core)"
        )
        print(
            "  database sessions opened so far: "
            + ", ".join(f"{k} {v}" for k, v in sessions.items())
        )
        print(f"  poll time (histogram) p50 {ms(dur_q[0.5])}  p99 {ms(dur_q[0.99])}")
        print(
            f"  CPU {gw_cpu:.2f} s = {gw_per_k * 1000:.1f} ms per 1,000 points;"
            f" max RSS {gw_rss:.0f} MB; exit code {gw_rc}"
        )
        print_cpu(gw_win)
        print(
            "  gateway log: "
            + (", ".join(f"{k} {v}" for k, v in sorted(log_levels.items())) or "empty")
        )
        for line in log_firsts:
            print(f"    {line}")
        print(
            f"\n== gateway / bare CPU per point: {ratio:.2f}x"
            f" ({gw_per_k * 1000:.1f} vs {bare_per_k * 1000:.1f} ms per 1,000 points)"
        )
        print(
            f"   bare binary COPY of {copy_res['rows']:,} such rows, {copy_res['batch']} per"
            f" transaction every {copy_res['every_s'] * 1000:.0f} ms (the gateway's mean batch"
            f" and pace): {copy_res['cpu_ms_per_1000_rows']:.1f} ms"
            f" CPU per 1,000 rows; gateway / (bare loop + bare COPY): {ratio_io:.2f}x"
        )
        print(
            f"   per poll ({per_poll} points): gateway {gw_per_poll * 1e6:.0f} µs, bare loop"
            f" {bare_per_poll * 1e6:.0f} µs, bare COPY {copy_per_k * per_poll * 1e3:.0f} µs;"
            f" gateway above bare loop + bare COPY:"
            f" {(gw_per_poll - bare_per_poll - copy_per_k * per_poll / 1000) * 1e6:.0f} µs"
        )
        verdict = {
            "no skipped cycles": skipped_all == 0,
            "p99 lateness < 100 ms (exact)": (exact["p99"] or 1.0) < 0.1,
            "CPU per point <= 1.3x bare": ratio <= 1.3,
        }
        for k, v in verdict.items():
            print(f"   {k}: {'met' if v else 'NOT met'}")
        results.update(
            bare=bare_res,
            bare_window=vars(bare_win) | {"m_start": None, "m_end": None},
            gateway={
                "polls_ok": ok,
                "polls": polls,
                "points": points,
                "points_s": points / w,
                "stored": stored,
                "dead_letters": dead,
                "skipped_window": skipped,
                "skipped_total": skipped_all,
                "lateness_hist_p50": lat_q[0.5],
                "lateness_hist_p99": lat_q[0.99],
                "lateness_exact": exact,
                "poll_time_hist_p50": dur_q[0.5],
                "poll_time_hist_p99": dur_q[0.99],
                "cpu_s": gw_cpu,
                "cpu_ms_per_1000_points": gw_per_k * 1000,
                "rss_mb": gw_rss,
                "warmup_trace": warm,
                "log_levels": dict(log_levels),
                "log_first_warnings": log_firsts,
                "db_sessions": sessions,
            },
            gateway_window=vars(gw_win) | {"m_start": None, "m_end": None},
            bare_cpu_ms_per_1000_points=bare_per_k * 1000,
            ratio=ratio,
            bare_copy=copy_res,
            ratio_to_bare_loop_plus_copy=ratio_io,
            gateway_us_per_poll=gw_per_poll * 1e6,
            bare_us_per_poll=bare_per_poll * 1e6,
            verdict=verdict,
        )
    finally:
        if bare is not None:
            bare.kill()
        ib.stop_gateway(gw, args.mqtt_host, args.mqtt_port)
        if sims is not None:
            sims.close()
        if not args.keep:
            ib.discard_run(args.admin_url, dbname, workdir, gw)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
