"""The `polegw` command line."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from gateway.config import Settings
from gateway.errors import ConfigError, SourceFileError

app = typer.Typer(
    help="polegw: telemetry gateway and operations back end for smart multi-function poles.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
site_app = typer.Typer(help="Load the site: poles, devices and tenants.", no_args_is_help=True)
app.add_typer(site_app, name="site")
user_app = typer.Typer(help="Manage the API's users.", no_args_is_help=True)
app.add_typer(user_app, name="user")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("amqtt", "transitions", "uvicorn.error", "pymodbus"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def settings_or_exit() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        # Name the variable and the problem; never echo the value (it may hold a password).
        for err in exc.errors(include_url=False, include_input=False):
            name = "POLEGW_" + "_".join(str(p) for p in err["loc"]).upper()
            typer.echo(f"polegw: {name}: {err['msg'].removeprefix('Value error, ')}", err=True)
        raise typer.Exit(2) from None


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"polegw: {message}", err=True)
    return typer.Exit(code)


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `main(stop)`; the first Ctrl-C/SIGTERM sets `stop`, a second one aborts."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_signal() -> None:
            if stop.is_set() and task is not None:
                task.cancel()
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        await main(stop)

    try:
        asyncio.run(runner())
    except (KeyboardInterrupt, asyncio.CancelledError):
        raise typer.Exit(130) from None
    except ConfigError as exc:
        raise fail(str(exc)) from None


@app.command()
def run() -> None:
    """Run the gateway for production: MQTT ingest and the API, from POLEGW_* settings."""
    from gateway.service import run_gateway

    settings = settings_or_exit()
    setup_logging(settings.log_level)
    run_until_signal(lambda stop: run_gateway(settings, stop))


@app.command()
def migrate(
    revision: Annotated[str, typer.Option(help="Target revision")] = "head",
    downgrade: Annotated[
        bool, typer.Option("--downgrade", help="Downgrade to the revision")
    ] = False,
) -> None:
    """Apply the database migrations (alembic upgrade head)."""
    from gateway.adapters import migrate as m

    settings = settings_or_exit()
    setup_logging(settings.log_level)
    try:
        url = settings.require_database_url()
        if downgrade:
            m.downgrade(url, revision)
        else:
            m.upgrade(url, revision)
        typer.echo(f"database at revision {m.current(url) or 'base'}")
    except ConfigError as exc:
        raise fail(str(exc)) from None


@site_app.command("import")
def site_import(
    file: Annotated[Path, typer.Argument(help="Site YAML file", exists=False)],
    dry_run: Annotated[bool, typer.Option(help="Validate only; change nothing")] = False,
) -> None:
    """Load poles, devices and tenants from a YAML site file (idempotent, all or nothing)."""
    from gateway.adapters.site_store import import_site
    from gateway.core.profiles import load_catalog
    from gateway.core.site import parse_site

    settings = settings_or_exit()
    setup_logging(settings.log_level)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"{file}: cannot read: {exc}") from None
    try:
        site = parse_site(text, str(file), load_catalog(settings.profiles_dir))
    except SourceFileError as exc:
        typer.echo("\n".join(str(p) for p in exc.problems), err=True)
        raise fail(f"{file}: refused, nothing imported ({len(exc.problems)} problem(s))") from None
    devices = sum(len(p.devices) for p in site.poles)
    if dry_run:
        typer.echo(
            f"{file}: valid: {len(site.tenants)} tenants,"
            f" {len(site.poles)} poles, {devices} devices"
        )
        return
    try:
        counts = asyncio.run(import_site(settings.require_database_url(), site))
    except ConfigError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"{file}: {counts}")


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="Login name")],
    role: Annotated[str, typer.Option(help="admin, operator, maintainer or tenant")],
    tenant: Annotated[
        str | None, typer.Option(help="The tenant a tenant user belongs to (its id)")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
) -> None:
    """Create a user (the first admin, for instance). The password comes from standard
    input with --password-stdin, or is asked for twice on a terminal."""
    from gateway.adapters.credentials import MIN_PASSWORD_LENGTH, hash_password
    from gateway.adapters.users import UnknownTenant, UserExists, UserStore
    from gateway.core.auth import Role
    from gateway.service import open_pool

    try:
        role_ = Role(role)
    except ValueError:
        raise fail(f"--role: must be one of {', '.join(r.value for r in Role)}") from None
    if (role_ is Role.TENANT) != (tenant is not None):
        raise fail("--tenant: required for role tenant, and only for it")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise fail(f"the password needs at least {MIN_PASSWORD_LENGTH} characters")
    settings = settings_or_exit()
    setup_logging(settings.log_level)

    async def add() -> None:
        pool = open_pool(settings.require_database_url())
        await pool.open()
        try:
            await UserStore(pool).create(name, role_, hash_password(password), tenant)
        finally:
            await pool.close()

    try:
        asyncio.run(add())
    except ConfigError as exc:
        raise fail(str(exc)) from None
    except UserExists:
        raise fail(f"a user named {name!r} exists already") from None
    except UnknownTenant:
        raise fail(
            f"--tenant: no tenant {tenant!r} (import it with `polegw site import`)"
        ) from None
    typer.echo(f"user {name!r} created with role {role_.value}")


@app.command()
def simulate(
    site_file: Annotated[
        Path | None, typer.Option("--site", help="Simulate the poles of this site file")
    ] = None,
    poles: Annotated[
        int, typer.Option(min=1, max=9999, help="Without --site: this many demo poles")
    ] = 20,
    interval: Annotated[float, typer.Option(help="Seconds between telemetry messages")] = 5.0,
    seed: Annotated[int, typer.Option(help="Random seed")] = 1,
    modbus_port: Annotated[
        int,
        typer.Option(
            "--modbus-port",
            metavar="BASE",
            min=1,
            max=65535,
            help="Without --site: the first road's Modbus port (the next roads' follow)",
        ),
    ] = 15020,
) -> None:
    """Run simulated poles: MQTT edge controllers against the broker at POLEGW_MQTT_URL,
    and the site's Modbus devices on their endpoints."""
    from gateway.core.profiles import load_catalog
    from gateway.core.site import parse_site
    from gateway.demo import modbus_endpoints, run_simulators
    from simulators.demo_site import demo_site

    settings = settings_or_exit()
    setup_logging(settings.log_level)
    try:
        catalog = load_catalog(settings.profiles_dir)
    except SourceFileError as exc:
        typer.echo(str(exc), err=True)
        raise fail("the device profiles are refused") from None
    if site_file is not None:
        try:
            site = parse_site(site_file.read_text(encoding="utf-8"), str(site_file), catalog)
        except SourceFileError as exc:
            typer.echo(str(exc), err=True)
            raise fail(f"{site_file}: refused") from None
        except OSError as exc:
            raise fail(f"{site_file}: cannot read: {exc}") from None
    else:
        try:
            site = demo_site(poles, modbus_base_port=modbus_port)
        except ValueError as exc:
            raise fail(f"--modbus-port {modbus_port}: {exc}") from None
    buses = modbus_endpoints(site)
    modbus = f" and Modbus devices on {len(buses)} buses" if buses else ""
    typer.echo(
        f"simulating {len(site.poles)} poles on {settings.mqtt_url}"
        f" every {interval:g}s{modbus}; Ctrl-C stops"
    )
    run_until_signal(
        lambda stop: run_simulators(
            site,
            settings.mqtt_url,
            stop,
            catalog=catalog,
            prefix=settings.mqtt_topic_prefix,
            interval_s=interval,
            seed=seed,
        )
    )


