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

The demo also runs the mounting service: every pole has mounting slots, a
cabinet compartment and the four ports of its meter; the site's two tenants
each have a user and leases in service (5G micro stations on port 1, traffic
cameras on port 2 of the first poles), priced by a time-of-use tariff; and the
current month's draft bills are generated at every start. All of it is made on
the first run and left as it is on the next ones (`seed_mounting`). The leases
made on the first run are in service from the start of the month, and their
ports' meters get the month's readings up to then, as the simulated meters
would have given them (`backfill_meters`): the first bill already has its
electricity by time-of-use period. The operator pages get a lighting group per
road with a night profile, an inspection order and a repair order
(gateway.demo_seed), also made once.

`run_simulators` is what `polegw simulate` runs: a site's Modbus devices and
its MQTT poles, side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import secrets
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import SecretStr

from gateway.adapters import migrate
from gateway.adapters import mounting_store as ms
from gateway.adapters.audit import append
from gateway.adapters.billing_store import BillingStore, dumps
from gateway.adapters.credentials import hash_password
from gateway.adapters.db import redacted
from gateway.adapters.site_store import import_site
from gateway.adapters.tariff_store import TariffStore
from gateway.adapters.usage_store import UsageStore
from gateway.adapters.users import UserExists, UserStore
from gateway.config import Settings, redacted_mqtt
from gateway.core import mounting as mo
from gateway.core.auth import SYSTEM, Role
from gateway.core.profiles import ProfileCatalog, load_catalog
from gateway.core.site import (
    CapacitySpec,
    CompartmentSpec,
    PortSpec,
    SiteSpec,
    SlotSpec,
)
from gateway.core.tariffs import NoTariff
from gateway.demo_database import claim_database
from gateway.demo_seed import seed_demo_operations
from gateway.errors import ConfigError
from gateway.service import open_pool, run_gateway
from simulators.demo_site import MODBUS_BASE_PORT, demo_site
from simulators.modbus_devices import site_device
from simulators.modbus_server import run_modbus_devices
from simulators.model import Counters
from simulators.mqtt_poles import run_poles

log = logging.getLogger(__name__)

MODBUS_START_S = 10.0  # how long the simulated Modbus buses may take to listen
HISTORY_EVERY = timedelta(minutes=5)  # the backfilled meter readings' spacing


# ----------------------------------------------------------------------------- mounting

DEMO_TARIFF = "demo-tou"
# A Sichuan-like time-of-use tariff (CNY per kWh), summer with a sharp peak.
DEMO_TARIFF_DEFINITION: dict[str, Any] = {
    "energy": {
        "prices": {"sharp": "1.1490", "peak": "0.9576", "flat": "0.6384", "valley": "0.3192"},
        "default_period": "flat",
        "seasons": [
            {
                "months": [7, 8],
                "ranges": [
                    {"period": "valley", "start": 0, "end": 7},
                    {"period": "peak", "start": 10, "end": 15},
                    {"period": "sharp", "start": 15, "end": 17},
                    {"period": "peak", "start": 17, "end": 22},
                    {"period": "valley", "start": 23, "end": 24},
                ],
            },
            {
                "months": [1, 2, 3, 4, 5, 6, 9, 10, 11, 12],
                "ranges": [
                    {"period": "valley", "start": 0, "end": 7},
                    {"period": "peak", "start": 10, "end": 12},
                    {"period": "peak", "start": 14, "end": 22},
                    {"period": "valley", "start": 23, "end": 24},
                ],
            },
        ],
    },
    "rent": {
        "positions": {"top": "450"},
        "slot_types": {"standard": "300"},
        "compartment": "120",
    },
    "maintenance_fee": "50",
}
# Every demo pole's meter: 5G micro station, camera, display screen, spare (W).
PORT_RATINGS_W = (1000.0, 100.0, 300.0, 1000.0)


