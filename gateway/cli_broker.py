"""`polegw pole credentials …` and `polegw broker …`: device identity on the broker.

The secret of a pole or service is printed once (or written to --secret-file) and
stored only as its Mosquitto hash. The broker learns of a change when
`polegw broker config` has rewritten its files and it is sent SIGHUP.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import psycopg
import typer

from gateway.core.broker_access import Service

if TYPE_CHECKING:
    from gateway.adapters.mqtt_credentials import CredentialStore

pole_app = typer.Typer(help="A pole's identity on the MQTT broker.", no_args_is_help=True)
credentials_app = typer.Typer(
    help="A pole's MQTT secret: issue, rotate, revoke (shown once).", no_args_is_help=True
)
pole_app.add_typer(credentials_app, name="credentials")
broker_app = typer.Typer(
    help="Mosquitto's password, ACL and TLS files for the site.", no_args_is_help=True
)
service_app = typer.Typer(
    help="The MQTT secret of polegw's own services (gateway, simulators, monitor).",
    no_args_is_help=True,
)
broker_app.add_typer(service_app, name="credentials")

RELOAD_HINT = (
    "then rewrite the broker's files with `polegw broker config --out DIR`"
    " and reload the broker: `kill -HUP $(pidof mosquitto)`"
    " (compose: `docker compose kill -s HUP mosquitto`)"
)

SecretFile = Annotated[
    Path | None,
    typer.Option(
        "--secret-file",
        help="Write the secret to this file (mode 0600) instead of standard output",
    ),
]


def _store() -> CredentialStore:
    from gateway.adapters.mqtt_credentials import CredentialStore
    from gateway.cli import fail, settings_or_exit
    from gateway.errors import ConfigError

    settings = settings_or_exit()
    try:
        return CredentialStore(settings.require_database_url())
    except ConfigError as exc:
        raise fail(str(exc)) from None


def _writable(path: Path) -> bool:
    if path.exists():
        return path.is_file() and os.access(path, os.W_OK)
    return path.parent.is_dir() and os.access(path.parent, os.W_OK)


def _run(action: str, target: str | Service, secret_file: Path | None = None) -> None:
    from gateway.adapters.broker_config import write_private
    from gateway.adapters.mqtt_credentials import CredentialError
    from gateway.cli import fail

    store = _store()
    user = target.username if isinstance(target, Service) else target
    if secret_file is not None and not _writable(secret_file):
        # Before the secret is made: one that cannot be delivered would be lost.
        raise fail(f"--secret-file {secret_file}: cannot write there")
    try:
        if action == "revoke":
            changed = store.revoke(target)
            typer.echo(f"{user}: revoked" if changed else f"{user}: was revoked already", err=True)
            typer.echo(RELOAD_HINT, err=True)
            return
        secret = store.issue(target) if action == "issue" else store.rotate(target)
    except CredentialError as exc:
        raise fail(str(exc)) from None
    except psycopg.Error as exc:
        raise fail(f"database: {(str(exc) or repr(exc)).splitlines()[0]}") from None
    verb = "issued" if action == "issue" else "rotated"
    if secret_file is not None:
        try:
            write_private(secret_file, (secret + "\n").encode(), 0o600)
        except OSError as exc:
            raise fail(f"--secret-file {secret_file}: {exc}") from None
        typer.echo(f"{user}: secret {verb}, written to {secret_file}", err=True)
    else:
        typer.echo(secret)
        typer.echo(
            f"{user}: secret {verb}; it is shown this once (only its hash is kept)."
            f" The client logs in as user {user!r} with it,"
            f" e.g. mqtts://{user}:<secret>@broker:8883",
            err=True,
        )
    typer.echo(RELOAD_HINT, err=True)


PoleId = Annotated[str, typer.Argument(help="The pole's id (its MQTT user name)")]


@credentials_app.command("issue")
def pole_issue(pole_id: PoleId, secret_file: SecretFile = None) -> None:
    """Make the pole's first secret (refused if it has one: use rotate)."""
    _run("issue", pole_id, secret_file)


@credentials_app.command("rotate")
def pole_rotate(pole_id: PoleId, secret_file: SecretFile = None) -> None:
    """Replace the pole's secret; the old one works until the broker reloads."""
    _run("rotate", pole_id, secret_file)


@credentials_app.command("revoke")
def pole_revoke(pole_id: PoleId) -> None:
    """Withdraw the pole's secret and certificate; it is cut off when the broker reloads."""
    _run("revoke", pole_id)


ServiceName = Annotated[Service, typer.Argument(help="gateway, simulators or monitor")]


@service_app.command("issue")
def service_issue(service: ServiceName, secret_file: SecretFile = None) -> None:
    """Make a service's first secret (user polegw-<service>)."""
    _run("issue", service, secret_file)


@service_app.command("rotate")
def service_rotate(service: ServiceName, secret_file: SecretFile = None) -> None:
    """Replace a service's secret."""
    _run("rotate", service, secret_file)


@service_app.command("revoke")
def service_revoke(service: ServiceName) -> None:
    """Withdraw a service's secret."""
    _run("revoke", service)


