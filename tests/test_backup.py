"""`polegw backup` and `polegw backup restore` (issue 14): a site with data and a
spool holding batches the database has not had yet comes back whole, with real
pg_dump and pg_restore."""

from __future__ import annotations

import io
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from gateway.adapters.spool import FullPolicy, Spool
from gateway.backup import BackupError, read_backup
from gateway.cli import app
from tests.conftest import _temporary_database
from tests.support import add_user, prepare_database_sync

TABLES = ("poles", "devices", "tenants", "users", "telemetry", "audit_log", "archive_history")


def contents(url: str) -> dict[str, list[str]]:
    with psycopg.connect(url) as conn:
        return {
            t: [
                r[0]
                for r in conn.execute(
                    f"SELECT to_jsonb(x)::text FROM {t} x ORDER BY to_jsonb(x)::text"
                ).fetchall()
            ]
            for t in (*TABLES, "alembic_version")
        }


def test_backup_and_restore_round_trip(
    pg_admin_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir, max_bytes=10**6, policy=FullPolicy.BLOCK)
    spool.append(b"batch one", 3)
    spool.append(b"batch two", 5)
    spool.close()
    runner = CliRunner()
    out = tmp_path / "site.tar.gz"
    with _temporary_database(pg_admin_url) as site, _temporary_database(pg_admin_url) as fresh:
        prepare_database_sync(site)
        add_user(site, "operator", name="li")
        t0 = datetime(2026, 11, 1, tzinfo=UTC)
        with psycopg.connect(site) as conn:
            conn.cursor().executemany(
                "INSERT INTO telemetry (ts, device_id, metric, value) VALUES (%s, %s, %s, %s)",
                [(t0 + timedelta(minutes=i), "P0001-lamp", "power_w", i * 1.5) for i in range(50)],
            )
        monkeypatch.setenv("POLEGW_DATABASE_URL", site)
        monkeypatch.setenv("POLEGW_SPOOL_DIR", str(spool_dir))
        made = runner.invoke(app, ["backup", "--out", str(out)])
        assert made.exit_code == 0, made.output
        assert "2 spool files" not in made.output  # the WAL is inside the snapshot
        assert "1 spool file" in made.output

        restored_spool = tmp_path / "restored-spool"
        monkeypatch.setenv("POLEGW_DATABASE_URL", fresh)
        monkeypatch.setenv("POLEGW_SPOOL_DIR", str(restored_spool))
        done = runner.invoke(app, ["backup", "restore", str(out)])
        assert done.exit_code == 0, done.output
        assert contents(fresh) == contents(site)
        assert len(contents(fresh)["telemetry"]) == 50
        # Restoring over data is refused in one line.
        again = runner.invoke(app, ["backup", "restore", str(out)])
        assert again.exit_code != 0
        assert "not empty" in again.output
        assert again.output.strip().count("\n") == 0
    back = Spool(restored_spool, max_bytes=10**6, policy=FullPolicy.BLOCK)
    try:
        assert back.depth.batches == 2
        first = back.oldest()
        assert first is not None
        assert first[1] == b"batch one"
    finally:
        back.close()


def test_a_changed_backup_is_refused(pg_admin_url: str, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    with _temporary_database(pg_admin_url) as site:
        prepare_database_sync(site)
        from gateway.backup import backup

        out = backup(site, spool_dir, tmp_path / "b.tar.gz").path
    with tarfile.open(out, "r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    dump = members["database.dump"]
    members["database.dump"] = dump[:100] + bytes([dump[100] ^ 1]) + dump[101:]
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(BackupError, match=r"database\.dump: SHA-256 does not match"):
        read_backup(bad)
