#!/usr/bin/env python3
"""Ingest benchmark: sustained readings/s and publish-to-commit latency of `polegw run`,
next to the two limits it is built from.

    .venv/bin/python bench/ingest.py                       # 50,000 readings/s for 30 s
    .venv/bin/python bench/ingest.py --rate 80000 --duration 60 --poles 400
    .venv/bin/python bench/ingest.py --find-max            # ramp until it stops keeping up

One run does, on this machine, against the real broker and PostgreSQL:

1. Set-up. A database of its own (``polegw_bench_<hex>``, created from template0,
   dropped at the end), migrated with ``polegw migrate``; the demo site
   (``simulators/demo_site.py``, ``--poles`` poles) imported with
   ``polegw site import``. The gateway runs as a separate process, ``polegw run``,
   with its own topic prefix (``bench-<hex>/poles``), client id and API port.

2. Messages, built before the clock starts. Each is one ``{prefix}/{pole}/telemetry``
   batch of ``--readings-per-message`` (20) readings taken from the pole's simulated
   devices (``simulators/model.py``, so the values and device profiles are the real
   ones): the lamp controller, the environmental station where the pole has one, then
   the port meter (and the cabinet monitor) until the message is full. Messages go to
   the poles in turn at ``rate / readings_per_message`` messages/s. ``ts`` is the
   scheduled publish time in epoch milliseconds, strictly increasing per pole, so no
   reading is ever a duplicate.

3. Load generator. ``mosquitto_pub -l -q 1 -t {prefix}/{pole}/telemetry``, one
   process per pole: ``-l`` publishes each line of stdin as one message on one topic,
   and a pole's edge controller has its own connection in the field anyway. A pacer
   thread in this script writes each pre-built line into the pole's stdin pipe at its
   scheduled time (one ``write`` per message, nothing else), so the generator is
   C code plus a sleeping thread; its CPU is measured and printed so it can be checked
   that it did not take what the gateway needed. How late the pacer wrote against
   the schedule is printed too: ``ts`` is the schedule, so any generator lag is
   counted against the gateway's latency, never hidden.

4. Gateway phase. Publish for ``--duration`` seconds; the first ``--warmup`` seconds
   are not measured. Stored readings are read from the gateway's own counter
   (``polegw_readings_stored_total`` on /metrics, sampled every 0.5 s, cheap) and
   checked at the end against ``SELECT count(*) FROM telemetry``; sustained = stored
   readings in the window / window length. Afterwards the script waits for the
   backlog to drain and reports anything missing (a broker drop).

   Publish-to-commit latency, per message, exactly enough to trust a p99: a thread
   polls ``pg_current_snapshot()`` every 5 ms on its own connection (no table access,
   no xid). After the run each message's commit transaction is read from its rows'
   ``xmin``; the message was committed between the last poll whose snapshot still
   showed that transaction running (or not yet started) and the first poll that showed
   it finished. Latency = midpoint of that interval - ``ts``; the resolution (±half
   the poll interval plus one query round trip) is printed. This is latency to
   *commit*; the gateway acknowledges the message to the broker right after. As a
   cross-check the gateway's own ``polegw_ingest_lag_seconds`` histogram is read
   too (difference between the window's start and end, p50/p99 interpolated linearly
   inside the bucket: coarse, its buckets are 10/50/100/250/500 ms…).

5. Limit (a), bare subscriber: a paho-mqtt client in its own process (MQTT 5, QoS 1,
   same Receive Maximum as the gateway, paho's automatic PUBACK, no decoding)
   subscribes to the same topics while the same pre-built message files are fed to
   the mosquitto_pub processes as fast as they go (no pacing). msgs/s is measured
   from its first to its last message; readings/s = msgs/s x readings per message.
   If the bare subscriber used less than ~90 % of a core the flood, not the
   subscriber, was the limit, and the figure is a lower bound (printed as such).

6. Limit (b), bare COPY: the same rows, binary COPY (``write_row`` with the
   gateway's column types) into an identical new table (``LIKE telemetry INCLUDING
   ALL``: same unique index), one transaction per ``POLEGW_BATCH_MAX_READINGS`` rows
   (the gateway's batch size), from this script on one connection.

The gateway's sustained figure is printed as a ratio to the lower of the two limits.
Resource use over the measured window: gateway CPU (utime+stime from
/proc/PID/stat) and max RSS (VmHWM from /proc/PID/status), and the same for the
broker, the PostgreSQL processes serving the bench database (with the WAL writer,
checkpointer and background writer), the mosquitto_pub processes, this script and
the whole machine (other users of the machine show up as "other").

Profiling: ``--py-spy FILE`` attaches ``py-spy record`` (if installed) to the gateway
for the measured window and writes collapsed stacks; ``--cprofile FILE`` runs the
gateway under ``python -m cProfile`` instead (slower; for call counts).

Needs: PostgreSQL (superuser URL, ``--admin-url``), an MQTT 5 broker
(``--mqtt-host/--mqtt-port``), ``mosquitto_pub`` on PATH, and this project's venv.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import http.client
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CLK_TCK = os.sysconf("SC_CLK_TCK")
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SNAPSHOT_POLL_S = 0.005
MARKER_METRIC = "voltage_v"  # every message carries its lamp controller's voltage_v
# The order devices fill a message: lamp, env station, port meter, then the rest.
DEVICE_ORDER = ("lamp-controller", "env-station", "port-meter-4", "cabinet-monitor", "pole-tilt")


# --------------------------------------------------------------------------- /proc


def proc_cpu_s(pid: int) -> float | None:
    """utime + stime of a process (all its threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def all_processes_cpu() -> dict[int, float]:
    """CPU seconds of every process on the machine (/proc/stat's totals are not reliable
    in this kind of VM: a quiet CPU's ticks are accounted late)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (c := proc_cpu_s(int(entry))) is not None:
            out[int(entry)] = c
    return out


def machine_cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used by all processes between two snapshots (processes that exited in
    between are missed; those that started are counted whole)."""
    return sum(c - before.get(pid, 0.0) for pid, c in after.items())


def find_broker_pid(port: int) -> int | None:
    """The mosquitto process listening on the port (best effort: pid file, then /proc)."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(Path("/run/mosquitto/mosquitto.pid").read_text().strip())
        if Path(f"/proc/{pid}").exists():
            return pid
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "mosquitto":
                    return int(entry.name)
    return None


class CpuMeter:
    """CPU seconds of a set of processes between start() and stop()."""

    def __init__(self) -> None:
        self.start_cpu: dict[int, float] = {}
        self.end_cpu: dict[int, float] = {}

    def start(self, pids: list[int]) -> None:
        self.start_cpu = {p: c for p in pids if (c := proc_cpu_s(p)) is not None}

    def stop(self) -> float:
        self.end_cpu = {p: c for p in self.start_cpu if (c := proc_cpu_s(p)) is not None}
        return sum(self.end_cpu[p] - self.start_cpu[p] for p in self.end_cpu)


# --------------------------------------------------------------------------- messages


@dataclass
class Plan:
    """Every message of one run, in send order."""

    topics: list[str]  # per pole
    pole_ids: list[str]
    pole_of: list[int]  # message -> pole index
    sched: list[float]  # message -> scheduled publish time (epoch s)
    ts_ms: list[int]
    lines: list[bytes]  # message -> payload + b"\n"
    sample_of: list[int]  # message -> sample index of its pole
    samples: list[list[list[tuple[str, str, float]]]]  # pole -> sample -> rows
    readings_per_message: int
    lamp_of: list[str]  # pole -> lamp device id

    @property
    def messages(self) -> int:
        return len(self.lines)

    @property
    def readings(self) -> int:
        return self.messages * self.readings_per_message


def build_site(poles: int) -> Any:
    from simulators.demo_site import demo_site

    return demo_site(poles)


def pole_samples(
    site: Any, per_message: int, variants: int
) -> tuple[list[list[bytes]], list[list[list[tuple[str, str, float]]]], list[str]]:
    """Per pole: `variants` pre-serialised device sections of exactly `per_message`
    readings (from the simulator's models), the matching rows, and the lamp id."""
    import orjson

    from simulators.model import site_models

    profile_of = {d.id: d.profile for p in site.poles for d in p.devices}
    models = site_models(site, transport=None)  # the meters are Modbus devices in the demo site
    if len(models) != len(site.poles):
        raise SystemExit("every pole needs simulated devices")
    fragments: list[list[bytes]] = []
    rows: list[list[list[tuple[str, str, float]]]] = []
    lamps: list[str] = []
    t_base = 1_790_000_000.0  # the values only; ts is set per message
    for model in models:
        frags, prow = [], []
        lamp = next(
            d.device_id for d in model.devices if profile_of[d.device_id] == "lamp-controller"
        )
        lamps.append(lamp)
        for v in range(variants):
            sampled = model.sample(t_base + 3600.0 * v * 24 / variants)
            order = sorted(
                sampled,
                key=lambda dev: (
                    DEVICE_ORDER.index(profile_of[dev])
                    if profile_of[dev] in DEVICE_ORDER
                    else len(DEVICE_ORDER)
                ),
            )
            section: dict[str, dict[str, Any]] = {}
            r: list[tuple[str, str, float]] = []
            for dev in order:
                for metric, value in sampled[dev].items():
                    if len(r) == per_message:
                        break
                    section.setdefault(dev, {})[metric] = value
                    r.append((dev, metric, float(value)))
            if len(r) != per_message:
                raise SystemExit(f"pole {model.pole_id}: only {len(r)} readings per message")
            if MARKER_METRIC not in section.get(lamp, {}):
                raise SystemExit(f"pole {model.pole_id}: message lacks {lamp}/{MARKER_METRIC}")
            frags.append(orjson.dumps(section))
            prow.append(r)
        fragments.append(frags)
        rows.append(prow)
    return fragments, rows, lamps


def build_plan(
    site: Any,
    prefix: str,
    *,
    rate: float,
    duration: float,
    per_message: int,
    t0: float,
    fragments: list[list[bytes]],
    rows: list[list[list[tuple[str, str, float]]]],
    lamps: list[str],
    variants: int,
) -> Plan:
    poles = len(site.poles)
    msg_rate = rate / per_message
    n = max(1, round(msg_rate * duration))
    pole_ids = [p.id for p in site.poles]
    topics = [f"{prefix}/{p}/telemetry" for p in pole_ids]
    last = [0] * poles
    seq = [0] * poles
    pole_of, sched, ts_ms, lines, sample_of = [], [], [], [], []
    for i in range(n):
        pole = i % poles
        s = t0 + i / msg_rate
        ms = max(int(s * 1000), last[pole] + 1)
        last[pole] = ms
        seq[pole] += 1
        var = (i // poles) % variants
        lines.append(b'{"ts":%d,"seq":%d,"devices":%s}\n' % (ms, seq[pole], fragments[pole][var]))
        pole_of.append(pole)
        sched.append(s)
        ts_ms.append(ms)
        sample_of.append(var)
    return Plan(topics, pole_ids, pole_of, sched, ts_ms, lines, sample_of, rows, per_message, lamps)


# --------------------------------------------------------------------------- database


def with_db(admin_url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(admin_url)._replace(path="/" + name))


def pg_connect(url: str, **kw: Any) -> Any:
    import psycopg

    return psycopg.connect(url, connect_timeout=10, **kw)


# --------------------------------------------------------------------------- gateway


def polegw_exe() -> str:
    beside = Path(sys.executable).parent / "polegw"
    if beside.exists():
        return str(beside)
    found = shutil.which("polegw")
    if not found:
        raise SystemExit("polegw is not installed in this Python's environment")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def histogram_quantiles(
    before: dict[str, float], after: dict[str, float], name: str, qs: tuple[float, ...]
) -> dict[float, float | None]:
    """Quantiles of a Prometheus histogram's increase, linear inside the bucket."""
    buckets = []
    for key, value in after.items():
        m = re.fullmatch(re.escape(name) + r'_bucket\{le="([^"]+)"\}', key)
        if m:
            le = math.inf if m.group(1) == "+Inf" else float(m.group(1))
            buckets.append((le, value - before.get(key, 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    out: dict[float, float | None] = {}
    for q in qs:
        if total <= 0:
            out[q] = None
            continue
        rank = q * total
        prev_le, prev_c = 0.0, 0.0
        out[q] = None
        for le, c in buckets:
            if c >= rank:
                if math.isinf(le):
                    out[q] = prev_le  # beyond the last finite bucket: a lower bound
                else:
                    frac = (rank - prev_c) / (c - prev_c) if c > prev_c else 1.0
                    out[q] = prev_le + (le - prev_le) * frac
                break
            prev_le, prev_c = le, c
    return out


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    port: int
    client_id: str
    log_path: Path
    profiler: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def metrics(self) -> dict[str, float]:
        status, body = http_get(self.port, "/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return parse_metrics(body)

    def stored(self) -> float:
        return self.metrics().get("polegw_readings_stored_total", 0.0)


def start_gateway(
    env_base: dict[str, str],
    db_url: str,
    prefix: str,
    client_id: str,
    mqtt_url: str,
    workdir: Path,
    extra_env: dict[str, str],
    cprofile: str | None,
) -> Gateway:
    port = free_port()
    env = dict(env_base)
    env.update(
        {
            "POLEGW_DATABASE_URL": db_url,
            "POLEGW_MQTT_URL": mqtt_url,
            "POLEGW_MQTT_TOPIC_PREFIX": prefix,
            "POLEGW_MQTT_CLIENT_ID": client_id,
            "POLEGW_API_HOST": "127.0.0.1",
            "POLEGW_API_PORT": str(port),
            "POLEGW_SECRET_KEY": secrets.token_hex(32),
            "POLEGW_SPOOL_DIR": str(workdir / "spool"),
            "POLEGW_LOG_LEVEL": "INFO",
        }
    )
    env.update(extra_env)
    cmd = [polegw_exe(), "run"]
    if cprofile:
        cmd = [sys.executable, "-m", "cProfile", "-o", cprofile, *cmd]
    log_path = workdir / "gateway.log"
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    gw = Gateway(proc, port, client_id, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"gateway exited ({proc.returncode}); see {log_path}:\n"
                + log_path.read_text()[-3000:]
            )
        with contextlib.suppress(OSError, RuntimeError, http.client.HTTPException):
            if gw.metrics().get("polegw_mqtt_connected") == 1.0:
                return gw
        time.sleep(0.2)
    raise SystemExit(f"gateway not ready within 60 s; see {log_path}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def forget_session(host: str, port: int, client_id: str) -> None:
    """Remove the gateway's persistent session from the broker (clean start, expiry 0)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0
    with contextlib.suppress(Exception):
        c.connect(host, port, clean_start=True, properties=props)
        c.loop_start()
        time.sleep(0.3)
        c.disconnect()
        c.loop_stop()


def stop_gateway(gw: Gateway | None, mqtt_host: str, mqtt_port: int) -> None:
    """Stop the gateway (if started) and remove its session from the broker."""
    if gw is not None:
        stop_process(gw.proc)
        forget_session(mqtt_host, mqtt_port, gw.client_id)


def create_database(admin_url: str, dbname: str) -> None:
    from psycopg import sql

    with pg_connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(
                sql.Identifier(dbname)
            )
        )


def discard_run(admin_url: str, dbname: str, workdir: Path, gw: Gateway | None) -> None:
    """Drop the bench database and the work dir, but keep the work dir (and say
    where the log is) when the gateway failed."""
    from psycopg import sql

    with pg_connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )
    if gw is not None and gw.proc.returncode not in (0, None):
        print(f"gateway exit code {gw.proc.returncode}; log kept at {gw.log_path}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- load


class Publishers:
    """One `mosquitto_pub -l -q 1` per pole topic."""

    def __init__(
        self,
        host: str,
        port: int,
        topics: list[str],
        run_id: str,
        stdin_files: list[Path] | None = None,
    ) -> None:
        exe = shutil.which("mosquitto_pub")
        if not exe:
            raise SystemExit("mosquitto_pub is not on PATH (apt-get install mosquitto-clients)")
        self.procs: list[subprocess.Popen[bytes]] = []
        for i, topic in enumerate(topics):
            stdin: Any = subprocess.PIPE if stdin_files is None else stdin_files[i].open("rb")
            self.procs.append(
                subprocess.Popen(
                    [
                        exe,
                        "-h",
                        host,
                        "-p",
                        str(port),
                        "-q",
                        "1",
                        "-l",
                        "-t",
                        topic,
                        "-i",
                        f"{run_id}-pub-{i}",
                    ],
                    stdin=stdin,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    bufsize=0,
                )
            )
            if stdin_files is not None:
                stdin.close()
        self.fds = (
            [p.stdin.fileno() for p in self.procs if p.stdin is not None]
            if stdin_files is None
            else []
        )

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def close_inputs(self) -> None:
        for p in self.procs:
            if p.stdin:
                with contextlib.suppress(OSError):
                    p.stdin.close()

    def wait(self, timeout: float) -> list[str]:
        """Wait for every publisher to finish; their error output, if any."""
        deadline = time.monotonic() + timeout
        errors = []
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                errors.append(f"pid {p.pid}: killed after timeout")
            err = p.stderr.read().decode(errors="replace").strip() if p.stderr else ""
            if p.returncode or err:
                errors.append(f"pid {p.pid} rc={p.returncode} {err[:200]}")
        return errors


class Pacer(threading.Thread):
    """Writes each pre-built line to its pole's mosquitto_pub at the scheduled time."""

    def __init__(self, plan: Plan, fds: list[int]) -> None:
        super().__init__(name="pacer", daemon=True)
        self.plan, self.fds = plan, fds
        self.sent = 0
        self.lag: list[float] = []  # how late each tick's first message went out (s)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 (re-raised by the main thread)
            self.error = exc

    def _run(self) -> None:
        plan, fds, write = self.plan, self.fds, os.write
        sched, pole_of, lines = plan.sched, plan.pole_of, plan.lines
        n, i = plan.messages, 0
        while i < n:
            now = time.time()
            due = bisect.bisect_right(sched, now, lo=i)
            if due == i:
                time.sleep(min(0.002, max(0.0, sched[i] - now)))
                continue
            self.lag.append(now - sched[i])
            for j in range(i, due):
                write(fds[pole_of[j]], lines[j])
            i = due
            self.sent = i


class SnapshotPoller(threading.Thread):
    """Polls pg_current_snapshot() to date transaction commits (see module docstring)."""

    def __init__(self, url: str, every_s: float) -> None:
        super().__init__(name="snapshot-poller", daemon=True)
        self.url, self.every_s = url, every_s
        self.polls: list[tuple[float, float, int, frozenset[int]]] = []  # sent, got, xmax, xip
        self.stop_event = threading.Event()
        self.rtt: list[float] = []
        self.backend_pid: int | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        with pg_connect(self.url, autocommit=True) as conn:
            cur = conn.cursor()
            self.backend_pid = conn.info.backend_pid
            self.ready.set()
            q = (
                "SELECT pg_snapshot_xmax(s)::text::bigint,"
                " array(SELECT pg_snapshot_xip(s)::text::bigint) FROM pg_current_snapshot() s"
            )
            while not self.stop_event.is_set():
                t1 = time.time()
                cur.execute(q)
                xmax, xip = cur.fetchone()
                t2 = time.time()
                self.polls.append((t1, t2, xmax, frozenset(xip)))
                self.rtt.append(t2 - t1)
                time.sleep(max(0.0, self.every_s - (time.time() - t1)))

    def commit_time(self, xid32: int) -> tuple[float, float] | None:
        """(earliest, latest) wall time the transaction can have committed."""
        polls = self.polls
        if not polls:
            return None
        epoch = polls[0][2] >> 32
        xid = (epoch << 32) | xid32
        if xid > polls[-1][2] + (1 << 31):  # wrapped before the epoch changed
            xid -= 1 << 32

        def done(k: int) -> bool:
            return xid < polls[k][2] and xid not in polls[k][3]

        lo, hi = 0, len(polls) - 1
        if not done(hi):
            return None
        while lo < hi:  # first poll that sees it finished (monotonic)
            mid = (lo + hi) // 2
            if done(mid):
                hi = mid
            else:
                lo = mid + 1
        latest = polls[lo][1]
        earliest = polls[lo - 1][0] if lo > 0 else polls[lo][0] - self.every_s
        return earliest, latest


# --------------------------------------------------------------------------- phases


@dataclass
class LoadResult:
    rate_target: float
    duration: float
    messages: int
    readings: int
    offered_rps: float
    stored_rps: float
    window_s: float
    drained_s: float | None
    stored_total: int
    missing: int
    lat_p50: float | None
    lat_p99: float | None
    lat_max: float | None
    lat_resolution_s: float
    lat_samples: int
    hist_p50: float | None
    hist_p99: float | None
    pacer_lag_p99: float
    pacer_lag_max: float
    cpu: dict[str, float] = field(default_factory=dict)
    gateway_rss_mb: float = 0.0
    gateway_cpu_us_per_msg: float = 0.0
    gateway_cpu_total_s: float = 0.0
    publisher_errors: list[str] = field(default_factory=list)
    broker_drop_notices: int = 0
    batch_mean: float | None = None
    commit_mean_ms: float | None = None
    readings_per_message: int = 20

    def passed(self, p99_limit: float) -> bool:
        return (
            self.missing == 0
            and self.stored_rps >= 0.97 * self.offered_rps
            and self.lat_p99 is not None
            and self.lat_p99 <= p99_limit
        )


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))
    return values[k]


def bench_pg_pids(admin_url: str, dbname: str) -> list[int]:
    with pg_connect(admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s OR backend_type IN"
            " ('walwriter', 'checkpointer', 'background writer')",
            (dbname,),
        ).fetchall()
    return [r[0] for r in rows]


def run_load(
    args: argparse.Namespace,
    gw: Gateway,
    make_plan: Any,
    topics: list[str],
    db_url: str,
    admin_url: str,
    dbname: str,
    run_id: str,
    broker_pid: int | None,
    label: str,
) -> tuple[LoadResult, Plan]:
    """Publish a plan at its schedule through the gateway and measure."""
    with pg_connect(db_url) as conn:
        stored_before_db = conn.execute("SELECT count(*) FROM telemetry").fetchone()[0]
    pubs = Publishers(args.mqtt_host, args.mqtt_port, topics, f"{run_id}-{label}")
    time.sleep(1.0)  # let them connect
    plan = make_plan()
    poller = SnapshotPoller(db_url, SNAPSHOT_POLL_S)
    poller.start()
    poller.ready.wait(10)
    pacer = Pacer(plan, pubs.fds)
    t0 = plan.sched[0]
    if time.time() > t0 - 0.5:
        raise SystemExit("the plan's start passed while starting publishers; use a later t0")
    time.sleep(max(0.0, t0 - time.time() - 0.2))
    stored0 = gw.stored()
    pacer.start()
    warm_end, load_end = t0 + args.warmup, t0 + args.duration
    samples: list[tuple[float, float]] = []
    m_start: dict[str, float] = {}
    m_end: dict[str, float] = {}
    meters = {
        k: CpuMeter()
        for k in (
            "gateway",
            "broker",
            "postgres",
            "publishers",
            "bench script",
            "bench poller's backend",
        )
    }
    sys_start: dict[int, float] = {}
    sys_end: dict[int, float] = {}
    sent_start = sent_end = 0
    profiler: subprocess.Popen[bytes] | None = None
    profiled = False
    while True:
        now = time.time()
        if m_start == {} and now >= warm_end:
            m_start = gw.metrics()
            sent_start = pacer.sent
            meters["gateway"].start([gw.pid])
            meters["broker"].start([broker_pid] if broker_pid else [])
            meters["postgres"].start(
                [p for p in bench_pg_pids(admin_url, dbname) if p != poller.backend_pid]
            )
            meters["bench poller's backend"].start(
                [poller.backend_pid] if poller.backend_pid else []
            )
            meters["publishers"].start(pubs.pids)
            meters["bench script"].start([os.getpid()])
            sys_start = all_processes_cpu()
            if args.py_spy and not profiled:
                profiled = True
                spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
                profiler = subprocess.Popen(
                    [
                        spy,
                        "record",
                        "--pid",
                        str(gw.pid),
                        "--rate",
                        "200",
                        "--format",
                        "raw",
                        "--duration",
                        str(max(1, int(args.duration - args.warmup))),
                        "--output",
                        args.py_spy,
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            samples.append((time.time(), m_start.get("polegw_readings_stored_total", 0.0)))
        elif m_start and now >= load_end:
            m_end = gw.metrics()
            sent_end = pacer.sent
            sys_end = all_processes_cpu()
            cpu = {k: m.stop() for k, m in meters.items()}
            samples.append((time.time(), m_end.get("polegw_readings_stored_total", 0.0)))
            break
        elif m_start:
            samples.append((now, gw.stored()))
        if pacer.error:
            raise pacer.error
        time.sleep(0.5 if m_start else 0.05)
    pacer.join()
    pubs.close_inputs()
    # Drain: wait until everything published is stored, or progress stops.
    expected = plan.readings
    drained_s = None
    last_progress, last_val = time.time(), -1.0
    while True:
        val = gw.stored() - stored0
        if val >= expected:
            drained_s = time.time() - plan.sched[-1]
            break
        if val != last_val:
            last_val, last_progress = val, time.time()
        if time.time() - last_progress > args.drain_timeout:
            break
        time.sleep(0.1)
    errors = pubs.wait(30)
    time.sleep(0.2)
    poller.stop_event.set()
    poller.join()
    if profiler is not None:
        try:
            profiler.wait(30)
        except subprocess.TimeoutExpired:
            profiler.terminate()
    # Stored: verify the gateway's counter against the table.
    with pg_connect(db_url) as conn:
        stored_db = conn.execute("SELECT count(*) FROM telemetry").fetchone()[0] - stored_before_db
        lo_ms, hi_ms = plan.ts_ms[0], max(plan.ts_ms)
        marks = conn.execute(
            "SELECT device_id, (extract(epoch FROM ts) * 1000)::bigint, xmin::text::bigint"
            " FROM telemetry WHERE metric = %s AND ts BETWEEN %s AND %s",
            (
                MARKER_METRIC,
                datetime.fromtimestamp(lo_ms / 1000, UTC),
                datetime.fromtimestamp(hi_ms / 1000, UTC),
            ),
        ).fetchall()
    # Latency per message whose ts lies in the window.
    lamp_pole = {lamp: i for i, lamp in enumerate(plan.lamp_of)}
    in_window = {
        (plan.pole_of[j], plan.ts_ms[j])
        for j in range(plan.messages)
        if warm_end <= plan.sched[j] < load_end
    }
    commit_cache: dict[int, tuple[float, float] | None] = {}
    lat: list[float] = []
    widths: list[float] = []
    for device, ms, xid in marks:
        pole = lamp_pole.get(device)
        if pole is None or (pole, ms) not in in_window:
            continue
        if xid not in commit_cache:
            commit_cache[xid] = poller.commit_time(xid)
        ct = commit_cache[xid]
        if ct is None:
            continue
        lat.append((ct[0] + ct[1]) / 2 - ms / 1000)
        widths.append(ct[1] - ct[0])
    window = samples[-1][0] - samples[0][0]
    stored_rps = (samples[-1][1] - samples[0][1]) / window if window > 0 else 0.0
    offered_rps = (sent_end - sent_start) * plan.readings_per_message / window if window else 0.0
    hq = histogram_quantiles(m_start, m_end, "polegw_ingest_lag_seconds", (0.5, 0.99))
    busy = machine_cpu_between(sys_start, sys_end)
    cpu["machine (all processes)"] = busy
    # "other": everything not listed (other users of the machine); approximate (tick-based
    # counters, short-lived processes missed), so clamped at 0.
    cpu["other"] = max(0.0, busy - sum(v for k, v in cpu.items() if k != "machine (all processes)"))
    cpu_window = {k: v for k, v in cpu.items()}
    cpu_window["window_s"] = window
    b_sum = m_end.get("polegw_batch_readings_sum", 0) - m_start.get("polegw_batch_readings_sum", 0)
    b_cnt = m_end.get("polegw_batch_readings_count", 0) - m_start.get(
        "polegw_batch_readings_count", 0
    )
    c_sum = m_end.get("polegw_commit_seconds_sum", 0) - m_start.get("polegw_commit_seconds_sum", 0)
    return LoadResult(
        rate_target=args.rate if label == "main" else float(label.split("-")[-1]),
        duration=args.duration,
        messages=plan.messages,
        readings=plan.readings,
        offered_rps=offered_rps,
        stored_rps=stored_rps,
        window_s=window,
        drained_s=drained_s,
        stored_total=stored_db,
        missing=plan.readings - stored_db,
        lat_p50=pct(lat, 0.5),
        lat_p99=pct(lat, 0.99),
        lat_max=max(lat) if lat else None,
        lat_resolution_s=(statistics.median(widths) / 2) if widths else 0.0,
        lat_samples=len(lat),
        hist_p50=hq.get(0.5),
        hist_p99=hq.get(0.99),
        pacer_lag_p99=pct(pacer.lag, 0.99) or 0.0,
        pacer_lag_max=max(pacer.lag) if pacer.lag else 0.0,
        cpu=cpu_window,
        gateway_rss_mb=(proc_status_kb(gw.pid, "VmHWM") or 0) / 1024,
        gateway_cpu_us_per_msg=1e6
        * cpu["gateway"]
        / max(1.0, (samples[-1][1] - samples[0][1]) / plan.readings_per_message),
        gateway_cpu_total_s=proc_cpu_s(gw.pid) or 0.0,
        publisher_errors=errors,
        broker_drop_notices=broker_drops(args.broker_log, gw.client_id, plan.sched[0] - 2),
        batch_mean=b_sum / b_cnt if b_cnt else None,
        commit_mean_ms=1000 * c_sum / b_cnt if b_cnt else None,
        readings_per_message=plan.readings_per_message,
    ), plan


def broker_drops(log: str, client_id: str, since: float) -> int:
    """How many times mosquitto logged dropping outgoing messages for the client (-1: no log)."""
    try:
        with open(log, errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return -1
    n = 0
    for line in lines:
        stamp, _, text = line.partition(": ")
        if text.startswith("Outgoing messages are being dropped for client " + client_id + "."):
            with contextlib.suppress(ValueError):
                if float(stamp) >= since:
                    n += 1
    return n


def bare_subscriber_main(argv: list[str]) -> None:
    """Child process: receive QoS 1 messages with bare paho; print "t count cpu" every 0.25 s."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    p = argparse.ArgumentParser()
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--topic")
    p.add_argument("--receive-maximum", type=int)
    p.add_argument("--client-id")
    a = p.parse_args(argv)
    count = [0]

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        count[0] += 1

    subscribed = threading.Event()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=a.client_id, protocol=paho.MQTTv5)
    c.on_message = on_message
    c.on_subscribe = lambda *x: subscribed.set()
    c.on_connect = lambda client, u, f, rc, pr: client.subscribe(a.topic, qos=1)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.ReceiveMaximum = a.receive_maximum
    props.SessionExpiryInterval = 0
    c.connect(a.host, a.port, clean_start=True, properties=props)

    def reporter() -> None:
        subscribed.wait(30)
        print("ready", flush=True)
        pid = os.getpid()
        while True:  # ends with the process (stdin closed by the parent)
            print(f"{time.time():.4f} {count[0]} {proc_cpu_s(pid)}", flush=True)
            time.sleep(0.25)

    def stopper() -> None:
        sys.stdin.read()
        c.disconnect()

    threading.Thread(target=reporter, daemon=True).start()
    threading.Thread(target=stopper, daemon=True).start()
    c.loop_forever()


class BareSubscriber:
    """The bare subscriber process and its (time, messages, cpu) timeline."""

    def __init__(
        self, args: argparse.Namespace, topic: str, client_id: str, receive_max: int
    ) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--_bare-subscriber",
                "--host",
                args.mqtt_host,
                "--port",
                str(args.mqtt_port),
                "--topic",
                topic,
                "--receive-maximum",
                str(receive_max),
                "--client-id",
                client_id,
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("bare subscriber did not start")
        self.timeline: list[tuple[float, int, float]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            t, n, cpu = line.split()
            self.timeline.append((float(t), int(n), float(cpu)))

    def at(self, when: float) -> tuple[float, int, float]:
        """The last report at or before `when`."""
        k = bisect.bisect_right([x[0] for x in self.timeline], when) - 1
        return self.timeline[max(0, k)]

    def close(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def bare_subscriber_limit(
    args: argparse.Namespace,
    make_plan: Any,
    topics: list[str],
    prefix: str,
    run_id: str,
    receive_maximum: int,
    per_message: int,
) -> dict[str, Any]:
    """Offer the same messages, paced exactly as for the gateway, at rising rates; the limit
    is the highest rate the bare subscriber received in a step's measured window."""
    sub = BareSubscriber(args, f"{prefix}/+/telemetry", f"{run_id}-bare-sub", receive_maximum)
    steps = []
    try:
        for mult in args.sub_steps:
            rate = args.rate * mult
            pubs = Publishers(args.mqtt_host, args.mqtt_port, topics, f"{run_id}-sub{mult:g}")
            time.sleep(1.0)
            plan = make_plan(rate, args.sub_step_s)
            pacer = Pacer(plan, pubs.fds)
            time.sleep(max(0.0, plan.sched[0] - time.time()))
            pacer.start()
            w0, w1 = plan.sched[0] + 1.5, plan.sched[0] + args.sub_step_s
            time.sleep(max(0.0, w0 - time.time()))
            sent0, sys0 = pacer.sent, all_processes_cpu()
            time.sleep(max(0.0, w1 - time.time()))
            sent1, sys1 = pacer.sent, all_processes_cpu()
            time.sleep(0.3)
            a, b = sub.at(w0), sub.at(w1)
            pacer.join()
            pubs.close_inputs()
            pubs.wait(30)
            span = b[0] - a[0]
            got = (b[1] - a[1]) / span if span > 0 else 0.0
            offered = (sent1 - sent0) / (w1 - w0)
            step = {
                "target_readings_s": rate,
                "offered_msgs_s": offered,
                "received_msgs_s": got,
                "received_readings_s": got * per_message,
                "subscriber_cpu_pct": 100 * (b[2] - a[2]) / span if span > 0 else 0.0,
                "cpu_us_per_msg": 1e6 * (b[2] - a[2]) / max(1, b[1] - a[1]),
                "machine_busy_pct": 100 * machine_cpu_between(sys0, sys1) / (w1 - w0),
                "pacer_lag_max_s": max(pacer.lag) if pacer.lag else 0.0,
            }
            steps.append(step)
            print(
                f"  step {rate:>9,.0f} readings/s: offered {offered:7,.0f} msgs/s, received"
                f" {got:7,.0f} msgs/s, subscriber CPU {step['subscriber_cpu_pct']:3.0f} %"
                f" ({step['cpu_us_per_msg']:.0f} µs/msg), machine {step['machine_busy_pct']:3.0f} %"
                f" of one core",
                flush=True,
            )
            if got < 0.97 * offered:
                break
            time.sleep(1.0)  # let the subscriber drain before the next step
    finally:
        sub.close()
    best = max(steps, key=lambda x: x["received_msgs_s"])
    saturated = best["received_msgs_s"] < 0.97 * best["offered_msgs_s"]
    return {
        "msgs_s": best["received_msgs_s"],
        "readings_s": best["received_readings_s"],
        "saturated": saturated,
        "cpu_us_per_msg": statistics.median(x["cpu_us_per_msg"] for x in steps),
        "steps": steps,
    }


def bare_copy_limit(db_url: str, plan: Plan, batch: int) -> dict[str, Any]:
    from psycopg import sql

    rows = []
    for j in range(plan.messages):
        ts = datetime.fromtimestamp(plan.ts_ms[j] / 1000, UTC)
        for dev, metric, value in plan.samples[plan.pole_of[j]][plan.sample_of[j]]:
            rows.append((ts, dev, metric, value, 0))
    table = "telemetry_copy_limit"
    with pg_connect(db_url) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
        conn.execute(
            sql.SQL("CREATE TABLE {} (LIKE telemetry INCLUDING ALL)").format(sql.Identifier(table))
        )
        conn.commit()
        stmt = sql.SQL(
            "COPY {} (ts, device_id, metric, value, quality) FROM STDIN (FORMAT BINARY)"
        ).format(sql.Identifier(table))
        types = ["timestamptz", "text", "text", "float8", "int2"]
        cpu0 = proc_cpu_s(os.getpid()) or 0.0
        t0 = time.perf_counter()
        for k in range(0, len(rows), batch):
            with conn.cursor() as cur, cur.copy(stmt) as copy:
                copy.set_types(types)
                for row in rows[k : k + batch]:
                    copy.write_row(row)
            conn.commit()
        elapsed = time.perf_counter() - t0
        cpu1 = proc_cpu_s(os.getpid()) or 0.0
        n = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        ).fetchone()[0]
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
        conn.commit()
    return {
        "rows": n,
        "seconds": elapsed,
        "rows_s": n / elapsed,
        "batch": batch,
        "client_cpu_pct": 100 * (cpu1 - cpu0) / elapsed,
    }


# --------------------------------------------------------------------------- report


def fmt_s(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 1000:.0f} ms"


def print_load(r: LoadResult, title: str) -> None:
    per_core = 1e6 / max(1e-9, r.gateway_cpu_us_per_msg) * r.readings_per_message
    drained = "did not drain" if r.drained_s is None else f"{r.drained_s:.2f} s"
    out = [
        f"\n== {title}",
        f"  offered                 {r.offered_rps:12,.0f} readings/s"
        f"  ({r.offered_rps / r.readings_per_message:,.0f} msgs/s at target {r.rate_target:,.0f})",
        f"  sustained stored        {r.stored_rps:12,.0f} readings/s  (window {r.window_s:.1f} s)",
        f"  published / stored      {r.readings:,} / {r.stored_total:,}  (missing {r.missing:,})",
    ]
    if r.broker_drop_notices:
        notices = (
            "unreadable" if r.broker_drop_notices < 0 else f"{r.broker_drop_notices} notice(s)"
        )
        out.append(f"  broker log: {notices} 'Outgoing messages are being dropped' for the gateway")
    out += [
        f"  drained after last pub  {drained}",
        f"  latency publish->commit p50 {fmt_s(r.lat_p50)}  p99 {fmt_s(r.lat_p99)}"
        f"  max {fmt_s(r.lat_max)}  ({r.lat_samples:,} msgs, ±{r.lat_resolution_s * 1000:.1f} ms)",
        f"  gateway histogram       p50 {fmt_s(r.hist_p50)}  p99 {fmt_s(r.hist_p99)}"
        "  (bucket interpolation)",
        f"  pacer lag               p99 {fmt_s(r.pacer_lag_p99)}  max {fmt_s(r.pacer_lag_max)}",
    ]
    if r.batch_mean is not None:
        out.append(
            f"  batches                 mean {r.batch_mean:,.0f} readings,"
            f" commit mean {r.commit_mean_ms:.1f} ms"
        )
    w = r.cpu.get("window_s", 1.0)
    out.append(f"  CPU in window ({w:.1f} s, % of one core):")
    out += [
        f"    {k:24s} {v:7.2f} s  {100 * v / w:6.1f} %" for k, v in r.cpu.items() if k != "window_s"
    ]
    out += [
        f"  gateway CPU per message {r.gateway_cpu_us_per_msg:.0f} µs"
        f" (= {per_core:,.0f} readings/s per core-second)",
        f"  gateway CPU total       {r.gateway_cpu_total_s:.2f} s since start;"
        f" max RSS {r.gateway_rss_mb:.0f} MB",
    ]
    if r.publisher_errors:
        out.append(f"  publisher errors: {r.publisher_errors[:5]}")
    print("\n".join(out))


# --------------------------------------------------------------------------- main


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_bare-subscriber":
        bare_subscriber_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rate", type=float, default=50_000, help="target readings/s (default 50000)")
    ap.add_argument("--duration", type=float, default=30, help="seconds of load (default 30)")
    ap.add_argument("--warmup", type=float, default=5, help="seconds not measured (default 5)")
    ap.add_argument("--poles", type=int, default=200, help="poles in the site (default 200)")
    ap.add_argument("--readings-per-message", type=int, default=20)
    ap.add_argument(
        "--admin-url", default=os.environ.get("POLEGW_BENCH_ADMIN_URL", DEFAULT_ADMIN_URL)
    )
    ap.add_argument("--mqtt-host", default="127.0.0.1")
    ap.add_argument("--mqtt-port", type=int, default=1883)
    ap.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra setting for the gateway, e.g. POLEGW_BATCH_MAX_READINGS=10000",
    )
    ap.add_argument("--skip-limits", action="store_true", help="gateway phase only")
    ap.add_argument(
        "--find-max",
        action="store_true",
        help="ramp the rate from --rate by --step until the gateway stops keeping up",
    )
    ap.add_argument("--step", type=float, default=1.2, help="find-max: rate multiplier per step")
    ap.add_argument("--max-p99", type=float, default=1.0, help="find-max: p99 limit in seconds")
    ap.add_argument("--drain-timeout", type=float, default=15.0)
    ap.add_argument(
        "--broker-log",
        default="/var/log/mosquitto/mosquitto.log",
        help="mosquitto's log, read for 'messages are being dropped' notices",
    )
    ap.add_argument(
        "--sub-steps",
        type=lambda v: [float(x) for x in v.split(",")],
        default=[1, 1.5, 2, 3, 4, 6],
        help="limit (a): offered rates as multiples of --rate (default 1,1.5,2,3,4,6)",
    )
    ap.add_argument("--sub-step-s", type=float, default=6.0, help="limit (a): seconds per step")
    ap.add_argument("--py-spy", metavar="FILE", help="py-spy record the gateway (collapsed stacks)")
    ap.add_argument("--cprofile", metavar="FILE", help="run the gateway under cProfile")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the database and work dir")
    args = ap.parse_args()
    if args.warmup >= args.duration:
        raise SystemExit("--warmup must be shorter than --duration")

    extra_env = dict(kv.split("=", 1) for kv in args.gateway_env)
    batch = int(
        extra_env.get(
            "POLEGW_BATCH_MAX_READINGS", os.environ.get("POLEGW_BATCH_MAX_READINGS", 5000)
        )
    )
    receive_max = int(extra_env.get("POLEGW_MQTT_RECEIVE_MAXIMUM", 2000))
    run_id = "bench-" + secrets.token_hex(4)
    prefix = f"{run_id}/poles"
    dbname = "polegw_bench_" + run_id.split("-")[1]
    db_url = with_db(args.admin_url, dbname)
    mqtt_url = f"mqtt://{args.mqtt_host}:{args.mqtt_port}"
    workdir = Path(tempfile.mkdtemp(prefix=f"polegw-{run_id}-"))
    env_base = {k: v for k, v in os.environ.items() if not k.startswith("POLEGW_")}
    broker_pid = find_broker_pid(args.mqtt_port)

    print(
        f"polegw ingest bench {run_id}: {os.cpu_count()} CPUs, load average "
        f"{Path('/proc/loadavg').read_text().split()[:3]}, broker pid {broker_pid},"
        f" work dir {workdir}"
    )
    create_database(args.admin_url, dbname)
    gw: Gateway | None = None
    results: dict[str, Any] = {"run_id": run_id, "args": vars(args)}
    try:
        from simulators.demo_site import site_to_yaml

        site = build_site(args.poles)
        site_file = workdir / "site.yaml"
        site_file.write_text(site_to_yaml(site), encoding="utf-8")
        env = dict(env_base, POLEGW_DATABASE_URL=db_url, POLEGW_LOG_LEVEL="WARNING")
        subprocess.run(
            [polegw_exe(), "migrate"], env=env, check=True, cwd=workdir, stdout=subprocess.DEVNULL
        )
        subprocess.run(
            [polegw_exe(), "site", "import", str(site_file)],
            env=env,
            check=True,
            cwd=workdir,
            stdout=subprocess.DEVNULL,
        )
        t = time.perf_counter()
        variants = 4
        fragments, rows, lamps = pole_samples(site, args.readings_per_message, variants)
        print(
            f"site: {args.poles} poles imported;"
            f" device samples built in {time.perf_counter() - t:.1f} s"
        )

        gw = start_gateway(
            env_base,
            db_url,
            prefix,
            f"polegw-{run_id}",
            mqtt_url,
            workdir,
            extra_env,
            args.cprofile,
        )
        print(f"gateway pid {gw.pid} on API port {gw.port}, topic prefix {prefix}")

        topics = [f"{prefix}/{p.id}/telemetry" for p in site.poles]

        def make_plan(rate: float, duration: float) -> Plan:
            # Building takes a few µs a message; start once it is done.
            t0 = time.time() + 1.0 + 2e-5 * rate * duration / args.readings_per_message
            return build_plan(
                site,
                prefix,
                rate=rate,
                duration=duration,
                per_message=args.readings_per_message,
                t0=t0,
                fragments=fragments,
                rows=rows,
                lamps=lamps,
                variants=variants,
            )

        steps: list[LoadResult] = []
        if args.find_max:
            rate = args.rate
            best: LoadResult | None = None
            while True:
                r, _ = run_load(
                    args,
                    gw,
                    lambda rate=rate: make_plan(rate, args.duration),
                    topics,
                    db_url,
                    args.admin_url,
                    dbname,
                    run_id,
                    broker_pid,
                    f"step-{rate:.0f}",
                )
                steps.append(r)
                print_load(
                    r,
                    f"find-max step: target {rate:,.0f} readings/s"
                    f" -> {'PASS' if r.passed(args.max_p99) else 'FAIL'}",
                )
                if not r.passed(args.max_p99):
                    break
                best = r
                rate *= args.step
            results["find_max"] = {
                "max_sustained_target": best.rate_target if best else None,
                "steps": [vars(s) for s in steps],
            }
            found = f"below {args.rate:,.0f}" if best is None else f"{best.rate_target:,.0f}"
            print(f"\nmax sustained target rate: {found} readings/s")
            main_result = best or steps[0]
            plan_for_limits = make_plan(args.rate, args.duration)
        else:
            main_result, plan = run_load(
                args,
                gw,
                lambda: make_plan(args.rate, args.duration),
                topics,
                db_url,
                args.admin_url,
                dbname,
                run_id,
                broker_pid,
                "main",
            )
            print_load(
                main_result,
                f"gateway: target {args.rate:,.0f} readings/s for {args.duration:g} s,"
                f" {args.poles} poles, {args.readings_per_message} readings/message",
            )
            plan_for_limits = plan
        results["gateway"] = vars(main_result)
        stop_gateway(gw, args.mqtt_host, args.mqtt_port)

        if not args.skip_limits:
            print(
                "\n== limit (a): bare paho subscriber (MQTT 5, QoS 1), same messages, same pacing,"
                " rising rate"
            )
            sub = bare_subscriber_limit(
                args, make_plan, topics, prefix, run_id, receive_max, args.readings_per_message
            )
            results["bare_subscriber"] = sub
            bound = "" if sub["saturated"] else "  (never saturated: a lower bound)"
            per_core = 1e6 / sub["cpu_us_per_msg"] * args.readings_per_message
            print(
                f"  limit: {sub['msgs_s']:,.0f} msgs/s"
                f" = {sub['readings_s']:,.0f} readings/s{bound};"
                f" {sub['cpu_us_per_msg']:.0f} µs CPU per message"
                f" (= {per_core:,.0f} readings/s per core)"
            )
            cp = bare_copy_limit(db_url, plan_for_limits, batch)
            results["bare_copy"] = cp
            print("\n== limit (b): bare binary COPY of the same rows into an identical table")
            print(
                f"  {cp['rows']:,} rows in {cp['seconds']:.2f} s: {cp['rows_s']:,.0f} rows/s"
                f" ({cp['batch']} rows per transaction; client CPU {cp['client_cpu_pct']:.0f} %)"
            )
            lower = min(sub["readings_s"], cp["rows_s"])
            ratio = main_result.stored_rps / lower
            results["ratio_to_lower_limit"] = ratio
            which = "bare subscriber" if sub["readings_s"] <= cp["rows_s"] else "bare COPY"
            print(
                f"\n== gateway sustained {main_result.stored_rps:,.0f} readings/s = {ratio:.0%}"
                f" of the lower limit ({lower:,.0f}/s, {which})"
            )
            if not args.find_max:
                print(
                    "   (at the offered rate; if the gateway kept up, its own limit is higher:"
                    " --find-max measures it)"
                )
            # CPU per message at the same offered rate (the subscriber's first step is
            # --rate, like the gateway phase): less disturbed by other load on the
            # machine than the throughput ratio, which depends on what was left for
            # the subscriber's highest steps.
            bare_us = sub["steps"][0]["cpu_us_per_msg"]
            gw_us = main_result.gateway_cpu_us_per_msg
            results["cpu_ratio_bare_to_gateway"] = bare_us / gw_us
            print(
                f"== CPU per message at {args.rate:,.0f} readings/s offered:"
                f" gateway {gw_us:.0f} µs,"
                f" bare subscriber {bare_us:.0f} µs; the gateway needs {gw_us / bare_us:.2f}x"
                f" the bare subscriber's CPU ({bare_us / gw_us:.0%} of its throughput per core)"
            )
        ok = main_result.stored_rps >= 0.97 * main_result.offered_rps and main_result.missing == 0
        print(
            f"   kept up with the offered {main_result.offered_rps:,.0f} readings/s:"
            f" {'yes' if ok else 'NO'}"
        )
    finally:
        stop_gateway(gw, args.mqtt_host, args.mqtt_port)
        if not args.keep:
            discard_run(args.admin_url, dbname, workdir, gw)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
