"""`polegw demo`: broker, database, demo site, simulators, gateway and API in one process.

Uses the broker and database the settings point at when POLEGW_MQTT_URL /
POLEGW_DATABASE_URL are set; otherwise a Mosquitto already listening on
127.0.0.1:1883, else an embedded amqtt broker; and an embedded PostgreSQL
whose data stays under --data-dir, so a second run reuses it.

The demo site's port meters are simulated Modbus RTU devices behind one
serial-to-TCP converter per road (127.0.0.1, --modbus-port and the ports after
it); they listen before the gateway starts, so its first polls are answered.
The site, with those ports, is stored in the database: a run with another
--modbus-port updates the meters' endpoints.

`run_simulators` is what `polegw simulate` runs: a site's Modbus devices and
its MQTT poles, side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

from pydantic import SecretStr

from gateway.adapters import migrate
from gateway.adapters.credentials import hash_password
from gateway.adapters.db import redacted
from gateway.adapters.site_store import import_site
from gateway.adapters.users import UserStore
from gateway.config import Settings
from gateway.core.auth import Role
from gateway.core.profiles import ProfileCatalog, load_catalog
from gateway.core.site import SiteSpec
from gateway.errors import ConfigError
from gateway.service import open_pool, run_gateway
from simulators.demo_site import MODBUS_BASE_PORT, demo_site
from simulators.modbus_server import run_modbus_devices
from simulators.mqtt_poles import run_poles

log = logging.getLogger(__name__)

MODBUS_START_S = 10.0  # how long the simulated Modbus buses may take to listen


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _say(text: str) -> None:
    print(text, flush=True)


def modbus_endpoints(site: SiteSpec) -> list[tuple[str, int]]:
    """Every (host, port) a Modbus device of `site` answers on, in order."""
    found = {
        (d.modbus.host, d.modbus.port)
        for p in site.poles
        for d in p.devices
        if d.transport == "modbus" and d.modbus is not None
    }
    return sorted(found, key=lambda e: (e[1], e[0]))


def check_ports_free(endpoints: list[tuple[str, int]]) -> None:
    """Refuse, naming the port, when a simulated bus could not listen where it must."""
    for host, port in endpoints:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's servers
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise ConfigError(
                    f"cannot simulate the Modbus devices on {host}:{port}: {exc.strerror or exc}"
                    " (another polegw demo or simulate running?); pick other ports with"
                    " --modbus-port"
                ) from None


async def _accepts(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def start_modbus_devices(
    tg: asyncio.TaskGroup,
    site: SiteSpec,
    catalog: ProfileCatalog,
    stop: asyncio.Event,
    *,
    seed: int = 1,
) -> None:
    """Start serving the site's Modbus devices in `tg`; return once every bus listens.

    A bus that cannot listen fails the task group with a ConfigError (see
    `config_errors_bare`)."""
    endpoints = modbus_endpoints(site)
    if not endpoints:
        return
    serving = tg.create_task(
        run_modbus_devices(site, catalog, stop=stop, seed=seed), name="modbus-simulators"
    )
    async with asyncio.timeout(MODBUS_START_S):
        for host, port in endpoints:
            while not await _accepts(host, port):
                if serving.done() or stop.is_set():
                    return  # its failure, if any, ends the task group
                await asyncio.sleep(0.05)


@contextlib.contextmanager
def config_errors_bare() -> Iterator[None]:
    """A task group that failed because of a ConfigError raises that error alone (the
    command line prints it as a message, not a traceback)."""
    try:
        yield
    except ExceptionGroup as group:
        configs = group.subgroup(ConfigError)
        if configs is None:
            raise
        first: BaseException = configs
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


async def run_simulators(
    site: SiteSpec,
    mqtt_url: str,
    stop: asyncio.Event,
    *,
    catalog: ProfileCatalog | None = None,
    prefix: str = "poles",
    interval_s: float = 5.0,
    seed: int = 1,
) -> None:
    """The site's simulated Modbus devices, then its MQTT poles, until `stop` is set."""
    catalog = catalog if catalog is not None else load_catalog()
    check_ports_free(modbus_endpoints(site))
    with config_errors_bare():
        async with asyncio.TaskGroup() as tg:
            await start_modbus_devices(tg, site, catalog, stop, seed=seed)
            tg.create_task(
                run_poles(
                    site,
                    mqtt_url,
                    prefix=prefix,
                    interval_s=interval_s,
                    seed=seed,
                    stop=stop,
                    catalog=catalog,
                ),
                name="mqtt-poles",
            )