@dataclass(frozen=True, slots=True)
class DemoLease:
    """One tenant's equipment on some of the demo poles, on one port of their meters."""

    tenant_id: str
    user: str  # the tenant's demo user
    device: dict[str, Any]
    slot: str  # position
    port_no: int
    cabinet_units: int
    poles: tuple[int, ...]  # pole numbers (1 = P0001); those the site has


DEMO_LEASES = (
    DemoLease(
        "tn-telecom",
        "telecom",
        {
            "type": "5G micro station",
            "model": "AAU-5613",
            "quantity": 1,
            "weight_kg": 18,
            "wind_area_m2": 0.24,
            "power_w": 800,
        },
        "top",
        1,
        2,
        (1, 2),
    ),
    DemoLease(
        "tn-police",
        "police",
        {
            "type": "traffic camera",
            "model": "DS-2CD7A47",
            "quantity": 1,
            "weight_kg": 6,
            "wind_area_m2": 0.05,
            "power_w": 40,
        },
        "mid",
        2,
        0,
        (1, 3),
    ),
)


def with_capacity(site: SiteSpec) -> SiteSpec:
    """The site with each pole's mounting capacity: a budget, three slots, a
    cabinet compartment and the four ports of its meter."""
    poles = []
    for pole in site.poles:
        meters = [d.id for d in pole.devices if d.profile == "port-meter-4"]
        poles.append(
            pole.model_copy(
                update={
                    "capacity": CapacitySpec(
                        max_load_kg=120, max_wind_area_m2=1.5, power_budget_w=2500
                    ),
                    "slots": [
                        SlotSpec(
                            id=f"{pole.id}-{position}",
                            position=position,
                            height_min_m=low,
                            height_max_m=high,
                            max_load_kg=40,
                            max_wind_area_m2=0.6,
                            max_power_w=1000,
                            voltage_v=220,
                        )
                        for position, low, high in (("top", 8, 10), ("mid", 5, 8), ("low", 3, 5))
                    ],
                    "compartments": [CompartmentSpec(id=f"{pole.id}-cab", name="A", units=6)],
                    "ports": [
                        PortSpec(id=f"{pole.id}-port{n}", meter=meters[0], port=n, rated_w=rated)
                        for n, rated in enumerate(PORT_RATINGS_W, start=1)
                    ]
                    if meters
                    else [],
                }
            )
        )
    return site.model_copy(update={"poles": poles})


def _demo_poles(site: SiteSpec, numbers: Sequence[int]) -> list[str]:
    ids = [p.id for p in site.poles]
    return [ids[n - 1] for n in numbers if n <= len(ids)]


@dataclass(frozen=True, slots=True)
class Seeded:
    users: list[str]  # "name / password" (or the name alone, set outside the demo)
    leases: int  # in service
    since: datetime | None  # the start of the leases made on this run (None: none made)
    bills: list[str]  # "tenant: total"
    month: str


async def seed_mounting(
    database_url: str, site: SiteSpec, catalog: ProfileCatalog, tz: ZoneInfo, data_dir: Path
) -> Seeded:
    """The demo's tenants, tariff and leases (made once), and this month's draft bills
    (made again at every start)."""
    from gateway.service import open_pool

    pool = open_pool(database_url)
    await pool.open()
    try:
        users = await _tenant_users(UserStore(pool), data_dir)
        tariffs = TariffStore(pool)
        now = datetime.now(tz)
        async with pool.connection() as conn, conn.transaction():
            if not await tariffs.versions(conn, DEMO_TARIFF):
                await tariffs.create_tariff(
                    conn,
                    name=DEMO_TARIFF,
                    valid_from=datetime(now.year, 1, 1, tzinfo=tz),
                    valid_to=None,
                    definition=DEMO_TARIFF_DEFINITION,
                    estimate_gaps=False,
                )
        since = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        leases, made = 0, list[str]()
        for plan in DEMO_LEASES:
            for pole_id in _demo_poles(site, plan.poles):
                port_id = f"{pole_id}-port{plan.port_no}"
                if port_id in {p.id for p in _ports(site, pole_id)}:
                    lease = await _lease(pool, plan, pole_id, users[plan.user][0], since)
                    leases += lease != "not in service"
                    if lease == "made":
                        made.append(port_id)
        await backfill_meters(pool, UsageStore(pool, catalog), site, catalog, made, since, now)
        month = now.strftime("%Y-%m")
        try:
            results = await BillingStore(pool, catalog, tz).generate(month, provisional=True)
        except NoTariff as exc:  # a lease made outside the demo names a tariff without one
            log.warning("the demo's %s bills were not generated: %s", month, exc)
            results = []
        async with pool.connection() as conn, conn.transaction():
            for bill, outcome in results:
                if outcome != "issued, unchanged":
                    after = dumps(bill) | {"outcome": outcome, "via": "demo"}
                    await append(conn, SYSTEM, "generate", "bill", bill["id"], None, after)
    finally:
        await pool.close()
    return Seeded(
        users=[hint for _, hint in users.values()],
        leases=leases,
        since=since if made else None,
        bills=[
            f"{b['tenant_id']} {b['total_amount']} {b.get('currency', 'CNY')}" for b, _ in results
        ],
        month=month,
    )


