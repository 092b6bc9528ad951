"""Device identity on a real Mosquitto started with the files `polegw broker config`
writes: anonymous and wrong secrets refused, a pole confined to its own topics (end
to end through the gateway), revoke and rotate applied by SIGHUP, TLS with the
site's private CA and with client certificates."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from typer.testing import CliRunner

from gateway.cli import app
from gateway.core.broker_access import (
    Grant,
    Identity,
    Service,
    check_pole_username,
    mosquitto_hash,
    mosquitto_verify,
    render_acl,
)
from gateway.core.site import PoleSpec, SiteSpec
from gateway.errors import ConfigError
from simulators.mqtt_poles import run_poles
from tests.faults import GatewayProcess, PrivateMosquitto, free_port, gateway_env
from tests.support import (
    count,
    eventually,
    gateway,
    gateway_settings,
    prepare_database_sync,
    small_site,
    telemetry_message,
    wait_for_port,
)

PREFIX = "poles"
runner = CliRunner()


def cli(database_url: str, *args: str) -> str:
    """Run `polegw …`; returns standard output, fails the test on a non-zero exit."""
    env = {"POLEGW_DATABASE_URL": database_url, "POLEGW_MQTT_TOPIC_PREFIX": PREFIX}
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == 0, f"polegw {' '.join(args)}: {result.output}"
    return result.stdout


class SecuredMosquitto(PrivateMosquitto):
    """A private Mosquitto whose only security is the generated configuration; its
    plain listener (`port`) is on loopback, the TLS ones come from polegw.conf."""

    def __init__(self, directory: Path, conf_dir: Path) -> None:
        super().__init__(directory, persistence=False)
        self.conf_dir = conf_dir

    def _config(self) -> Path:
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"include_dir {self.conf_dir}",
            "persistence false",
            f"log_dest file {self.log}",
            "log_type all",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        conf = self.directory / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads its configuration, password and ACL files."""
        assert self._proc is not None
        mark = self.log.read_text(errors="replace").count("Reloading config")
        self._proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while self.log.read_text(errors="replace").count("Reloading config") <= mark:
            assert time.monotonic() < deadline, self.tail()
            time.sleep(0.02)
        time.sleep(0.2)  # the reload runs in the broker's loop after the log line


@dataclass
class Site:
    database_url: str
    out: Path
    certs: Path
    broker: SecuredMosquitto
    tls_port: int
    x509_port: int
    secrets: dict[str, str]

    def rewrite_and_reload(self) -> None:
        cli(
            self.database_url, "broker", "config", "--out", str(self.out),
            "--tls-port", str(self.tls_port), "--x509-port", str(self.x509_port),
        )  # fmt: skip
        self.broker.reload()


def site_spec() -> SiteSpec:
    base = small_site()  # P0001..P0003 with devices
    return SiteSpec(
        tenants=base.tenants, poles=[*base.poles, PoleSpec(id="P0004"), PoleSpec(id="P0005")]
    )