async def run_demo(
    settings: Settings,
    stop: asyncio.Event,
    *,
    poles: int,
    data_dir: Path,
    interval_s: float,
    embedded_broker_only: bool = False,
    modbus_base_port: int = MODBUS_BASE_PORT,
) -> None:
    """`data_dir` must exist (the CLI creates it)."""
    from gateway.embedded import embedded_broker, embedded_postgres, port_is_open

    try:
        site = demo_site(poles, modbus_base_port=modbus_base_port)
    except ValueError as exc:
        raise ConfigError(f"--modbus-port {modbus_base_port}: {exc}") from None
    check_ports_free(modbus_endpoints(site))  # before anything is started
    catalog = load_catalog(settings.profiles_dir)

    async with contextlib.AsyncExitStack() as stack:
        update: dict[str, object] = {}
        if settings.database_url:
            database_url = settings.database_url
            _say(f"database: {redacted(database_url)} (POLEGW_DATABASE_URL)")
        else:
            _say(f"database: starting embedded PostgreSQL, data in {data_dir}")
            database_url = await stack.enter_async_context(
                embedded_postgres(data_dir / "postgres", port=free_port())
            )
            update["database_url"] = database_url

        if "mqtt_url" in settings.model_fields_set:
            mqtt_url = settings.mqtt_url
            _say(f"broker:   {mqtt_url} (POLEGW_MQTT_URL)")
        elif not embedded_broker_only and port_is_open("127.0.0.1", 1883):
            mqtt_url = "mqtt://127.0.0.1:1883"
            _say(f"broker:   {mqtt_url} (found running)")
        else:
            mqtt_url = await stack.enter_async_context(embedded_broker("127.0.0.1", free_port()))
            update["mqtt_protocol"] = "3.1.1"  # amqtt speaks MQTT 3.1.1 only
            _say(f"broker:   {mqtt_url} (embedded amqtt)")
        update["mqtt_url"] = mqtt_url
        if port_is_open(settings.api_host, settings.api_port):
            update["api_port"] = free_port(settings.api_host)
            _say(f"port {settings.api_port} is taken; the API uses {update['api_port']}")
        if "mqtt_client_id" not in settings.model_fields_set:
            # One persistent session per demo database: two demos on one
            # broker must not take each other's session over.
            tag = hashlib.sha256(database_url.encode()).hexdigest()[:10]
            update["mqtt_client_id"] = f"polegw-demo-{tag}"
        if settings.secret_key is None:
            update["secret_key"] = SecretStr(_demo_secret(data_dir / "secret-key"))
        settings = settings.model_copy(update=update)

        await asyncio.to_thread(migrate.upgrade, database_url)
        counts = await import_site(database_url, site)
        _say(f"demo site: {len(site.poles)} poles ({counts})")
        login = await _demo_admin(database_url, data_dir / "admin-password")

        subscribed = asyncio.Event()
        with config_errors_bare():
            async with asyncio.TaskGroup() as tg:
                await start_modbus_devices(tg, site, catalog, stop)
                if not stop.is_set():
                    await _gateway_and_poles(
                        tg, settings, stop, site, catalog, mqtt_url, subscribed, interval_s, login
                    )
    _say("polegw demo stopped.")


def _demo_secret(path: Path) -> str:
    """The demo's token-signing key, made once and kept in its data folder."""
    if path.exists():
        return path.read_text(encoding="ascii").strip()
    secret = secrets.token_hex(32)
    path.touch(mode=0o600)
    path.write_text(secret, encoding="ascii")
    return secret


async def _demo_admin(database_url: str, password_file: Path) -> str:
    """Make the demo's `admin` user on the first run; say how to log in."""
    pool = open_pool(database_url)
    await pool.open()
    try:
        users = UserStore(pool)
        password = None
        if await users.credentials("admin") is None:
            password = secrets.token_urlsafe(12)
            password_hash = await asyncio.to_thread(hash_password, password)
            await users.create("admin", Role.ADMIN, password_hash)
    finally:
        await pool.close()
    return await asyncio.to_thread(_login_hint, password_file, password)


def _login_hint(password_file: Path, new_password: str | None) -> str:
    if new_password is not None:
        password_file.touch(mode=0o600)
        password_file.write_text(new_password + "\n", encoding="utf-8")
    if password_file.exists():
        return f"admin / {password_file.read_text(encoding='utf-8').strip()}"
    return "admin (its password was set outside the demo)"


async def _gateway_and_poles(
    tg: asyncio.TaskGroup,
    settings: Settings,
    stop: asyncio.Event,
    site: SiteSpec,
    catalog: ProfileCatalog,
    mqtt_url: str,
    subscribed: asyncio.Event,
    interval_s: float,
    login: str,
) -> None:
    """Start the gateway, then, once it listens to the broker, the MQTT poles."""
    gateway = tg.create_task(run_gateway(settings, stop, subscribed=subscribed), name="gateway")
    waiting = tg.create_task(subscribed.wait())
    stopping = tg.create_task(stop.wait())
    await asyncio.wait({waiting, stopping, gateway}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    stopping.cancel()
    if stop.is_set():
        return
    tg.create_task(
        run_poles(
            site,
            mqtt_url,
            prefix=settings.mqtt_topic_prefix,
            interval_s=interval_s,
            stop=stop,
            catalog=catalog,
        ),
        name="mqtt-poles",
    )
    api = f"http://{settings.api_host}:{settings.api_port}"
    first = site.poles[0]
    meters = [d.id for d in first.devices if d.transport == "modbus"]
    meter = f"  Modbus meter:    {api}/api/v1/devices/{meters[0]}/latest\n" if meters else ""
    buses = ", ".join(f"{h}:{p}" for h, p in modbus_endpoints(site))
    _say(
        "\npolegw demo is running. Ctrl-C stops it.\n"
        f"  log in:          {login}\n"
        f"                   (in {api}/docs: Authorize; or POST {api}/api/v1/auth/token)\n"
        f"  API docs:        {api}/docs\n"
        f"  poles:           {api}/api/v1/poles\n"
        f"  latest values:   {api}/api/v1/devices/{first.devices[0].id}/latest\n"
        + meter
        + f"  metrics:         {api}/metrics\n"
        f"  readiness:       {api}/readyz\n"
        + (f"  Modbus buses:    {buses} (RTU over TCP)\n" if buses else "")
    )