def _ports(site: SiteSpec, pole_id: str) -> list[PortSpec]:
    return next((p.ports for p in site.poles if p.id == pole_id), [])


async def _tenant_users(users: UserStore, data_dir: Path) -> dict[str, tuple[int | None, str]]:
    """Each demo tenant's user (made on the first run): name -> (id, login hint)."""
    out: dict[str, tuple[int | None, str]] = {}
    for plan in DEMO_LEASES:
        if plan.user in out:
            continue
        password = None
        found = await users.credentials(plan.user)
        user_id: int | None = None
        if found is None:
            password = secrets.token_urlsafe(12)
            password_hash = await asyncio.to_thread(hash_password, password)
            try:
                row = await users.create(plan.user, Role.TENANT, password_hash, plan.tenant_id)
            except UserExists:  # disabled outside the demo: leave it so
                password = None
            else:
                user_id = int(row["id"])
        else:
            user_id = int(found[0]["id"])
        hint = await asyncio.to_thread(
            _login_hint, data_dir / f"{plan.user}-password", password, plan.user
        )
        out[plan.user] = (user_id, hint)
    return out


async def _lease(
    pool: AsyncConnectionPool,
    plan: DemoLease,
    pole_id: str,
    user_id: int | None,
    since: datetime,
) -> Literal["made", "in service", "not in service"]:
    """The tenant's lease on the pole, in service from `since`: applied for, reviewed,
    approved and taken through installation (two days before) and acceptance (one day
    before), as the API would ("made"), unless the port already has a live lease
    (then whether that one is in service)."""
    port_id = f"{pole_id}-port{plan.port_no}"
    async with pool.connection() as conn, conn.transaction():
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT state FROM leases WHERE port_id = %s AND {ms.LIVE}", (port_id,)
            )
            live = await cur.fetchone()
        if live is not None:
            return "in service" if live["state"] == mo.LeaseState.IN_SERVICE else "not in service"
        budgets = await ms.lock_poles(conn, [pole_id])
        values: dict[str, object] = {
            "kind": "new",
            "tenant_id": plan.tenant_id,
            "state": mo.ApplicationState.UNDER_REVIEW.value,
            "devices": [plan.device],
            "supply": "AC",
            "voltage_v": 220,
            "cabinet_units": plan.cabinet_units,
            "poles": [{"pole_id": pole_id, "slots": [f"{pole_id}-{plan.slot}"]}],
            "attachments": [],
            "description": "demo",
            "created_by": user_id,
        }
        app = await ms.application_insert(conn, values)
        given = ms.Assignment(f"{pole_id}-{plan.slot}", None, port_id)
        review = await ms.review_pole(conn, app, pole_id, budgets[pole_id], given=given)
        failing = mo.blocking(review.checks)
        if failing:  # the demo's own plan does not fit: say what, leave it out
            log.warning(
                "demo lease of %s on %s left out: %s",
                plan.tenant_id,
                pole_id,
                "; ".join(c.message for c in failing),
            )
            await ms.application_update(conn, app["id"], {"state": "rejected"})
            return "not in service"
        request = ms.request_of(app)
        lease = await ms.lease_insert(
            conn,
            {
                "tenant_id": plan.tenant_id,
                "pole_id": pole_id,
                "state": mo.LeaseState.CONTRACTED.value,
                "application_id": app["id"],
                "slot_id": review.assignment.slot_id,
                "compartment_id": review.assignment.compartment_id,
                "port_id": review.assignment.port_id,
                "load_kg": request.load_kg,
                "wind_area_m2": request.wind_area_m2,
                "power_w": request.power_w,
                "cabinet_units": request.cabinet_units,
                "rates": {"tariff": DEMO_TARIFF},
            },
            by="demo",
            since=since - timedelta(days=3),  # approved before installation began
        )
        decision = {
            "by": None,
            "reviews": [ms.review_json(review, [])],
            "rates": {"tariff": DEMO_TARIFF},
            "lease_ids": [lease["id"]],
            "note": "set up by polegw demo",
        }
        await ms.application_update(conn, app["id"], {"state": "approved", "decision": decision})
        await ms.application_history_add(
            conn, app["id"], by=user_id, from_state=None, to_state="submitted", note="submitted"
        )
        for frm, to in (
            ("submitted", "accepted"),
            ("accepted", "under_review"),
            ("under_review", "approved"),
        ):
            await ms.application_history_add(
                conn, app["id"], by=None, from_state=frm, to_state=to, note="polegw demo"
            )
        # Taken along through the lease route's own store function, back-dated with
        # its effective times (checked, and kept beside the time they were entered).
        tz = since.tzinfo
        assert tz is not None
        for days, state in ((2, "installing"), (1, "acceptance_test"), (0, "in_service")):
            await ms.lease_transition(
                conn,
                lease["id"],
                mo.LeaseState(state),
                by="demo",
                role=SYSTEM.role,
                note="dated back by polegw demo",
                effective_at=since - timedelta(days=days),
                tz=tz,
            )
    return "made"