@pytest.fixture(scope="module")
def site(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    prepare_database_sync(database_url, site_spec())
    root = tmp_path_factory.mktemp("broker")
    out, certs = root / "polegw", root / "polegw" / "certs"
    keys: dict[str, str] = {}
    for pole in ("P0001", "P0002", "P0004", "P0005"):
        keys[pole] = cli(database_url, "pole", "credentials", "issue", pole).strip()
    for service in ("gateway", "simulators", "monitor"):
        secret_file = root / f"{service}.secret"
        cli(
            database_url,
            "broker",
            "credentials",
            "issue",
            service,
            "--secret-file",
            str(secret_file),
        )
        keys[f"polegw-{service}"] = secret_file.read_text().strip()
    cli(
        database_url, "broker", "certs", "--out", str(certs),
        "--server-name", "localhost", "--server-name", "127.0.0.1", "--pole", "P0003",
    )  # fmt: skip
    broker = SecuredMosquitto(root / "mosquitto", out)
    s = Site(database_url, out, certs, broker, free_port(), free_port(), keys)
    cli(
        database_url, "broker", "config", "--out", str(out),
        "--tls-port", str(s.tls_port), "--x509-port", str(s.x509_port),
    )  # fmt: skip
    with broker:
        yield s


# ------------------------------------------------------------------ MQTT helpers


class Client:
    """A paho MQTT 5 client that records CONNACK, disconnections and messages."""

    def __init__(self, user: str | None, password: str | None = None) -> None:
        self.paho = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"sec-{user}-{secrets.token_hex(3)}",
            protocol=paho.MQTTv5,
        )
        if user is not None:
            self.paho.username_pw_set(user, password)
        self.connack: object = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.messages: list[tuple[str, bytes]] = []
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = lambda *_a: self.disconnected.set()
        self.paho.on_message = lambda _c, _u, m: self.messages.append((m.topic, bytes(m.payload)))

    def _on_connect(self, _c: object, _u: object, _f: object, rc: object, _p: object) -> None:
        self.connack = rc
        self.connected.set()

    def connect(self, port: int, tls: ssl.SSLContext | None = None) -> object:
        """Connect and wait for CONNACK; returns its reason code (0 = accepted)."""
        if tls is not None:
            self.paho.tls_set_context(tls)
        self.paho.connect("127.0.0.1", port)
        self.paho.loop_start()
        assert self.connected.wait(10), "no CONNACK"
        return getattr(self.connack, "value", self.connack)

    def publish(self, topic: str, payload: bytes) -> int:
        info = self.paho.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        return info.rc

    def subscribe(self, topic: str) -> list[int]:
        got: list[int] = []
        done = threading.Event()

        def on_subscribe(
            _c: paho.Client, _u: object, _m: int, codes: list[ReasonCode], _p: Properties
        ) -> None:
            got.extend(int(c.value) for c in codes)
            done.set()

        self.paho.on_subscribe = on_subscribe
        self.paho.subscribe(topic, qos=1)
        assert done.wait(10), "no SUBACK"
        return got

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


def ca_context(site: Site, client: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(site.certs / "ca.crt"))
    if client is not None:
        ctx.load_cert_chain(
            site.certs / "clients" / f"{client}.crt", site.certs / "clients" / f"{client}.key"
        )
    return ctx


# MQTT 5 reason codes of a refused login: "bad user name or password" (134) or,
# as Mosquitto 2.0 answers a wrong password, "not authorized" (135).
REFUSED = (134, 135)


# ------------------------------------------------------------------ the tests


