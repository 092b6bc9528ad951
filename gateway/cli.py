"""The `polegw` command line."""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import psycopg
import typer
from pydantic import ValidationError

from gateway.cli_broker import broker_app, pole_app, provisioning_hint
from gateway.cli_errors import EXIT_USER, check_database, database_errors, run_until_signal
from gateway.config import Settings, redacted_mqtt
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
app.add_typer(pole_app, name="pole")
app.add_typer(broker_app, name="broker")


# The shortest telemetry interval the simulators take (0 or less would never wait).
MIN_INTERVAL_S = 0.1


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
            msg = err["msg"].removeprefix("Value error, ")
            if not err["loc"]:  # a rule across settings names them itself
                typer.echo(f"polegw: {msg}", err=True)
                continue
            name = "POLEGW_" + "_".join(str(p) for p in err["loc"]).upper()
            typer.echo(f"polegw: {name}: {msg}", err=True)
        raise typer.Exit(2) from None


def plural(n: int, noun: str) -> str:
    """ "1 tenant", "2 tenants"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def fail(message: str, code: int = EXIT_USER) -> typer.Exit:
    typer.echo(f"polegw: {message}", err=True)
    return typer.Exit(code)


@app.command()
def run() -> None:
    """Run the gateway for production: MQTT ingest and the API, from POLEGW_* settings."""
    from gateway.service import run_gateway

    settings = settings_or_exit()
    setup_logging(settings.log_level)
    # The start-up heap is frozen out of the garbage collector (service.tune_collector):
    # only here, where the process is the gateway; tests and the demo run gateways
    # in one process, where a frozen heap would never be freed.
    run_until_signal(lambda stop: run_gateway(settings, stop, tune_gc=True))


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
        with database_errors(url):
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
            f"{file}: valid: {plural(len(site.tenants), 'tenant')},"
            f" {plural(len(site.poles), 'pole')}, {plural(devices, 'device')}"
        )
        return
    try:
        url = settings.require_database_url()
        with database_errors(url):
            counts = asyncio.run(import_site(url, site))
    except ConfigError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"{file}: {counts}")
    provisioning_hint([p.id for p in site.poles], settings.require_database_url())


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
        await check_database(settings.require_database_url())
        pool = open_pool(settings.require_database_url())
        await pool.open()
        try:
            await UserStore(pool).create(name, role_, hash_password(password), tenant)
        finally:
            await pool.close()

    try:
        with database_errors(settings.database_url):
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
    interval: Annotated[
        float, typer.Option(min=MIN_INTERVAL_S, help="Seconds between telemetry messages")
    ] = 5.0,
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
    modbus_local_base: Annotated[
        int | None,
        typer.Option(
            "--modbus-local-base",
            metavar="PORT",
            min=1,
            max=65535,
            help="With --site: serve the site's Modbus devices on local ports instead of"
            " their addresses, each distinct host:port on PORT, PORT+1, … (printed)",
        ),
    ] = None,
    modbus_local_host: Annotated[
        str,
        typer.Option(
            "--modbus-local-host",
            help="With --modbus-local-base: the address they listen on (0.0.0.0 in a container)",
        ),
    ] = "127.0.0.1",
) -> None:
    """Run simulated poles: MQTT edge controllers against the broker at POLEGW_MQTT_URL,
    and the site's Modbus devices on their endpoints."""
    from gateway.core.profiles import load_catalog
    from gateway.core.site import parse_site
    from gateway.demo import modbus_endpoints, run_simulators
    from simulators.demo_site import demo_site
    from simulators.local_ports import map_to_local
    from simulators.modbus_devices import MODBUS_MODELS

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
        if modbus_local_base is not None:
            raise fail("--modbus-local-base: only with --site (the demo site uses --modbus-port)")
        try:
            site = demo_site(poles, modbus_base_port=modbus_port)
        except ValueError as exc:
            raise fail(f"--modbus-port {modbus_port}: {exc}") from None
    try:
        local = map_to_local(
            site, catalog, MODBUS_MODELS, base_port=modbus_local_base, host=modbus_local_host
        )
    except ConfigError as exc:
        raise fail(str(exc)) from None
    site = local.site
    for device_id, why in local.left_out.items():
        typer.echo(f"not simulated: Modbus device {device_id} ({why})")
    if local.moved:
        typer.echo("Modbus endpoints served on local ports:")
        typer.echo("\n".join(local.mapping_lines()))
    buses = modbus_endpoints(site)
    modbus = f" and Modbus devices on {len(buses)} buses" if buses else ""
    typer.echo(
        f"simulating {len(site.poles)} poles on {redacted_mqtt(settings.mqtt_url)}"
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
            other_ports="--modbus-port" if site_file is None else "--modbus-local-base",
            tls_files=(settings.mqtt_ca_file, settings.mqtt_cert_file, settings.mqtt_key_file),
        )
    )