async def backfill_meters(
    pool: AsyncConnectionPool,
    store: UsageStore,
    site: SiteSpec,
    catalog: ProfileCatalog,
    port_ids: Sequence[str],
    start: datetime,
    end: datetime,
) -> int:
    """The energy readings of these ports from `start` to `end`, every HISTORY_EVERY,
    as the demo's simulated meters would have given them had they been counting
    then; the meter, started after `end`, goes on from the last without a step
    down. Stored like polled readings (an existing reading wins). Returns how many."""
    rows: list[tuple[datetime, str, str, float]] = []
    for port_id in port_ids:
        port = await store.port(port_id)
        if port is None:
            continue
        meter = site_device(site, catalog, port.meter_device_id)
        counters = getattr(meter.model, "counters", None)
        if not isinstance(counters, Counters):  # not a simulated counting meter
            continue
        history = counters.history(
            start.timestamp(), end.timestamp(), HISTORY_EVERY.total_seconds()
        )
        n = port.port_no - 1
        rows += [
            (
                datetime.fromtimestamp(t, UTC),
                meter.id,
                port.metric,
                float(meter.reads_as(port.metric, totals[n])),
            )
            for t, totals in history
        ]
    if rows:
        async with pool.connection() as conn:
            await conn.execute(
                "INSERT INTO telemetry (ts, device_id, metric, value)"
                " SELECT * FROM unnest(%s::timestamptz[], %s::text[], %s::text[], %s::float8[])"
                " ON CONFLICT DO NOTHING",
                [list(col) for col in zip(*rows, strict=True)],
            )
    return len(rows)


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