def test_our_hash_is_mosquittos_format() -> None:
    """mosquitto_passwd's own `$7$` hash verifies with ours, and ours with the broker
    (every connection test below logs in with hashes we wrote)."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(tool).exists():
        pytest.skip("mosquitto_passwd is not installed; the broker tests cover the format")
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "pw"
        subprocess.run([tool, "-c", "-b", str(f), "alice", "s3cret-value"], check=True)
        stored = f.read_text().strip().split(":", 1)[1]
    assert stored.startswith("$7$101$")
    assert mosquitto_verify(stored, "s3cret-value")
    assert not mosquitto_verify(stored, "s3cret-valuf")
    ours = mosquitto_hash("s3cret-value")
    assert ours.split("$")[:3] == stored.split("$")[:3]
    assert len(ours) == len(stored)


def test_anonymous_and_wrong_secret_are_refused(site: Site) -> None:
    anon = Client(None)
    assert anon.connect(site.broker.port) in REFUSED
    anon.close()
    wrong = Client("P0001", site.secrets["P0001"][:-1] + "x")
    assert wrong.connect(site.broker.port) in REFUSED
    wrong.close()
    right = Client("P0001", site.secrets["P0001"])
    assert right.connect(site.broker.port) == 0
    right.close()


def test_a_pole_cannot_read_another_poles_commands(site: Site) -> None:
    gw = Client("polegw-gateway", site.secrets["polegw-gateway"])
    a = Client("P0001", site.secrets["P0001"])
    b = Client("P0002", site.secrets["P0002"])
    try:
        for c in (gw, a, b):
            assert c.connect(site.broker.port) == 0
        assert a.subscribe(f"{PREFIX}/P0001/commands/+") == [1]
        # Mosquitto 2.0 may grant the subscription; the ACL is applied to every
        # message it would deliver, so B receives nothing of A's.
        b.subscribe(f"{PREFIX}/P0001/commands/+")
        b.subscribe(f"{PREFIX}/+/commands/+")
        b.subscribe(f"{PREFIX}/#")
        assert gw.publish(f"{PREFIX}/P0001/commands/P0001-lamp", b'{"id":"1"}') == 0
        deadline = time.monotonic() + 5
        while not a.messages and time.monotonic() < deadline:
            time.sleep(0.02)
        assert a.messages == [(f"{PREFIX}/P0001/commands/P0001-lamp", b'{"id":"1"}')]
        time.sleep(0.2)
        assert b.messages == []
        # A pole cannot command another, nor itself.
        assert a.subscribe(f"{PREFIX}/P0001/commands/+") == [1]
        a.messages.clear()
        a.publish(f"{PREFIX}/P0001/commands/P0001-lamp", b'{"id":"2"}')
        time.sleep(0.3)
        assert a.messages == []
    finally:
        for c in (gw, a, b):
            c.close()


def test_the_monitor_reads_and_cannot_publish(site: Site) -> None:
    mon = Client("polegw-monitor", site.secrets["polegw-monitor"])
    pole = Client("P0001", site.secrets["P0001"])
    try:
        assert mon.connect(site.broker.port) == 0
        assert pole.connect(site.broker.port) == 0
        assert mon.subscribe(f"{PREFIX}/#") == [1]
        pole.publish(f"{PREFIX}/P0001/events", b"{}")
        deadline = time.monotonic() + 5
        while not mon.messages and time.monotonic() < deadline:
            time.sleep(0.02)
        assert mon.messages == [(f"{PREFIX}/P0001/events", b"{}")]
        mon.messages.clear()
        mon.publish(f"{PREFIX}/P0001/status", b"{}")  # refused by the broker: not delivered
        time.sleep(0.3)
        assert mon.messages == []
    finally:
        mon.close()
        pole.close()


def test_revoked_pole_is_refused_and_the_others_stay_connected(site: Site) -> None:
    stays = Client("P0001", site.secrets["P0001"])
    revoked = Client("P0004", site.secrets["P0004"])
    try:
        assert stays.connect(site.broker.port) == 0
        assert revoked.connect(site.broker.port) == 0
        cli(site.database_url, "pole", "credentials", "revoke", "P0004")
        site.rewrite_and_reload()
        again = Client("P0004", site.secrets["P0004"])
        assert again.connect(site.broker.port) in REFUSED
        again.close()
        assert not stays.disconnected.is_set()
        assert stays.publish(f"{PREFIX}/P0001/events", b"{}") == 0
        # Mosquitto also cuts the revoked pole's open connection at the reload.
        assert revoked.disconnected.wait(5)
    finally:
        stays.close()
        revoked.close()


def test_rotated_secret_works_and_the_old_one_does_not(site: Site) -> None:
    old = site.secrets["P0005"]
    connected = Client("P0005", old)
    assert connected.connect(site.broker.port) == 0
    new = cli(site.database_url, "pole", "credentials", "rotate", "P0005").strip()
    assert new != old
    still = Client("P0005", old)  # until the broker reloads, the old secret works
    assert still.connect(site.broker.port) == 0
    still.close()
    site.rewrite_and_reload()
    # The connection made with the old secret is cut at the reload.
    assert connected.disconnected.wait(5)
    connected.close()
    refused = Client("P0005", old)
    assert refused.connect(site.broker.port) in REFUSED
    refused.close()
    accepted = Client("P0005", new)
    assert accepted.connect(site.broker.port) == 0
    accepted.close()


def test_tls_needs_the_sites_ca(site: Site) -> None:
    bare = Client("P0001", site.secrets["P0001"])
    with pytest.raises(ssl.SSLCertVerificationError):
        bare.connect(site.tls_port, ssl.create_default_context())
    bare.paho.loop_stop()
    # The x509 listener refuses a client without a certificate (under TLS 1.3 the
    # broker closes the connection after the handshake: no CONNACK ever comes).
    nocert = Client("P0001", site.secrets["P0001"])
    nocert.paho.tls_set_context(ca_context(site))
    try:
        nocert.paho.connect("127.0.0.1", site.x509_port)
        nocert.paho.loop_start()
        deadline = time.monotonic() + 5
        while not (nocert.connected.is_set() or nocert.disconnected.is_set()):
            assert time.monotonic() < deadline, "neither accepted nor refused"
            time.sleep(0.02)
        assert not nocert.connected.is_set() or nocert.connack != 0
    except (ssl.SSLError, OSError):
        pass
    finally:
        nocert.paho.loop_stop()


def _telemetry(pole: str, seq: int) -> bytes:
    return telemetry_message(
        pole, datetime.now(UTC) - timedelta(minutes=1) + timedelta(seconds=seq), seq
    )


async def test_gateway_over_mqtts_stores_own_readings_and_never_a_forgery(site: Site) -> None:
    """End to end: the gateway logs in over TLS with the site's CA; pole A's forged
    message for pole B is dropped by the broker and nothing is stored for B; a pole
    with a client certificate (no password) publishes its own readings."""
    url = f"mqtts://polegw-gateway:{site.secrets['polegw-gateway']}@localhost:{site.tls_port}"
    settings = gateway_settings(
        site.database_url, url, PREFIX, mqtt_ca_file=site.certs / "ca.crt", metrics_port=free_port()
    )
    a = Client("P0001", site.secrets["P0001"])
    cert_pole = Client("P0003")  # no password: the certificate is its identity
    lamp_rows = (
        "SELECT count(*) FROM telemetry t JOIN devices d ON d.id = t.device_id WHERE d.pole_id = %s"
    )
    async with gateway(settings):
        assert a.connect(site.tls_port, ca_context(site)) == 0
        assert cert_pole.connect(site.x509_port, ca_context(site, "P0003")) == 0
        try:
            a.publish(f"{PREFIX}/P0002/telemetry", _telemetry("P0002", 1))  # forged
            a.publish(f"{PREFIX}/P0001/telemetry", _telemetry("P0001", 2))  # after it
            cert_pole.publish(f"{PREFIX}/P0003/telemetry", _telemetry("P0003", 3))
            await eventually(
                lambda: (
                    count(site.database_url, lamp_rows, "P0001") == 8
                    and count(site.database_url, lamp_rows, "P0003") == 8
                ),
                what="P0001's and P0003's readings",
            )
            assert count(site.database_url, lamp_rows, "P0002") == 0
            assert count(site.database_url, "SELECT count(*) FROM dead_letters") == 0
            # The gateway's metrics port answers without login (whoever reaches it).
            assert settings.metrics_port is not None
            await wait_for_port(settings.metrics_port)
            internals = f"http://127.0.0.1:{settings.metrics_port}"
            async with httpx.AsyncClient(base_url=internals) as http:
                metrics = await http.get("/metrics")
                assert metrics.status_code == 200
                assert "polegw_readings_stored_total" in metrics.text
                assert (await http.get("/api/v1/poles")).status_code == 404
        finally:
            a.close()
            cert_pole.close()


def test_site_import_says_how_to_provision_new_poles(site: Site, tmp_path: Path) -> None:
    yaml = tmp_path / "site.yaml"
    yaml.write_text("poles:\n  - id: P0009\n  - id: P0001\n")
    out = cli(site.database_url, "site", "import", str(yaml))
    assert "1 poles have no MQTT credential yet (P0009)" in out
    assert "polegw pole credentials issue POLE_ID" in out
    cli(site.database_url, "pole", "credentials", "issue", "P0009")
    assert "no MQTT credential" not in cli(site.database_url, "site", "import", str(yaml))


def test_credential_commands_refuse_with_one_line(site: Site) -> None:
    env = {"POLEGW_DATABASE_URL": site.database_url}

    def refused(*args: str) -> str:
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        return lines[0]

    assert "no pole 'P9999'" in refused("pole", "credentials", "issue", "P9999")
    assert "`rotate` replaces it" in refused("pole", "credentials", "issue", "P0001")
    assert "no active secret" in refused("pole", "credentials", "rotate", "P0002-lamp")
    assert "no credential to revoke" in refused("pole", "credentials", "revoke", "P0002-lamp")
    assert "--server-name, --pole or --client" in refused("broker", "certs", "--out", "/tmp/x")
    nowhere = "/nonexistent-dir/secret"
    assert "cannot write there" in refused(
        "pole", "credentials", "issue", "P0003", "--secret-file", nowhere
    )
    assert "cannot write there" in refused(
        "pole", "credentials", "rotate", "P0001", "--secret-file", nowhere
    )
    # Nothing was issued or rotated.
    changed = (
        "SELECT count(*) FROM mqtt_credentials WHERE (username = 'P0003'"
        " AND password_hash IS NOT NULL) OR (username = 'P0001' AND rotated_at IS NOT NULL)"
    )
    assert count(site.database_url, changed) == 0
    # Revoking twice is not an error; issuing after a revoke starts afresh.
    cli(site.database_url, "pole", "credentials", "revoke", "P0002")
    cli(site.database_url, "pole", "credentials", "revoke", "P0002")
    assert cli(site.database_url, "pole", "credentials", "issue", "P0002").strip()


def test_broker_config_is_idempotent(site: Site) -> None:
    site.rewrite_and_reload()
    before = {f: (site.out / f).read_text() for f in ("passwd", "acl", "polegw.conf")}
    site.rewrite_and_reload()
    assert {f: (site.out / f).read_text() for f in ("passwd", "acl", "polegw.conf")} == before
    acl = before["acl"]
    assert "user P0001\ntopic write poles/P0001/telemetry\n" in acl
    assert "topic read poles/P0001/commands/+\n" in acl
    assert "user P0004\n" not in acl  # revoked: no rights at all
    assert "user polegw-gateway\n" in acl
    assert (site.out / "passwd").stat().st_mode & 0o077 == 0


def test_the_compose_brokers_conf_runs_with_the_generated_files(site: Site, tmp_path: Path) -> None:
    """deploy/mosquitto.conf with what deploy/provision.sh writes (paths moved from
    the container's to this test's): the broker starts, TLS and passwords apply."""
    conf_dir, data = tmp_path / "polegw", tmp_path / "data"
    data.mkdir()
    shutil.copytree(site.certs, conf_dir / "certs")
    tls, x509, plain = free_port(), free_port(), free_port()
    cli(
        site.database_url, "broker", "config", "--out", str(conf_dir),
        "--tls-port", str(tls), "--x509-port", str(x509), "--plain-port", str(plain),
    )  # fmt: skip
    deploy = (Path(__file__).parent.parent / "deploy" / "mosquitto.conf").read_text()
    assert "allow_anonymous true" not in deploy
    text = deploy.replace("/mosquitto/config/polegw", str(conf_dir)).replace(
        "/mosquitto/data/", f"{data}/"
    )
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(text + ("user root\n" if os.geteuid() == 0 else ""))
    log = tmp_path / "log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            ["/usr/sbin/mosquitto", "-c", str(conf)], stdout=err, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            monitor = Client("polegw-monitor", site.secrets["polegw-monitor"])
            try:
                assert monitor.connect(plain) == 0
                break
            except ConnectionRefusedError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            finally:
                monitor.close()
        anon = Client(None)
        assert anon.connect(plain) in REFUSED
        anon.close()
        pole = Client("P0001", site.secrets["P0001"])
        assert pole.connect(tls, ca_context(site)) == 0
        pole.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_gateway_crash_loses_nothing_with_authentication_on(site: Site, tmp_path: Path) -> None:
    """The crash test under authentication and TLS: the gateway process is killed
    mid-stream and restarted; its persistent session (same identity, same client
    id) brings what the broker queued meanwhile, and every reading is stored."""
    url = f"mqtts://polegw-gateway:{site.secrets['polegw-gateway']}@localhost:{site.tls_port}"
    env = gateway_env(site.database_url, url, PREFIX, mqtt_ca_file=str(site.certs / "ca.crt"))
    t0 = datetime.now(UTC) - timedelta(hours=2)
    messages = [telemetry_message("P0001", t0 + timedelta(seconds=i), i) for i in range(120)]
    in_range = (
        "SELECT count(*) FROM telemetry WHERE device_id LIKE 'P0001-%%' AND ts >= %s AND ts < %s"
    )
    end = t0 + timedelta(seconds=len(messages))
    pole = Client("P0001", site.secrets["P0001"])
    assert pole.connect(site.tls_port, ca_context(site)) == 0
    try:
        with GatewayProcess(env, tmp_path / "gateway.log") as gw:
            gw.wait_ready()
            for body in messages[:60]:
                assert pole.publish(f"{PREFIX}/P0001/telemetry", body) == 0
            gw.kill()  # SIGKILL: whatever was not committed is not acknowledged
            for body in messages[60:]:  # queued by the broker for the gateway's session
                assert pole.publish(f"{PREFIX}/P0001/telemetry", body) == 0
            gw.start()
            gw.wait_ready()
            deadline = time.monotonic() + 30
            while count(site.database_url, in_range, t0, end) < len(messages) * 8:
                assert time.monotonic() < deadline, gw.tail()
                time.sleep(0.1)
            time.sleep(0.5)  # a late redelivery must not add rows
            assert count(site.database_url, in_range, t0, end) == len(messages) * 8
            assert "Traceback" not in gw.tail(10**7)
    finally:
        pole.close()


async def test_simulators_publish_over_mqtts_as_their_own_identity(site: Site) -> None:
    """`polegw simulate`'s poles with POLEGW_MQTT_CA_FILE: TLS to the site's CA,
    logged in as polegw-simulators, publishing for the site's poles."""
    monitor = Client("polegw-monitor", site.secrets["polegw-monitor"])
    assert monitor.connect(site.broker.port) == 0
    monitor.subscribe(f"{PREFIX}/P0002/telemetry")
    secret = site.secrets["polegw-simulators"]
    stop = asyncio.Event()
    sims = asyncio.create_task(
        run_poles(
            SiteSpec(poles=[p for p in small_site().poles if p.id == "P0002"]),
            f"mqtts://polegw-simulators:{secret}@localhost:{site.tls_port}",
            prefix=PREFIX,
            interval_s=0.2,
            stop=stop,
            tls_files=(site.certs / "ca.crt", None, None),
        )
    )
    try:
        await eventually(lambda: len(monitor.messages) >= 2, within=10, what="2 messages")
    finally:
        stop.set()
        await asyncio.wait_for(sims, 10)
        monitor.close()
    assert all(topic == f"{PREFIX}/P0002/telemetry" for topic, _ in monitor.messages)
    with pytest.raises(ConfigError, match="MQTT TLS files"):
        await run_poles(
            small_site(), "mqtts://localhost:1", tls_files=(Path("/nonexistent"), None, None)
        )