@app.command()
def demo(
    poles: Annotated[int, typer.Option(min=1, max=9999, help="Number of demo poles")] = 20,
    data_dir: Annotated[
        Path, typer.Option(help="Where the embedded database keeps its data")
    ] = Path(".polegw-demo"),
    interval: Annotated[
        float, typer.Option(help="Seconds between simulated telemetry messages")
    ] = 5.0,
    embedded_broker: Annotated[
        bool, typer.Option(help="Start the embedded broker even if one listens on port 1883")
    ] = False,
    modbus_port: Annotated[
        int,
        typer.Option(
            "--modbus-port",
            metavar="BASE",
            min=1,
            max=65535,
            help="Port of the first road's simulated Modbus converter; the next roads' follow",
        ),
    ] = 15020,
) -> None:
    """Start everything on one machine: broker, database, simulators, gateway and API."""
    from gateway.demo import run_demo

    settings = settings_or_exit()
    setup_logging(settings.log_level)
    data_dir = data_dir.resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(f"{data_dir}: cannot create the demo data folder: {exc}") from None
    run_until_signal(
        lambda stop: run_demo(
            settings,
            stop,
            poles=poles,
            data_dir=data_dir,
            interval_s=interval,
            embedded_broker_only=embedded_broker,
            modbus_base_port=modbus_port,
        )
    )


