"""The suite's own fixtures work: databases come and go, topics stay apart, the broker answers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import aiomqtt
import psycopg
import pytest

CONFTEST = Path(__file__).with_name("conftest.py")
TEST_DATABASE_PREFIX = "polegw_test_"


def _database_exists(admin_url: str, name: str) -> bool:
    with psycopg.connect(admin_url) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def test_database_url_is_a_new_empty_database(database_url: str, pg_admin_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        name = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()[0]  # type: ignore[index]
        conn.execute("CREATE TABLE scratch (id int PRIMARY KEY)")
    assert name.startswith(TEST_DATABASE_PREFIX)
    assert name != "postgres"
    assert tables == 0
    assert _database_exists(pg_admin_url, name)


def test_fresh_database_url_differs_from_module_database(
    database_url: str, fresh_database_url: str
) -> None:
    assert fresh_database_url != database_url
    with psycopg.connect(fresh_database_url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()[0]  # type: ignore[index]
    assert tables == 0  # the previous test's table lives in database_url only


def test_databases_are_dropped_afterwards(tmp_path: Path, pg_admin_url: str) -> None:
    """Run an inner pytest session with this conftest and check its databases are gone."""
    names = tmp_path / "names.txt"
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(
            f"""
            import psycopg

            def _record(url):
                with psycopg.connect(url) as conn:
                    name = conn.execute("SELECT current_database()").fetchone()[0]
                with open({str(names)!r}, "a") as f:
                    f.write(name + "\\n")

            def test_module(database_url):
                _record(database_url)

            def test_fresh(fresh_database_url):
                _record(fresh_database_url)

            def test_fresh_again(fresh_database_url):
                _record(fresh_database_url)
            """
        )
    )
    env = {**os.environ, "POLEGW_TEST_DATABASE_URL": pg_admin_url}
    inner = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert inner.returncode == 0, inner.stdout + inner.stderr
    created = names.read_text().split()
    assert len(created) == 3
    assert len(set(created)) == 3
    for name in created:
        assert name.startswith(TEST_DATABASE_PREFIX)
        assert not _database_exists(pg_admin_url, name), f"{name} was not dropped"


def test_migrated_database_url_has_the_schema(migrated_database_url: str) -> None:
    with psycopg.connect(migrated_database_url) as conn:
        version = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert version is not None


_seen_prefixes: set[str] = set()


@pytest.mark.parametrize("run", range(20))
def test_topic_prefix_is_unique_per_test(run: int, topic_prefix: str) -> None:
    """The same test 20 times over: each run gets a prefix of its own."""
    assert topic_prefix.startswith("test-")
    assert topic_prefix.endswith("/poles")
    assert not set(topic_prefix) & {"#", "+"}
    assert topic_prefix not in _seen_prefixes
    _seen_prefixes.add(topic_prefix)


def test_mqtt_url_points_at_the_broker(mqtt_url: str, mqtt_broker: Any) -> None:
    assert mqtt_url.startswith(("mqtt://", "mqtts://"))
    assert mqtt_broker.url == mqtt_url
    assert mqtt_broker.port > 0


async def test_broker_round_trip_stays_under_the_prefix(
    mqtt_broker: Any, topic_prefix: str
) -> None:
    """A QoS 1 message published under our prefix comes back; nothing else does."""
    tls = aiomqtt.TLSParameters() if mqtt_broker.tls else None
    async with aiomqtt.Client(
        mqtt_broker.host,
        mqtt_broker.port,
        username=mqtt_broker.username,
        password=mqtt_broker.password,
        tls_params=tls,
    ) as client:
        await client.subscribe(f"{topic_prefix}/#", qos=1)
        await client.publish(f"{topic_prefix}/pole-1/telemetry", b'{"seq": 1}', qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                assert str(message.topic) == f"{topic_prefix}/pole-1/telemetry"
                assert message.payload == b'{"seq": 1}'
                break