def test_unreadable_tls_files_stop_the_gateway_with_one_line(tmp_path: Path) -> None:
    env = {
        "POLEGW_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "POLEGW_SECRET_KEY": "k" * 32,
        "POLEGW_MQTT_URL": "mqtts://gw:pw@127.0.0.1:1",
        "POLEGW_MQTT_CA_FILE": str(tmp_path / "missing-ca.crt"),
    }
    result = runner.invoke(app, ["run"], env=env)
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "POLEGW_MQTT_CA_FILE" in result.stderr
    half = runner.invoke(
        app, ["run"], env={**env, "POLEGW_MQTT_CERT_FILE": str(tmp_path / "pole.crt")}
    )
    assert half.exit_code == 2
    assert "POLEGW_MQTT_CERT_FILE and POLEGW_MQTT_KEY_FILE go together" in half.stderr


def test_the_compose_provision_step_is_idempotent(fresh_database_url: str, tmp_path: Path) -> None:
    """deploy/provision.sh (run by `docker compose up`) twice: the services' secrets
    and the CA stay, and the password file holds the secrets it handed out."""
    prepare_database_sync(fresh_database_url, small_site())
    dirs = {
        "POLEGW_PROVISION_SECRETS": tmp_path / "secrets",
        "POLEGW_PROVISION_BROKER": tmp_path / "broker",
        "POLEGW_PROVISION_CA": tmp_path / "ca",
    }
    dirs["POLEGW_PROVISION_SECRETS"].mkdir()
    env = {
        **os.environ,
        **{k: str(v) for k, v in dirs.items()},
        "POLEGW_DATABASE_URL": fresh_database_url,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    script = Path(__file__).parent.parent / "deploy" / "provision.sh"

    def provision() -> dict[str, str]:
        done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        folder = dirs["POLEGW_PROVISION_SECRETS"]
        return {f.name: f.read_text() for f in folder.iterdir()}

    first = provision()
    assert set(first) == {"gateway", "simulators", "monitor", "ca.crt"}
    assert provision() == first
    hashes = dict(
        line.split(":", 1)
        for line in (dirs["POLEGW_PROVISION_BROKER"] / "passwd").read_text().split()
    )
    for service in ("gateway", "simulators", "monitor"):
        assert mosquitto_verify(hashes[f"polegw-{service}"], first[service].strip())
    conf = (dirs["POLEGW_PROVISION_BROKER"] / "polegw.conf").read_text()
    assert "password_file /mosquitto/config/polegw/passwd" in conf
    assert "listener 1883 127.0.0.1" in conf
    assert (dirs["POLEGW_PROVISION_BROKER"] / "certs" / "server.key").exists()


def test_simulate_never_prints_the_secret(tmp_path: Path) -> None:
    site_file = tmp_path / "site.yaml"
    site_file.write_text(
        "poles:\n  - id: P0001\n    devices:\n      - {id: P0001-lamp, profile: lamp-controller}\n"
    )
    env = {
        "POLEGW_MQTT_URL": "mqtts://polegw-simulators:s3cretvalue@127.0.0.1:1",
        "POLEGW_MQTT_CA_FILE": str(tmp_path / "missing-ca.crt"),
    }
    result = runner.invoke(app, ["simulate", "--site", str(site_file)], env=env)
    assert result.exit_code == 2, result.output
    assert "mqtts://polegw-simulators@127.0.0.1:1" in result.stdout
    assert "MQTT TLS files" in result.stderr
    assert "s3cretvalue" not in result.output


def test_which_pole_ids_can_be_broker_users() -> None:
    assert check_pole_username("P0001", Grant.PASSWORD) is None
    colon = check_pole_username("road:7", Grant.PASSWORD)
    assert colon is not None
    assert "client certificate" in colon
    assert check_pole_username("road:7", Grant.CERTIFICATE) is None
    reserved = check_pole_username("polegw-gateway", Grant.CERTIFICATE)
    assert reserved is not None
    assert "reserved" in reserved
    acl = render_acl([Identity("road:7"), Identity("polegw-monitor", Service.MONITOR)], "p")
    assert acl.index("user polegw-monitor") < acl.index("user road:7")
    assert "user polegw-monitor\ntopic read p/#\ntopic read $SYS/#\n" in acl
    assert "pattern" not in acl
