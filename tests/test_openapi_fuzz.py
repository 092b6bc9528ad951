"""schemathesis against the running gateway's own OpenAPI document: no generated
request, valid or not, gets a server error (5xx) from any route.

The gateway runs as `polegw run` in a subprocess (as in production), on a
migrated database with a small site, and the calls carry an admin's token so
they reach the routes' own validation rather than stopping at 401.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.support import TEST_SECRET, auth_headers, free_port, prepare_database_sync

# Bounded so the suite stays quick; raise it locally for a deeper search:
# POLEGW_FUZZ_EXAMPLES=200 scripts/test tests/test_openapi_fuzz.py
EXAMPLES = int(os.environ.get("POLEGW_FUZZ_EXAMPLES", "12"))


@pytest.fixture(scope="module")
def running_api(
    database_url: str, mqtt_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, dict[str, str]]]:
    prepare_database_sync(database_url)
    port = free_port()
    env = {
        **os.environ,
        "POLEGW_DATABASE_URL": database_url,
        "POLEGW_MQTT_URL": mqtt_url,
        "POLEGW_MQTT_TOPIC_PREFIX": f"fuzz-{port}/poles",
        "POLEGW_MQTT_CLIENT_ID": f"fuzz-{port}",
        "POLEGW_MQTT_SESSION_EXPIRY_S": "60",
        "POLEGW_API_PORT": str(port),
        "POLEGW_SECRET_KEY": TEST_SECRET,
        "POLEGW_LOG_LEVEL": "WARNING",
        # Fuzzed logins must not lock the fuzzer out of the token route.
        "POLEGW_LOGIN_MAX_FAILURES": "1000000",
        # Nor the per-user limit keep it from the exports' and bill runs' own checks.
        "POLEGW_API_EXPENSIVE_PER_MIN": "0",
    }
    folder = tmp_path_factory.mktemp("fuzz")
    env["POLEGW_SPOOL_DIR"] = str(folder / "spool")
    log = folder / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, Path(log).read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the gateway did not get ready"
            time.sleep(0.2)
        yield base, auth_headers(database_url)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = Path(log).read_text()
    assert "Traceback" not in text, text[-5000:]


def test_no_route_answers_a_server_error(running_api: tuple[str, dict[str, str]]) -> None:
    """Every operation, with schema-valid and with schema-breaking requests."""
    base, headers = running_api
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [
        op
        for op in (result.ok() for result in schema.get_all_operations())  # type: ignore[union-attr]
        # An event stream never ends (a keepalive every 15 s): tests/test_live_events.py.
        if op.path != "/api/v1/events"
    ]
    assert len(operations) > 10
    failures: list[str] = []
    calls = 0

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )
            def check(case: schemathesis.Case) -> None:  # type: ignore[type-arg]
                nonlocal calls
                calls += 1
                response = case.call(base_url=base, headers=headers, timeout=30)
                if response.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path} {case.query or ''}"
                        f" -> {response.status_code}: {response.text[:300]}"
                    )

            try:
                check()
            except Exception as exc:  # a strategy that cannot generate (e.g. negative of an enum)
                if "Unsatisfiable" not in type(exc).__name__:
                    raise
    assert calls >= 2 * len(operations)  # every operation was exercised
    assert not failures, "\n".join(failures[:20])