def check_ports_free(
    endpoints: list[tuple[str, int]], *, other_ports: str = "--modbus-port"
) -> None:
    """Refuse, naming the port and what to do, when a simulated bus could not listen
    where it must. `other_ports`: the option that moves the buses elsewhere."""
    for host, port in endpoints:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's servers
            try:
                probe.bind((host, port))
            except OSError as exc:
                why = {
                    errno.EADDRNOTAVAIL: f"{host} is not an address of this machine",
                    errno.EACCES: f"port {port} needs root",
                    errno.EADDRINUSE: "the port is in use (another polegw demo or simulate?)",
                }.get(exc.errno or 0, exc.strerror or str(exc))
                raise ConfigError(
                    f"cannot simulate the Modbus devices on {host}:{port}: {why};"
                    f" serve them on other local ports with {other_ports} PORT"
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
    other_ports: str = "--modbus-port",
    tls_files: tuple[Path | None, Path | None, Path | None] = (None, None, None),
) -> None:
    """The site's simulated Modbus devices, then its MQTT poles (over mqtts:// with
    `tls_files`: CA, client certificate, key), until `stop` is set."""
    catalog = catalog if catalog is not None else load_catalog()
    check_ports_free(modbus_endpoints(site), other_ports=other_ports)
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
                    tls_files=tls_files,
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
    use_database_anyway: bool = False,
) -> None:
    """`data_dir` must exist (the CLI creates it). Setting `stop` while the demo is
    still starting ends the start-up at once (what was started is stopped again)."""
    started = asyncio.Event()
    body = asyncio.create_task(
        _run_demo(
            settings,
            stop,
            started,
            poles=poles,
            data_dir=data_dir,
            interval_s=interval_s,
            embedded_broker_only=embedded_broker_only,
            modbus_base_port=modbus_base_port,
            use_database_anyway=use_database_anyway,
        ),
        name="demo",
    )

    async def cancel_start_up() -> None:
        await stop.wait()
        if not started.is_set():
            body.cancel()

    watcher = asyncio.create_task(cancel_start_up(), name="demo-start-up-watch")
    try:
        await body
    except asyncio.CancelledError:
        this = asyncio.current_task()
        if this is not None and this.cancelling():
            raise  # cancelled from outside, not by `stop`
        _say("polegw demo stopped during start-up.")
    finally:
        watcher.cancel()


