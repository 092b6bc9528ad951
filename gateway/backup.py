"""`polegw backup` and `polegw backup restore`: the database (pg_dump, custom
format) and the spool in one tar, with a manifest of SHA-256s.

The spool is a SQLite database in WAL mode that the gateway may be writing:
it is copied with SQLite's online backup (a consistent snapshot, WAL included),
never as raw files. On TimescaleDB the restore brackets pg_restore with
`timescaledb_pre_restore()` / `timescaledb_post_restore()`, as Timescale's
documentation asks.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sqlite3
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from gateway.adapters.db import libpq_url
from gateway.errors import PolegwError

FORMAT = "polegw-backup"
MANIFEST = "manifest.json"
DUMP = "database.dump"
SPOOL = "spool/"


class BackupError(PolegwError):
    """A backup or restore that cannot go on; one line saying why."""


def pg_tool(name: str, bin_dir: Path | None = None) -> str:
    """pg_dump or pg_restore: from `bin_dir` (POLEGW_PG_BIN_DIR), else the newest
    /usr/lib/postgresql/*/bin (Debian keeps them off PATH), else PATH."""
    if bin_dir is not None:
        path = bin_dir / name
        if not os.access(path, os.X_OK):
            raise BackupError(f"POLEGW_PG_BIN_DIR: no {name} in {bin_dir}")
        return str(path)

    def major(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.parent.name))

    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=major)
    if found:
        return str(found[-1])
    from shutil import which

    on_path = which(name)
    if on_path is None:
        raise BackupError(
            f"{name} not found: install the PostgreSQL client or set POLEGW_PG_BIN_DIR"
        )
    return on_path


def _run(args: list[str], what: str) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise BackupError(f"{what}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        raise BackupError(f"{what} failed: {lines[0] if lines else f'exit {done.returncode}'}")
    return done.stdout


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class BackupInfo:
    path: Path
    schema_version: str | None
    files: dict[str, str]  # name in the tar -> sha256


def _spool_files(spool_dir: Path, work: Path) -> dict[str, bytes]:
    """The spool folder's files; SQLite databases through the online backup."""
    out: dict[str, bytes] = {}
    if not spool_dir.is_dir():
        return out
    for path in sorted(p for p in spool_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(spool_dir).as_posix()
        if rel.endswith(("-wal", "-shm", "-journal")):
            continue  # inside the snapshot of their database
        if path.suffix in (".sqlite3", ".sqlite", ".db"):
            copy = work / "spool-copy.sqlite3"
            copy.unlink(missing_ok=True)
            src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            dst = sqlite3.connect(copy)
            try:
                src.backup(dst)
            except sqlite3.Error as exc:
                raise BackupError(f"spool {path}: {exc}") from None
            finally:
                dst.close()
                src.close()
            out[SPOOL + rel] = copy.read_bytes()
        else:
            out[SPOOL + rel] = path.read_bytes()
    return out


def backup(
    database_url: str, spool_dir: Path, out: Path, *, bin_dir: Path | None = None
) -> BackupInfo:
    pg_dump = pg_tool("pg_dump", bin_dir)
    with psycopg.connect(libpq_url(database_url), connect_timeout=10) as conn:
        try:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            version = None if row is None else str(row[0])
        except psycopg.errors.UndefinedTable:
            version = None
    with tempfile.TemporaryDirectory(prefix="polegw-backup-") as tmp:
        work = Path(tmp)
        dump = work / DUMP
        _run(
            [pg_dump, "--format=custom", "--no-owner", f"--file={dump}", libpq_url(database_url)],
            "pg_dump",
        )
        files = {DUMP: dump.read_bytes(), **_spool_files(spool_dir, work)}
    tool = _run([pg_dump, "--version"], "pg_dump --version").strip()
    manifest = {
        "format": FORMAT,
        "format_version": 1,
        "created_at": datetime.now(UTC).isoformat(),
        "schema_version": version,
        "pg_dump": tool,
        "files": {name: _sha256(data) for name, data in files.items()},
    }
    tmp_out = out.with_name(out.name + ".partial")
    with tarfile.open(tmp_out, "w:gz") as tar:
        for name, data in [(MANIFEST, json.dumps(manifest, indent=2).encode()), *files.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(datetime.now(UTC).timestamp())
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp_out, out)
    return BackupInfo(out, version, manifest["files"])  # type: ignore[arg-type]


def read_backup(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest and the files, every SHA-256 checked."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            files: dict[str, bytes] = {}
            for member in tar.getmembers():
                f = tar.extractfile(member) if member.isfile() else None
                if f is None:
                    raise BackupError(f"{path}: {member.name}: not a plain file")
                files[member.name] = f.read()
    except OSError as exc:
        raise BackupError(f"{path}: {exc.strerror or exc}") from None
    except (tarfile.TarError, EOFError) as exc:
        raise BackupError(f"{path}: not a readable backup ({exc})") from None
    try:
        manifest = json.loads(files.pop(MANIFEST))
    except (KeyError, ValueError):
        raise BackupError(f"{path}: {MANIFEST} is missing or not JSON") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{path}: not a polegw backup")
    listed: dict[str, str] = manifest.get("files", {})
    if set(listed) != set(files) or DUMP not in files:
        raise BackupError(f"{path}: the files do not match the manifest")
    for name, data in files.items():
        if _sha256(data) != listed[name]:
            raise BackupError(f"{path}: {name}: SHA-256 does not match the manifest")
    return manifest, files


def restore(
    path: Path, database_url: str, spool_dir: Path, *, bin_dir: Path | None = None
) -> dict[str, Any]:
    """Into an empty database and an empty spool folder (refused otherwise)."""
    manifest, files = read_backup(path)
    pg_restore = pg_tool("pg_restore", bin_dir)
    spool = {name.removeprefix(SPOOL): data for name, data in files.items() if name != DUMP}
    if spool_dir.is_dir() and any(spool_dir.iterdir()):
        raise BackupError(f"spool folder {spool_dir} is not empty: restore into an empty one")
    url = libpq_url(database_url)
    with psycopg.connect(url, connect_timeout=10, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"
            " AND relkind IN ('r', 'p', 'v')"
        ).fetchone()
        if row is not None and row[0]:
            raise BackupError("the database is not empty: restore into a new one (createdb)")
    with tempfile.TemporaryDirectory(prefix="polegw-restore-") as tmp:
        dump = Path(tmp) / DUMP
        dump.write_bytes(files[DUMP])
        listing = _run([pg_restore, "--list", str(dump)], "pg_restore --list")
        timescale = re.search(r"EXTENSION - timescaledb\b", listing) is not None
        if timescale:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                conn.execute("SELECT timescaledb_pre_restore()")
        try:
            _run(
                [pg_restore, "--no-owner", "--exit-on-error", f"--dbname={url}", str(dump)],
                "pg_restore",
            )
        finally:
            if timescale:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("SELECT timescaledb_post_restore()")
    for rel, data in spool.items():
        target = spool_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return manifest
