"""`polegw demo` writes only into a demo database (DESIGN.md section 3; issue 16 item 1):
the embedded one, one it marked, or an empty one it marks; never a database with
tables and no mark, unless told --use-database-anyway."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from gateway.demo_database import MARK_TABLE, Claim, claim_database
from gateway.errors import ConfigError
from tests.support import free_port


def relations(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND relkind IN ('r', 'v') ORDER BY relname"
        ).fetchall()
    return [r[0] for r in rows]


def production_like(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE poles (id text PRIMARY KEY, height_m real)")
        conn.execute("INSERT INTO poles VALUES ('P0001', 12)")


async def test_an_empty_database_is_taken_and_marked(fresh_database_url: str) -> None:
    assert await claim_database(fresh_database_url, ours=False) is Claim.TAKEN
    assert relations(fresh_database_url) == [MARK_TABLE]
    # Marked: taken again, whatever the demo has put in it since.
    production_like(fresh_database_url)
    assert await claim_database(fresh_database_url, ours=False) is Claim.MARKED


async def test_a_database_with_tables_and_no_mark_is_refused_untouched(
    fresh_database_url: str,
) -> None:
    production_like(fresh_database_url)
    with pytest.raises(ConfigError, match=r"not a polegw demo database.*--use-database-anyway"):
        await claim_database(fresh_database_url, ours=False)
    assert relations(fresh_database_url) == ["poles"]
    # Told to: used, and still not marked (the next run must be told again).
    assert await claim_database(fresh_database_url, ours=False, anyway=True) is Claim.ANYWAY
    assert relations(fresh_database_url) == ["poles"]


async def test_the_demos_own_database_is_marked(fresh_database_url: str) -> None:
    production_like(fresh_database_url)  # e.g. an embedded one made by an older polegw
    assert await claim_database(fresh_database_url, ours=True) is Claim.MARKED
    assert MARK_TABLE in relations(fresh_database_url)


def test_the_demo_refuses_a_production_database_in_one_line(
    fresh_database_url: str, tmp_path: Path
) -> None:
    """The issue's case: production settings exported in the shell."""
    production_like(fresh_database_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLEGW_")}
    env |= {
        "POLEGW_DATABASE_URL": fresh_database_url,
        "POLEGW_MQTT_URL": "mqtt://127.0.0.1:9",
        "POLEGW_MQTT_CLIENT_ID": "polegw-gateway",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "demo",
            "--poles",
            "2",
            "--data-dir",
            str(tmp_path / "demo"),
            "--modbus-port",
            str(free_port()),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "is not a polegw demo database" in line
    assert relations(fresh_database_url) == ["poles"]
    with psycopg.connect(fresh_database_url) as conn:
        assert conn.execute("SELECT height_m FROM poles").fetchall() == [(12,)]
