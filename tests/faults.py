"""Helpers for the fault-injection tests: a private Mosquitto that can be stopped and
started again, the gateway as a real process (start, kill, restart, memory), and a
QoS 1 publisher that records exactly which messages the broker acknowledged.

Every fault test reads its size from POLEGW_FAULT_SCALE (default 1: seconds in CI);
`scaled(n)` multiplies a CI-sized count by it, so the same test runs a longer
stream outside CI, e.g. `POLEGW_FAULT_SCALE=20 scripts/test tests/test_fault_broker.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def fault_scale() -> float:
    """POLEGW_FAULT_SCALE (default 1): how much longer than the CI size to run."""
    raw = os.environ.get("POLEGW_FAULT_SCALE", "1")
    try:
        scale = float(raw)
    except ValueError:
        raise ValueError(f"POLEGW_FAULT_SCALE must be a number, not {raw!r}") from None
    if scale <= 0:
        raise ValueError("POLEGW_FAULT_SCALE must be positive")
    return scale


def scaled(n: int, *, scale: float | None = None) -> int:
    """`n` (the CI size) times the fault scale, at least 1."""
    return max(1, round(n * (fault_scale() if scale is None else scale)))


Reading = tuple[str, str, datetime, float]  # device, metric, ts, value


def readings_of(messages: Iterable[tuple[str, bytes]]) -> set[Reading]:
    """The (device, metric, ts, value) of every reading in batch telemetry messages."""
    out: set[Reading] = set()
    for _, payload in messages:
        body = orjson.loads(payload)
        ts = datetime.fromisoformat(body["ts"])
        for device, values in body["devices"].items():
            for metric, value in values.items():
                out.add((device, metric, ts, float(value)))
    return out


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        raise RuntimeError("the fault tests need the mosquitto binary (apt install mosquitto)")
    return found


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies (Linux), so a
    killed test run leaves no broker or gateway behind. (The signal comes when the
    thread that started the child ends: start children from the test's thread.)"""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _end(proc: subprocess.Popen[bytes], sig: signal.Signals, timeout: float) -> None:
    """Send `sig` and wait up to `timeout` s for the process to end; SIGKILL after that."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class _Child:
    """A restartable child process (`_proc`, set by `start()`); `with` starts it
    and stops it at the end of the block."""

    _proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> int | None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class PrivateMosquitto(_Child):
    """A Mosquitto of this test's own on 127.0.0.1:`port` (default: a free one), with
    its configuration, persistence file and log in `directory`.

    `stop()` sends SIGTERM (Mosquitto saves its persistence file), `kill()` SIGKILL;
    `start()` again listens on the same port. `persistence=False` on a start makes
    it start without the saved state (and deletes the file), as a broker that lost
    its disk would.
    """

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        persistence: bool = True,
        max_queued_messages: int = 0,  # 0: no limit (the default, 1000, drops beyond it)
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.persistence = persistence
        self.max_queued_messages = max_queued_messages
        self.log = directory / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _config(self) -> Path:
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {data}/",
            "autosave_interval 3600",  # saved on SIGTERM; the tests never rely on autosave
            f"max_queued_messages {self.max_queued_messages}",
            "max_inflight_messages 0",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it switches to 'mosquitto', who cannot write here
        conf = self.directory / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, *, persistence: bool | None = None, timeout: float = 10.0) -> None:
        if self.running:
            raise RuntimeError("this mosquitto is already running")
        if persistence is not None:
            self.persistence = persistence
        if not self.persistence:
            (self.directory / "data" / "mosquitto.db").unlink(missing_ok=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self._config()
        with (self.directory / "mosquitto.stderr").open("ab") as err:
            self._proc = subprocess.Popen(
                [mosquitto_binary(), "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                preexec_fn=_die_with_parent,
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.port):
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start-up: {self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not listen within {timeout}s: {self.tail()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: Mosquitto closes every connection and saves its persistence file."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: nothing saved since the last autosave."""
        self._signal(signal.SIGKILL, 10.0)

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            _end(proc, sig, timeout)
        self._proc = None

    def tail(self, chars: int = 2000) -> str:
        parts = []
        for f in (self.log, self.directory / "mosquitto.stderr"):
            if f.exists():
                parts.append(f.read_text(errors="replace")[-chars:])
        return "\n".join(parts)


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a process (Linux /proc), None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def gateway_env(
    database_url: str,
    mqtt_url: str,
    prefix: str,
    *,
    api_port: int | None = None,
    client_id: str | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment for `python -m gateway run` in a test; `extra` keys are
    setting names without the POLEGW_ prefix (batch_max_delay_s="1.0")."""
    from tests.support import TEST_SECRET  # imports the whole gateway; only needed here

    env = {
        **os.environ,
        "POLEGW_DATABASE_URL": database_url,
        "POLEGW_MQTT_URL": mqtt_url,
        "POLEGW_MQTT_TOPIC_PREFIX": prefix,
        "POLEGW_MQTT_CLIENT_ID": client_id or f"fault-{secrets.token_hex(4)}",
        "POLEGW_MQTT_SESSION_EXPIRY_S": "600",
        "POLEGW_API_PORT": str(api_port or free_port()),
        "POLEGW_SECRET_KEY": TEST_SECRET,
        "POLEGW_LOG_LEVEL": "INFO",
    }
    for key, value in extra.items():
        env[f"POLEGW_{key.upper()}"] = value
    return env


class GatewayProcess(_Child):
    """`python -m gateway run` as a child process, its output appended to `log`.

    Restartable: `start()` after `kill()` or `stop()` runs a new process with the
    same environment (the same client id, so the same MQTT session). While it
    runs, a sampler thread records the process's peak RSS (`max_rss`, over every
    process started)."""

    def __init__(self, env: dict[str, str], log: Path, *, sample_every_s: float = 0.2) -> None:
        # Its own spool beside its log (kept across restarts, as a real spool is),
        # unless the test chose one: never the working directory's ./spool.
        self.env = {"POLEGW_SPOOL_DIR": str(log.with_name(f"{log.stem}-spool")), **env}
        self.log = log
        self.api_port = int(env["POLEGW_API_PORT"])
        self.max_rss = 0
        self.starts = 0
        self._sample_every_s = sample_every_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._sampler: threading.Thread | None = None
        self._sampling = threading.Event()

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        if self.running:
            raise RuntimeError("the gateway is already running")
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        self.starts += 1
        self._start_sampler(self._proc.pid)

    def _start_sampler(self, pid: int) -> None:
        self._stop_sampler()
        self._sampling.clear()

        def sample() -> None:
            while not self._sampling.is_set():
                rss = rss_bytes(pid)
                if rss is None:
                    return
                self.max_rss = max(self.max_rss, rss)
                self._sampling.wait(self._sample_every_s)

        self._sampler = threading.Thread(target=sample, name=f"rss-{pid}", daemon=True)
        self._sampler.start()

    def _stop_sampler(self) -> None:
        self._sampling.set()
        if self._sampler is not None:
            self._sampler.join(timeout=2)
            self._sampler = None

    def rss(self) -> int | None:
        """The running process's RSS now (None when not running)."""
        return rss_bytes(self._proc.pid) if self.running and self._proc is not None else None

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /readyz answers 200 (database and broker reachable)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise AssertionError(f"gateway exited during start-up:\n{self.tail()}")
            try:
                if httpx.get(f"{self.api}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"gateway not ready within {timeout}s:\n{self.tail()}")

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send `sig` and wait for the process to end."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(timeout=30)
        self._stop_sampler()

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (a clean shutdown: drain and disconnect), SIGKILL after `timeout`.
        Returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            _end(proc, signal.SIGTERM, timeout)
        self._stop_sampler()
        return proc.returncode

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of /metrics, e.g. metric("polegw_mqtt_reconnects_total")."""
        text = httpx.get(f"{self.api}/metrics", timeout=5).text
        return metric_value(text, name, labels)

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def metric_value(text: str, name: str, labels: str = "") -> float:
    """The value of `name{labels}` in a Prometheus text exposition (0 if absent)."""
    key = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        if sample == key:
            return float(value)
    return 0.0


class AckedPublisher:
    """A QoS 1 publisher that survives broker restarts: paho keeps unacknowledged
    messages and sends them again after it reconnects. `acked` holds the index of
    every message the broker acknowledged (PUBACK): the messages it accepted."""

    def __init__(self, mqtt_url: str, *, client_id: str | None = None) -> None:
        host_port = mqtt_url.split("://", 1)[1]
        host, _, port = host_port.rpartition(":")
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"fault-pub-{secrets.token_hex(4)}",
            clean_session=False,
        )
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self._host, self._port = host, int(port)
        self._lock = threading.Lock()
        self._index_of_mid: dict[int, int] = {}
        self._early: set[int] = set()  # PUBACKs that beat the mid bookkeeping
        self.acked: set[int] = set()
        self.published = 0
        self.client.on_publish = self._on_publish

    def _on_publish(
        self,
        _client: paho.Client,
        _userdata: object,
        mid: int,
        _rc: ReasonCode,
        _props: object,
    ) -> None:
        with self._lock:
            index = self._index_of_mid.pop(mid, None)
            if index is None:
                self._early.add(mid)
            else:
                self.acked.add(index)

    def __enter__(self) -> Self:
        self.client.connect(self._host, self._port, keepalive=5)
        self.client.loop_start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, index: int, topic: str, payload: bytes) -> None:
        """Publish message `index` at QoS 1 (queued by paho while disconnected)."""
        info = self.client.publish(topic, payload, qos=1)
        with self._lock:
            self.published += 1
            if info.mid in self._early:
                self._early.discard(info.mid)
                self.acked.add(index)
            else:
                self._index_of_mid[info.mid] = index

    def publish_all(self, messages: Iterable[tuple[str, bytes]], *, rate: float) -> None:
        """Publish at about `rate` messages a second, in the order given."""
        started = time.monotonic()
        for i, (topic, payload) in enumerate(messages):
            self.publish(i, topic, payload)
            ahead = started + (i + 1) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)

    def wait_all_acked(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.acked) == self.published:
                    return True
            time.sleep(0.05)
        return False


class TcpGate:
    """A TCP forwarder on 127.0.0.1:`port` to `host`:`target`, for an outage of a
    server the test shares with others (the PostgreSQL of the test run):
    `close()` cuts every connection and stops listening, as a stopped server
    would; `open()` listens again on the same port; `stall()` accepts and never
    answers."""

    def __init__(self, host: str, target: int) -> None:
        self.host, self.target = host, target
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def is_open(self) -> bool:
        return self._server is not None

    async def open(self) -> None:
        if self._server is not None:
            await self.close()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stall(self) -> None:
        """Cut every connection, then accept new ones and never answer (a server
        that hangs, or a network that drops packets)."""
        if self._server is not None:
            await self.close()
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", self.port)

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        with contextlib.suppress(OSError, ConnectionError):
            await reader.read()
        self._writers.discard(writer)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()
        self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


def through(url: str, port: int) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, f"{user}127.0.0.1:{port}", *parts[2:]))


@contextlib.asynccontextmanager
async def gated(database_url: str, *, opened: bool = True) -> AsyncIterator[tuple[TcpGate, str]]:
    """A TcpGate in front of `database_url`'s server (open, unless `opened` is
    False), and the URL of the same database through it."""
    parts = urlsplit(database_url)
    gate = TcpGate(parts.hostname or "127.0.0.1", parts.port or 5432)
    if opened:
        await gate.open()
    try:
        yield gate, through(database_url, gate.port)
    finally:
        if gate.is_open:
            await gate.close()