@app.command()
def demo(
    poles: Annotated[int, typer.Option(min=1, max=9999, help="Number of demo poles")] = 20,
    data_dir: Annotated[
        Path, typer.Option(help="Where the embedded database keeps its data")
    ] = Path(".polegw-demo"),
    interval: Annotated[
        float,
        typer.Option(min=MIN_INTERVAL_S, help="Seconds between simulated telemetry messages"),
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
    use_database_anyway: Annotated[
        bool,
        typer.Option(
            "--use-database-anyway",
            help="Let the demo write its site, users, leases and bills into the database"
            " POLEGW_DATABASE_URL names even though it is not a demo database",
        ),
    ] = False,
) -> None:
    """Start everything on one machine: broker, database, simulators, gateway and API."""
    from gateway.demo import run_demo
    from gateway.embedded.postgres import kill_running

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
            use_database_anyway=use_database_anyway,
        ),
        on_hard_exit=kill_running,
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
    from gateway.adapters.billing_store import BillingStore, BillRunBusy, MonthNotEnded, dumps
    from gateway.core.auth import SYSTEM
    from gateway.core.profiles import load_catalog
    from gateway.core.tariffs import NoTariff
    from gateway.service import open_pool

    if not re.fullmatch(r"2[0-9]{3}-(0[1-9]|1[0-2])", month):
        raise fail(f"--period: {month!r} is not YYYY-MM (a year 2000-2999)")
    settings = settings_or_exit()
    setup_logging(settings.log_level)

    async def generate() -> list[tuple[dict[str, object], str]]:
        await check_database(settings.require_database_url())
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
    except BillRunBusy as exc:
        raise fail(f"--period: {exc}") from None
    except (OSError, psycopg.Error) as exc:
        raise fail(f"database: {(str(exc) or repr(exc)).splitlines()[0]}") from None
    for bill, outcome in results:
        typer.echo(
            f"{bill['tenant_id']} {month}: bill {bill['id']} {outcome},"
            f" total {bill['total_amount']} {bill['currency']}"
        )
    if not results:
        typer.echo(f"{month}: no lease in service, no bill")


handover_app = typer.Typer(
    help="Change of operator (运行单位变更): a signed package out, into a fresh installation.",
    no_args_is_help=True,
)
app.add_typer(handover_app, name="handover")


