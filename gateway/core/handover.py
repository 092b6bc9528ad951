"""Handover package (运行单位变更): the manifest, its signature, the checks an
importing installation makes, the order tables load in, and the cut-over meter
reading of a port. Pure: bytes and values in, values out (docs/decisions.md,
"Change of operator, backups and clocks").

A package is a zip of `manifest.json`, `manifest.sig` (Ed25519 over the exact
bytes of manifest.json) and the files the manifest lists, each with its SHA-256:
so the signature covers every byte of every file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, ValidationError

from gateway.core import metering as mt
from gateway.errors import HandoverRefused

FORMAT = "polegw-handover"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
CUTOVER_FILE = "cutover_readings.jsonl"
# A cut-over value is kept to the micro-kWh (the telemetry column is a float).
CUTOVER_PLACES = Decimal("0.000001")
# Columns that hold credentials are never exported (users' password hashes, API
# key and pole secrets, whatever a later migration names so).
_SECRET = re.compile(r"(^|_)(password|secret|token|salt)(_|$)|_hash$|^hash$")
# Written into a NOT NULL credential column on import: matches no password.
LOCKED = "!handover: set a new one"

How = Literal["measured", "interpolated", "last_before", "first_after", "none"]


def is_secret_column(name: str) -> bool:
    return _SECRET.search(name) is not None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- manifest


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnInfo(_Model):
    name: str
    type: str


class FileEntry(_Model):
    name: str
    sha256: str
    bytes: int
    format: Literal["jsonl", "csv", "yaml"]
    table: str | None = None  # the table it holds; None: cut-over readings, a profile
    rows: int
    columns: list[ColumnInfo]
    description: str


class Manifest(_Model):
    format: Literal["polegw-handover"]
    format_version: int
    schema_version: str
    created_at: datetime
    cutover: datetime
    signed_with: str  # "ed25519:<sha256 of the raw public key>"
    files: list[FileEntry]
    tables: list[str]  # in the order they load (parents before children)
    omitted_tables: dict[str, str]  # table -> why it is not carried
    omitted_columns: dict[str, list[str]]  # table -> credential columns left out


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + sha256_hex(raw)


def load_private_key(pem: bytes, where: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise HandoverRefused(f"{where}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise HandoverRefused(f"{where}: not an Ed25519 key")
    return key


def load_public_key(pem: bytes, where: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise HandoverRefused(f"{where}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise HandoverRefused(f"{where}: not an Ed25519 public key")
    return key


def new_key_pair() -> tuple[bytes, bytes]:
    """(private PEM, public PEM) of a new Ed25519 key."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def verify_package(
    members: Mapping[str, bytes],
    public: Ed25519PublicKey,
    *,
    known_versions: Iterable[str],
    this_version: str,
) -> Manifest:
    """The package's manifest once its signature, every file's hash and its schema
    version have been checked; HandoverRefused (one line) at the first problem."""
    manifest_bytes = members.get(MANIFEST)
    signature = members.get(SIGNATURE)
    if manifest_bytes is None or signature is None:
        missing = MANIFEST if manifest_bytes is None else SIGNATURE
        raise HandoverRefused(f"not a handover package: {missing} is missing")
    try:
        public.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise HandoverRefused(
            f"{MANIFEST}: the signature does not match (wrong key, or the manifest was changed)"
        ) from None
    try:
        manifest = Manifest.model_validate_json(manifest_bytes)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise HandoverRefused(f"{MANIFEST}: {where}: {first['msg']}") from None
    if manifest.format_version != FORMAT_VERSION:
        raise HandoverRefused(
            f"{MANIFEST}: format version {manifest.format_version} is not {FORMAT_VERSION}"
        )
    if manifest.signed_with != key_id(public):
        raise HandoverRefused(f"{MANIFEST}: signed_with names another key")
    if manifest.schema_version not in set(known_versions):
        raise HandoverRefused(
            f"unknown schema version {manifest.schema_version!r}: this polegw knows up to"
            f" {this_version!r}; import with a polegw that has that migration"
        )
    if manifest.schema_version != this_version:
        raise HandoverRefused(
            f"schema version {manifest.schema_version!r} is not this database's"
            f" {this_version!r}: bring both installations to the same version first"
        )
    listed = {f.name for f in manifest.files}
    extra = sorted(set(members) - listed - {MANIFEST, SIGNATURE})
    if extra:
        raise HandoverRefused(f"{extra[0]}: in the package but not in the manifest")
    for entry in manifest.files:
        data = members.get(entry.name)
        if data is None:
            raise HandoverRefused(f"{entry.name}: listed in the manifest but missing")
        if len(data) != entry.bytes or sha256_hex(data) != entry.sha256:
            raise HandoverRefused(f"{entry.name}: SHA-256 does not match the manifest (changed)")
    return manifest