@broker_app.command("config")
def broker_config(
    out: Annotated[Path, typer.Option("--out", help="Folder to write passwd, acl, polegw.conf")],
    config_dir: Annotated[
        Path | None,
        typer.Option(help="Where the broker reads these files (default: --out)"),
    ] = None,
    certs_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the broker reads ca.crt, server.crt, server.key (default: --out/certs)"
        ),
    ] = None,
    tls_port: Annotated[int, typer.Option(min=1, max=65535)] = 8883,
    x509_port: Annotated[
        int,
        typer.Option(
            min=0, max=65535, help="TLS listener for client certificates (CN = user); 0: none"
        ),
    ] = 8884,
    plain_port: Annotated[
        int,
        typer.Option(min=0, max=65535, help="An unencrypted listener on --plain-host; 0: none"),
    ] = 0,
    plain_host: Annotated[str, typer.Option(help="Address of the unencrypted listener")] = (
        "127.0.0.1"
    ),
    bind: Annotated[
        str | None, typer.Option(help="Address the TLS listeners bind (default: all)")
    ] = None,
) -> None:
    """Write Mosquitto's password file, ACL file and a conf part from the credential store.
    Idempotent; reload the broker afterwards (SIGHUP)."""
    from gateway.adapters.broker_config import Listeners, write_broker_config
    from gateway.cli import fail, settings_or_exit

    settings = settings_or_exit()
    store = _store()
    where = (config_dir or out).absolute()
    listen = Listeners(
        config_dir=where,
        certs_dir=(certs_dir or where / "certs").absolute(),
        tls_port=tls_port,
        x509_port=x509_port or None,
        plain=(plain_host, plain_port) if plain_port else None,
        bind=bind,
    )
    try:
        identities = store.identities()
    except psycopg.Error as exc:
        raise fail(f"database: {(str(exc) or repr(exc)).splitlines()[0]}") from None
    try:
        files = write_broker_config(out, identities, settings.mqtt_topic_prefix, listen)
    except OSError as exc:
        raise fail(f"--out {out}: {exc}") from None
    poles = sum(1 for i in identities if i.service is None)
    typer.echo(
        f"wrote {', '.join(str(f) for f in files)}: {poles} poles,"
        f" {len(identities) - poles} services"
    )


@broker_app.command("certs")
def broker_certs(
    out: Annotated[Path, typer.Option("--out", help="Folder of the CA and certificates")],
    server_name: Annotated[
        list[str] | None,
        typer.Option(help="The broker's DNS name or IP address (repeat); makes server.crt"),
    ] = None,
    pole: Annotated[
        list[str] | None, typer.Option(help="A pole to give a client certificate (repeat)")
    ] = None,
    client: Annotated[
        list[Service] | None,
        typer.Option(help="A service to give a client certificate (repeat)"),
    ] = None,
    days: Annotated[int, typer.Option(min=1, max=3650, help="Validity of new certificates")] = (
        825
    ),
) -> None:
    """Make a private CA (kept in --out and reused) and certificates signed by it:
    the broker's, and clients' whose CN is their MQTT user name."""
    from gateway.adapters.broker_config import (
        SERVER_CERT,
        SERVER_KEY,
        issue_certificate,
        load_or_make_ca,
    )
    from gateway.adapters.mqtt_credentials import CredentialError
    from gateway.cli import fail

    if not (server_name or pole or client):
        raise fail("name at least one --server-name, --pole or --client")
    targets: list[str | Service] = [*(pole or []), *(client or [])]
    store = _store() if targets else None
    try:
        for target in targets:  # refuse an unknown pole before writing anything
            if store is not None and not isinstance(target, Service):
                store.check_pole(target)
        ca = load_or_make_ca(out)
        made = [str(out / "ca.crt")]
        if server_name:
            issue_certificate(
                ca,
                server_name[0],
                out / SERVER_CERT,
                out / SERVER_KEY,
                server_names=server_name,
                days=days,
            )
            made.append(str(out / SERVER_CERT))
        for target in targets:
            name = target.username if isinstance(target, Service) else target
            clients = out / "clients"
            issued = issue_certificate(
                ca, name, clients / f"{name}.crt", clients / f"{name}.key", days=days
            )
            if store is not None:
                store.record_certificate(target, issued.sha256)
            made.append(str(issued.cert))
    except CredentialError as exc:
        raise fail(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise fail(f"--out {out}: {exc}") from None
    except psycopg.Error as exc:
        raise fail(f"database: {(str(exc) or repr(exc)).splitlines()[0]}") from None
    typer.echo("wrote " + ", ".join(made))
    if targets:
        typer.echo("Client certificates are recorded; " + RELOAD_HINT, err=True)


def provisioning_hint(pole_ids: list[str], database_url: str) -> None:
    """Say which poles cannot log in to the broker yet, and how to provision them."""
    from gateway.adapters.mqtt_credentials import CredentialStore

    try:
        missing = CredentialStore(database_url).poles_without_credential(pole_ids)
    except psycopg.Error as exc:
        typer.echo(f"polegw: could not check the poles' MQTT credentials: {exc}", err=True)
        return
    if not missing:
        return
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    typer.echo(
        f"{len(missing)} poles have no MQTT credential yet ({shown}). Provision each with"
        " `polegw pole credentials issue POLE_ID` (the secret goes to the pole's edge"
        " controller) or a client certificate (`polegw broker certs --out DIR --pole POLE_ID`),"
        " then `polegw broker config --out DIR` and reload the broker (SIGHUP)."
    )
