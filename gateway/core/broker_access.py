"""Who may do what on the broker: MQTT identities, Mosquitto's password-file hash
and its ACL file, rendered from the credential store (pure; no I/O).

Every pole's edge controller logs in as its pole id and may publish only its own
topics (DESIGN.md section 5) and read only its own commands. The gateway, the
simulators and an operator's read-only monitor have identities of their own,
named `polegw-…` so that none can be taken for a pole.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "MOSQUITTO_ITERATIONS",
    "SERVICE_PREFIX",
    "Grant",
    "Identity",
    "Service",
    "check_pole_username",
    "mosquitto_hash",
    "mosquitto_verify",
    "new_secret",
    "render_acl",
    "render_password_file",
]

# mosquitto_passwd (2.x) writes "$7$" hashes: PBKDF2-HMAC-SHA512, 101 iterations,
# a 12-byte salt, the 64-byte key; salt and key in standard base64.
MOSQUITTO_ITERATIONS = 101
_SALT_BYTES = 12
SERVICE_PREFIX = "polegw-"
# A user name in a Mosquitto password file ends at the first ':', and ACL
# topics must not carry wildcards; pole ids (gateway.core.site.ID_PATTERN) may
# contain ':' — such a pole can still log in with a certificate.
_PASSWORD_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Service(StrEnum):
    """The identities that are not poles, and what each may do."""

    GATEWAY = "gateway"  # reads everything poles send, publishes commands
    SIMULATORS = "simulators"  # acts as every pole (test and demo sites)
    MONITOR = "monitor"  # an operator's read-only view of the site's traffic

    @property
    def username(self) -> str:
        return SERVICE_PREFIX + self.value


class Grant(StrEnum):
    """How an identity authenticates."""

    PASSWORD = "password"
    CERTIFICATE = "certificate"  # X.509, CN = user name (use_identity_as_username)


@dataclass(frozen=True, slots=True)
class Identity:
    """One MQTT user the broker knows: a pole (`service` None) or a service."""

    username: str
    service: Service | None = None
    password_hash: str | None = None  # None: certificate only


def check_pole_username(pole_id: str, grant: Grant) -> str | None:
    """Why `pole_id` cannot have a credential of this kind, or None."""
    if pole_id.startswith(SERVICE_PREFIX):
        return f"pole ids starting with {SERVICE_PREFIX!r} are reserved for polegw's own identities"
    if any(c in pole_id for c in "+#/") or not pole_id:
        return "an MQTT user name must not be empty or contain '+', '#' or '/'"
    if grant is Grant.PASSWORD and not _PASSWORD_USER.fullmatch(pole_id):
        return (
            "Mosquitto's password file cannot hold this id (a ':' ends the user name);"
            " give this pole a client certificate instead (polegw broker certs --pole)"
        )
    return None


def new_secret() -> str:
    """A 32-character URL-safe secret (192 bits): safe to put in an mqtt:// URL as is."""
    return secrets.token_urlsafe(24)


def mosquitto_hash(secret: str, *, salt: bytes | None = None) -> str:
    """The `$7$…` hash mosquitto_passwd would write for `secret`."""
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    key = hashlib.pbkdf2_hmac("sha512", secret.encode("utf-8"), salt, MOSQUITTO_ITERATIONS)
    b64 = base64.b64encode
    return f"$7${MOSQUITTO_ITERATIONS}${b64(salt).decode()}${b64(key).decode()}"


def mosquitto_verify(stored: str, secret: str) -> bool:
    """Whether `secret` matches a `$7$` hash (as the broker checks it)."""
    parts = stored.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        key = base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    got = hashlib.pbkdf2_hmac("sha512", secret.encode("utf-8"), salt, iterations)
    return secrets.compare_digest(got, key)


def render_password_file(identities: Iterable[Identity]) -> str:
    """Mosquitto's password file: `user:$7$…` for every identity with a password."""
    lines = sorted(
        f"{i.username}:{i.password_hash}" for i in identities if i.password_hash is not None
    )
    return "".join(line + "\n" for line in lines)


def _pole_rules(prefix: str, pole: str) -> list[str]:
    base = f"{prefix}/{pole}"
    return [
        f"topic write {base}/telemetry",
        f"topic write {base}/devices/+/telemetry",
        f"topic write {base}/events",
        f"topic write {base}/status",
        f"topic write {base}/commands/+/reply",
        f"topic read {base}/commands/+",
    ]


def _service_rules(prefix: str, service: Service) -> list[str]:
    if service is Service.GATEWAY:
        return [
            f"topic read {prefix}/+/telemetry",
            f"topic read {prefix}/+/devices/+/telemetry",
            f"topic read {prefix}/+/events",
            f"topic read {prefix}/+/status",
            f"topic read {prefix}/+/commands/+/reply",
            f"topic write {prefix}/+/commands/+",
        ]
    if service is Service.SIMULATORS:
        return _pole_rules(prefix, "+")
    return [f"topic read {prefix}/#", "topic read $SYS/#"]


def render_acl(identities: Iterable[Identity], prefix: str) -> str:
    """Mosquitto's ACL file. Anything not granted is refused: a publish to another
    pole's topic is dropped by the broker, a subscription to it receives nothing."""
    out = [
        "# Written by `polegw broker config`; do not edit (re-run it instead).",
        "# No rule outside a user block: an identity gets only what is listed under it.",
    ]
    for ident in sorted(identities, key=lambda i: (i.service is None, i.username)):
        rules = (
            _pole_rules(prefix, ident.username)
            if ident.service is None
            else _service_rules(prefix, ident.service)
        )
        out += ["", f"user {ident.username}", *rules]
    return "\n".join(out) + "\n"