# --------------------------------------------------------------------------- tables


def load_order(tables: Sequence[str], parents: Mapping[str, Iterable[str]]) -> list[str]:
    """Tables with every table they reference before them (a reference to itself
    or into a cycle is left to the rows' own order: by primary key)."""
    done: list[str] = []
    seen: set[str] = set()
    visiting: set[str] = set()

    def visit(t: str) -> None:
        if t in seen or t in visiting:
            return
        visiting.add(t)
        for p in sorted(parents.get(t, ())):
            if p != t and p in tables:
                visit(p)
        visiting.discard(t)
        seen.add(t)
        done.append(t)

    for t in sorted(tables):
        visit(t)
    return done


# --------------------------------------------------------------------------- cut-over


@dataclass(frozen=True, slots=True)
class CutoverReading:
    """A port's counter at the cut-over and how it was obtained."""

    value: Decimal | None
    how: How
    before: mt.Reading | None  # the readings it comes from
    after: mt.Reading | None
    flags: frozenset[mt.Flag] = frozenset()

    @property
    def flagged(self) -> bool:
        """Not read off the meter at the cut-over itself."""
        return self.how != "measured"


def cutover_reading(
    readings: Sequence[mt.Reading],
    at: datetime,
    *,
    rated_w: Decimal,
    modulus: Decimal | None,
    replacements: Sequence[mt.Replacement] = (),
) -> CutoverReading:
    """The counter at `at` as the outgoing installation's billing sees it: a
    reading at `at` itself (measured); else the reading before plus the share of
    the metered interval across `at` that falls before it (interpolated, the
    same pro rata share `metering.clip` bills up to the cut-over), wrapped at
    the modulus; else the last reading before (its energy up to `at` falls to the
    incoming side) or the first after."""
    before = [r for r in readings if r.ts < at]
    after = [r for r in readings if r.ts > at]
    exact = [r for r in readings if r.ts == at]
    prev = before[-1] if before else None
    nxt = after[0] if after else None
    if exact:
        return CutoverReading(exact[0].value, "measured", exact[0], exact[0])
    if prev is not None and nxt is not None:
        metered = mt.meter(
            readings, rated_w=rated_w, modulus=modulus, replacements=replacements, max_gap=_NO_GAP
        )
        for iv in metered.intervals:
            if iv.start < at < iv.end:
                part = mt.clip(iv, iv.start, at)
                share = part.kwh if part is not None else mt.ZERO
                base = next(r.value for r in readings if r.ts == iv.start)
                value = base + share
                if modulus is not None and value >= modulus:
                    value -= modulus
                return CutoverReading(
                    value.quantize(CUTOVER_PLACES).normalize(),
                    "interpolated",
                    mt.Reading(iv.start, base),
                    nxt,
                    iv.flags,
                )
    if prev is not None:
        return CutoverReading(prev.value, "last_before", prev, None)
    if nxt is not None:
        return CutoverReading(nxt.value, "first_after", None, nxt)
    return CutoverReading(None, "none", None, None)


# Across the cut-over two readings a day apart still make one interval to share.
_NO_GAP = timedelta(days=3650)


def reading_json(r: mt.Reading | None) -> dict[str, Any] | None:
    return None if r is None else {"ts": r.ts.isoformat(), "value": str(r.value)}