async def _run_demo(
    settings: Settings,
    stop: asyncio.Event,
    started: asyncio.Event,
    *,
    poles: int,
    data_dir: Path,
    interval_s: float,
    embedded_broker_only: bool,
    modbus_base_port: int,
    use_database_anyway: bool,
) -> None:
    from gateway.embedded import embedded_broker, embedded_postgres, port_is_open

    try:
        site = with_capacity(demo_site(poles, modbus_base_port=modbus_base_port))
    except ValueError as exc:
        raise ConfigError(f"--modbus-port {modbus_base_port}: {exc}") from None
    check_ports_free(modbus_endpoints(site))  # before anything is started
    catalog = load_catalog(settings.profiles_dir)

    async with contextlib.AsyncExitStack() as stack:
        update: dict[str, object] = {}
        if settings.database_url:
            database_url = settings.database_url
            claim = await claim_database(database_url, ours=False, anyway=use_database_anyway)
            _say(f"database: {redacted(database_url)} (POLEGW_DATABASE_URL: {claim})")
            session_tag = database_url
        else:
            _say(f"database: starting embedded PostgreSQL, data in {data_dir}")
            database_url = await stack.enter_async_context(
                embedded_postgres(data_dir / "postgres", port=free_port())
            )
            await claim_database(database_url, ours=True)
            update["database_url"] = database_url
            session_tag = str(data_dir)  # the embedded server's port changes at every run

        if "mqtt_url" in settings.model_fields_set:
            mqtt_url = settings.mqtt_url
            _say(f"broker:   {redacted_mqtt(mqtt_url)} (POLEGW_MQTT_URL)")
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
        # One persistent session per demo database, never POLEGW_MQTT_CLIENT_ID (that
        # is the production gateway's): two demos, or a demo and a gateway, on one
        # broker must not take each other's session over.
        tag = hashlib.sha256(session_tag.encode()).hexdigest()[:10]
        update["mqtt_client_id"] = f"polegw-demo-{tag}"
        if settings.secret_key is None:
            update["secret_key"] = SecretStr(_demo_secret(data_dir / "secret-key"))
        if "spool_dir" not in settings.model_fields_set:
            update["spool_dir"] = data_dir / "spool"  # beside the demo's data, not in the cwd
        settings = settings.model_copy(update=update)

        with demoted_to_debug("alembic"):  # 16 INFO lines the demo's user has no use for
            await asyncio.to_thread(migrate.upgrade, database_url)
        counts = await import_site(database_url, site)
        _say(f"demo site: {len(site.poles)} poles ({counts})")
        login = await _demo_admin(database_url, data_dir / "admin-password")
        seeded = await seed_mounting(
            database_url, site, catalog, ZoneInfo(settings.site_timezone), data_dir
        )
        backdated = (
            f" (made now, in service and metered since {seeded.since:%Y-%m-%d})"
            if seeded.since
            else ""
        )
        _say(
            f"mounting: {seeded.leases} leases in service{backdated}, {seeded.month} draft bills:"
            f" {', '.join(seeded.bills) or 'none'}"
        )
        ops = await seed_demo_operations(database_url, site, settings)
        _say(
            f"operations: lighting groups {', '.join(ops.groups) or 'none'} (night profile),"
            f" {len(ops.orders)} open work orders of the demo ({ops.groups_made} groups and"
            f" {ops.orders_made} orders made now)"
        )

        subscribed = asyncio.Event()
        started.set()  # from here on, `stop` stops the demo the orderly way
        with config_errors_bare():
            async with asyncio.TaskGroup() as tg:
                await start_modbus_devices(tg, site, catalog, stop)
                if not stop.is_set():
                    await _gateway_and_poles(
                        tg,
                        settings,
                        stop,
                        site,
                        catalog,
                        mqtt_url,
                        subscribed,
                        interval_s,
                        login,
                        seeded,
                    )
    _say("polegw demo stopped.")


class _DemoteToDebug(logging.Filter):
    """Log the records of one logger (and its children) at DEBUG: shown only when
    the root logger logs DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.filter_name(record):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)

    def filter_name(self, record: logging.LogRecord) -> bool:
        return super().filter(record)  # logging.Filter(name) matches name and children


@contextlib.contextmanager
def demoted_to_debug(name: str) -> Iterator[None]:
    """While inside, the records of logger `name` and its children are logged at
    DEBUG by the root logger's handlers."""
    demote = _DemoteToDebug(name)
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(demote)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(demote)


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


def _login_hint(password_file: Path, new_password: str | None, name: str = "admin") -> str:
    if new_password is not None:
        password_file.touch(mode=0o600)
        password_file.write_text(new_password + "\n", encoding="utf-8")
    if password_file.exists():
        return f"{name} / {password_file.read_text(encoding='utf-8').strip()}"
    return f"{name} (its password was set outside the demo)"


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
    seeded: Seeded,
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
        f"  console:         {api}/console/\n"
        f"  log in:          {login}  (the operator: console, or POST {api}/api/v1/auth/token)\n"
        f"  tenant users:    {', '.join(seeded.users)}  (their leases and bills)\n"
        f"  API docs:        {api}/docs\n"
        f"  poles:           {api}/api/v1/poles\n"
        f"  latest values:   {api}/api/v1/devices/{first.devices[0].id}/latest\n"
        + meter
        + f"  leases:          {api}/api/v1/leases\n"
        f"  bills:           {api}/api/v1/bills?month={seeded.month} (drafts, made again at"
        " each start;\n"
        f"                   one with its lines: {api}/api/v1/bills/{{id}})\n"
        f"  metrics:         {api}/metrics\n"
        f"  readiness:       {api}/readyz\n"
        + (f"  Modbus buses:    {buses} (RTU over TCP)\n" if buses else "")
        + (
            ""
            if "@" in mqtt_url
            else f"  MQTT:            {mqtt_url}: anonymous, no TLS (demo only)\n"
        )
    )
