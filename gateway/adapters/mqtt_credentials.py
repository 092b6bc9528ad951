"""The MQTT credential store (table mqtt_credentials, migration 0020).

A secret is generated here, returned once to be shown, and only its Mosquitto
hash is stored. Every change is one short transaction on one row, so rotating or
revoking one pole never touches another's.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from gateway.adapters.db import libpq_url
from gateway.core.broker_access import (
    Grant,
    Identity,
    Service,
    check_pole_username,
    mosquitto_hash,
    new_secret,
)


class CredentialError(Exception):
    """A credential operation refused; the message says why and what to do."""


def _username(target: str | Service) -> str:
    return target.username if isinstance(target, Service) else target


class CredentialStore:
    """Synchronous (the CLI's short commands); opens one connection per call."""

    def __init__(self, database_url: str) -> None:
        self._url = libpq_url(database_url)

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(self._url, connect_timeout=10, row_factory=dict_row)

    def _check_pole(self, conn: psycopg.Connection[dict[str, Any]], pole_id: str, g: Grant) -> None:
        if conn.execute("SELECT 1 FROM poles WHERE id = %s", (pole_id,)).fetchone() is None:
            raise CredentialError(f"no pole {pole_id!r} (import it with `polegw site import`)")
        problem = check_pole_username(pole_id, g)
        if problem is not None:
            raise CredentialError(f"pole {pole_id!r}: {problem}")

    def issue(self, target: str | Service) -> str:
        """A new secret for a pole or service that has no active one; returns it."""
        user = _username(target)
        secret = new_secret()
        with self._connect() as conn, conn.transaction():
            if not isinstance(target, Service):
                self._check_pole(conn, target, Grant.PASSWORD)
            row = conn.execute(
                "SELECT password_hash FROM mqtt_credentials WHERE username = %s FOR UPDATE",
                (user,),
            ).fetchone()
            if row is not None and row["password_hash"] is not None:
                raise CredentialError(
                    f"{user!r} has a secret already: `rotate` replaces it, `revoke` withdraws it"
                )
            conn.execute(
                "INSERT INTO mqtt_credentials (username, pole_id, service, password_hash)"
                " VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (username) DO UPDATE SET password_hash = EXCLUDED.password_hash,"
                " issued_at = now(), rotated_at = NULL, revoked_at = NULL",
                (
                    user,
                    None if isinstance(target, Service) else target,
                    target.value if isinstance(target, Service) else None,
                    mosquitto_hash(secret),
                ),
            )
        return secret

    def rotate(self, target: str | Service) -> str:
        """Replace an active secret with a new one; the old one stops working once
        the broker re-reads its password file."""
        user = _username(target)
        secret = new_secret()
        with self._connect() as conn, conn.transaction():
            done = conn.execute(
                "UPDATE mqtt_credentials SET password_hash = %s, rotated_at = now()"
                " WHERE username = %s AND password_hash IS NOT NULL AND revoked_at IS NULL",
                (mosquitto_hash(secret), user),
            ).rowcount
        if not done:
            raise CredentialError(f"{user!r} has no active secret to rotate (use `issue`)")
        return secret

    def revoke(self, target: str | Service) -> bool:
        """Withdraw the secret and certificate; False when there was nothing active."""
        user = _username(target)
        with self._connect() as conn, conn.transaction():
            exists = conn.execute(
                "SELECT 1 FROM mqtt_credentials WHERE username = %s", (user,)
            ).fetchone()
            if exists is None:
                raise CredentialError(f"{user!r} has no credential to revoke")
            done = conn.execute(
                "UPDATE mqtt_credentials SET password_hash = NULL, cert_sha256 = NULL,"
                " revoked_at = now() WHERE username = %s AND revoked_at IS NULL",
                (user,),
            ).rowcount
        return bool(done)

    def check_pole(self, pole_id: str) -> None:
        """Refuse (CredentialError) a pole that is unknown or cannot be a user name."""
        with self._connect() as conn:
            self._check_pole(conn, pole_id, Grant.CERTIFICATE)

    def record_certificate(self, target: str | Service, sha256: str) -> None:
        """A client certificate was issued (its CN is the user name)."""
        user = _username(target)
        with self._connect() as conn, conn.transaction():
            if not isinstance(target, Service):
                self._check_pole(conn, target, Grant.CERTIFICATE)
            conn.execute(
                "INSERT INTO mqtt_credentials (username, pole_id, service, cert_sha256)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (username) DO UPDATE"
                " SET cert_sha256 = EXCLUDED.cert_sha256, revoked_at = NULL",
                (
                    user,
                    None if isinstance(target, Service) else target,
                    target.value if isinstance(target, Service) else None,
                    sha256,
                ),
            )

    def identities(self) -> list[Identity]:
        """Every identity with an active secret or certificate."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT username, service, password_hash FROM mqtt_credentials"
                " WHERE revoked_at IS NULL"
                " AND (password_hash IS NOT NULL OR cert_sha256 IS NOT NULL)"
                " ORDER BY username"
            ).fetchall()
        return [
            Identity(
                r["username"],
                Service(r["service"]) if r["service"] else None,
                r["password_hash"],
            )
            for r in rows
        ]

    def poles_without_credential(self, pole_ids: list[str]) -> list[str]:
        """Those of `pole_ids` that have no active secret or certificate."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT username FROM mqtt_credentials WHERE username = ANY(%s)"
                " AND revoked_at IS NULL"
                " AND (password_hash IS NOT NULL OR cert_sha256 IS NOT NULL)",
                (pole_ids,),
            ).fetchall()
        have = {r["username"] for r in rows}
        return [p for p in pole_ids if p not in have]