bills_app = typer.Typer(help="Monthly bills: metering, tariffs, rent.", no_args_is_help=True)
app.add_typer(bills_app, name="bills")


@bills_app.command("generate")
def bills_generate(
    month: Annotated[
        str,
        typer.Option("--period", "--month", help="The month, YYYY-MM in the site's time zone"),
    ],
    tenant: Annotated[str | None, typer.Option(help="Only this tenant (its id)")] = None,
    provisional: Annotated[
        bool, typer.Option(help="Bill a month that has not ended (a draft that cannot be issued)")
    ] = False,
) -> None:
    """Create or replace the month's draft bills (issued bills are never changed)."""
    import re
    from zoneinfo import ZoneInfo

    import psycopg

    from gateway.adapters.audit import append
    from gateway.adapters.billing_store import BillingStore, MonthNotEnded, dumps
    from gateway.core.auth import SYSTEM
    from gateway.core.profiles import load_catalog
    from gateway.core.tariffs import NoTariff
    from gateway.service import open_pool

    if not re.fullmatch(r"2[0-9]{3}-(0[1-9]|1[0-2])", month):
        raise fail(f"--period: {month!r} is not YYYY-MM (a year 2000-2999)")
    settings = settings_or_exit()
    setup_logging(settings.log_level)

    async def generate() -> list[tuple[dict[str, object], str]]:
        pool = open_pool(settings.require_database_url())
        await pool.open()
        try:
            store = BillingStore(
                pool, load_catalog(settings.profiles_dir), ZoneInfo(settings.site_timezone)
            )
            results = await store.generate(month, tenant, provisional=provisional)
            async with pool.connection() as conn, conn.transaction():
                for bill, outcome in results:
                    if outcome != "issued, unchanged":
                        after = dumps(bill) | {"outcome": outcome, "via": "cli"}
                        await append(conn, SYSTEM, "generate", "bill", bill["id"], None, after)
            return results
        finally:
            await pool.close()

    try:
        results = asyncio.run(generate())
    except (ConfigError, SourceFileError, NoTariff) as exc:
        raise fail(str(exc)) from None
    except MonthNotEnded as exc:
        raise fail(f"--period: {exc} (--provisional)") from None
    except (OSError, psycopg.Error) as exc:
        raise fail(f"database: {(str(exc) or repr(exc)).splitlines()[0]}") from None
    for bill, outcome in results:
        typer.echo(
            f"{bill['tenant_id']} {month}: bill {bill['id']} {outcome},"
            f" total {bill['total_amount']} {bill['currency']}"
        )
    if not results:
        typer.echo(f"{month}: no lease in service, no bill")


# The meter-data ledger: gateway/cli_metering.py (registered here, defined there).
from gateway.cli_metering import metering_app  # noqa: E402

app.add_typer(metering_app, name="metering")