def _read_key(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise fail(f"{option} {path}: {exc.strerror or exc}") from None


def _cutover_time(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise fail(f"--cutover: {text!r} is not an ISO 8601 time") from None
    if at.tzinfo is None:
        raise fail(f"--cutover: {text!r} has no UTC offset (write e.g. 2026-11-16T00:00:00+08:00)")
    return at


@handover_app.command("keygen")
def handover_keygen(
    out: Annotated[Path, typer.Option(help="Folder for handover.key (private) and handover.pub")],
) -> None:
    """Make an Ed25519 key pair: sign with the .key, give the .pub to the incoming operator."""
    from gateway.core.handover import key_id, load_public_key, new_key_pair

    private, public = new_key_pair()
    out.mkdir(parents=True, exist_ok=True)
    key_path = out / "handover.key"
    if key_path.exists():
        raise fail(f"--out: {key_path} exists; not overwritten")
    key_path.write_bytes(private)
    key_path.chmod(0o600)
    (out / "handover.pub").write_bytes(public)
    typer.echo(f"{key_path} and {out / 'handover.pub'} ({key_id(load_public_key(public, ''))})")


@handover_app.command("export")
def handover_export(
    cutover: Annotated[str, typer.Option(help="The cut-over time, ISO 8601 with offset")],
    out: Annotated[Path, typer.Option(help="The package file to write (.zip)")],
    key: Annotated[Path, typer.Option(help="Ed25519 private key (PEM) to sign with")],
    record: Annotated[
        bool,
        typer.Option(help="Note the cut-over here, so this installation bills up to it only"),
    ] = True,
) -> None:
    """Write the handover package: every table, the cut-over reading of every port."""
    from gateway.core.profiles import load_catalog
    from gateway.errors import HandoverRefused
    from gateway.handover import export

    at = _cutover_time(cutover)
    private = _read_key(key, "--key")
    settings = settings_or_exit()
    try:
        asyncio.run(check_database(settings.require_database_url()))
        done = export(
            settings.require_database_url(),
            cutover=at,
            out=out,
            private_key_pem=private,
            key_file=f"--key {key}",
            catalog=load_catalog(settings.profiles_dir),
            profiles_dir=settings.profiles_dir,
            record=record,
        )
    except (HandoverRefused, ConfigError, SourceFileError) as exc:
        raise fail(f"handover export: {exc}") from None
    except OSError as exc:
        raise fail(f"handover export: {out}: {exc.strerror or exc}") from None
    except psycopg.Error as exc:
        raise fail(
            f"handover export: database: {(str(exc) or repr(exc)).splitlines()[0]}"
        ) from None
    tables = sum(1 for f in done.manifest.files if f.format == "jsonl" and f.table)
    rows = sum(f.rows for f in done.manifest.files if f.format == "jsonl" and f.table)
    typer.echo(
        f"{out}: {tables} tables, {rows} rows, {done.cutover_rows} cut-over readings,"
        f" schema {done.manifest.schema_version}, signed {done.manifest.signed_with}"
    )


@handover_app.command("import")
def handover_import(
    file: Annotated[Path, typer.Argument(help="The handover package")],
    public_key: Annotated[
        Path, typer.Option(help="The outgoing operator's public key (PEM), got from them directly")
    ],
    dry_run: Annotated[bool, typer.Option(help="Check and report, load nothing")] = False,
) -> None:
    """Verify the package and load it into this (fresh) installation in one transaction."""
    from gateway.errors import HandoverRefused
    from gateway.handover import import_package

    public = _read_key(public_key, "--public-key")
    settings = settings_or_exit()
    try:
        asyncio.run(check_database(settings.require_database_url()))
        done = import_package(
            settings.require_database_url(),
            file,
            public_key_pem=public,
            key_file=f"--public-key {public_key}",
            dry_run=dry_run,
        )
    except (HandoverRefused, ConfigError) as exc:
        raise fail(f"handover import: {exc}") from None
    except psycopg.Error as exc:
        raise fail(
            f"handover import: database: {(str(exc) or repr(exc)).splitlines()[0]}"
        ) from None
    verb = "would load" if dry_run else "loaded"
    for table, n in done.rows.items():
        typer.echo(f"{table}: {verb} {plural(n, 'row')}")
    for f in done.manifest.files:
        if f.format == "yaml":
            typer.echo(f"{f.name}: a device profile of the site; copy it into POLEGW_PROFILES_DIR")
    typer.echo(
        f"{file}: {verb} {sum(done.rows.values())} rows and {done.cutover_readings} cut-over"
        f" readings (cut-over {done.manifest.cutover.isoformat()})"
    )


backup_app = typer.Typer(
    help="Backups: the database (pg_dump, custom format) and the spool in one file."
)
app.add_typer(backup_app, name="backup")


@backup_app.callback(invoke_without_command=True)
def backup_create(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help="The backup file to write (.tar.gz)")] = None,
) -> None:
    """Write a backup of the database and the spool (`polegw backup --out FILE`)."""
    if ctx.invoked_subcommand is not None:
        return
    from gateway.backup import BackupError, backup

    if out is None:
        raise fail("backup: --out FILE is required")
    settings = settings_or_exit()
    try:
        asyncio.run(check_database(settings.require_database_url()))
        info = backup(
            settings.require_database_url(), settings.spool_dir, out, bin_dir=settings.pg_bin_dir
        )
    except (BackupError, ConfigError) as exc:
        raise fail(f"backup: {exc}") from None
    except psycopg.Error as exc:
        raise fail(f"backup: database: {(str(exc) or repr(exc)).splitlines()[0]}") from None
    except OSError as exc:
        raise fail(f"backup: {out}: {exc.strerror or exc}") from None
    spool = sum(1 for name in info.files if name.startswith("spool/"))
    typer.echo(f"{out}: database at schema {info.schema_version} and {plural(spool, 'spool file')}")


@backup_app.command("restore")
def backup_restore(
    file: Annotated[Path, typer.Argument(help="A file `polegw backup` wrote")],
) -> None:
    """Restore into an empty database (POLEGW_DATABASE_URL) and an empty POLEGW_SPOOL_DIR."""
    from gateway.backup import BackupError, restore

    settings = settings_or_exit()
    try:
        asyncio.run(check_database(settings.require_database_url()))
        manifest = restore(
            file, settings.require_database_url(), settings.spool_dir, bin_dir=settings.pg_bin_dir
        )
    except (BackupError, ConfigError) as exc:
        raise fail(f"backup restore: {exc}") from None
    except psycopg.Error as exc:
        raise fail(f"backup restore: database: {(str(exc) or repr(exc)).splitlines()[0]}") from None
    except OSError as exc:
        raise fail(f"backup restore: {exc.strerror or exc}") from None
    typer.echo(
        f"{file}: restored the database (schema {manifest['schema_version']}, taken"
        f" {manifest['created_at']}) and the spool into {settings.spool_dir}"
    )


# The meter-data ledger: gateway/cli_metering.py (registered here, defined there).
from gateway.cli_metering import metering_app  # noqa: E402

app.add_typer(metering_app, name="metering")
