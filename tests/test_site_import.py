"""`polegw site import` and its counts: a first import creates, never "updates"
(issue 16, items 19 and 20)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.adapters.site_store import import_site
from gateway.core.site import CapacitySpec
from gateway.demo import with_capacity
from simulators.demo_site import demo_site


@pytest.fixture
def migrated_fresh(fresh_database_url: str) -> str:
    from gateway.adapters.migrate import upgrade

    upgrade(fresh_database_url)
    return fresh_database_url


async def test_a_first_import_with_capacity_counts_created_rows_only(migrated_fresh: str) -> None:
    site = with_capacity(demo_site(3))
    rows = len(site.tenants) + sum(
        1 + len(p.devices) + len(p.slots) + len(p.compartments) + len(p.ports) for p in site.poles
    )
    first = await import_site(migrated_fresh, site)
    assert (first.created, first.updated, first.unchanged) == (rows, 0, 0)
    again = await import_site(migrated_fresh, site)
    assert (again.created, again.updated, again.unchanged) == (0, 0, rows)
    # A pole whose budget alone changes is one updated row.
    pole = site.poles[0].model_copy(
        update={"capacity": CapacitySpec(max_load_kg=99, max_wind_area_m2=1.5, power_budget_w=2500)}
    )
    changed = site.model_copy(update={"poles": [pole, *site.poles[1:]]})
    third = await import_site(migrated_fresh, changed)
    assert (third.created, third.updated, third.unchanged) == (0, 1, rows - 1)


def polegw(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLEGW_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_dry_run_counts_in_good_english(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(
        "tenants:\n  - {id: tn-a, name: A}\n"
        "poles:\n  - id: P1\n    devices:\n      - {id: d1, profile: lamp-controller}\n"
    )
    result = polegw("site", "import", "--dry-run", str(site))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{site}: valid: 1 tenant, 1 pole, 1 device"


def test_an_empty_site_file_is_refused(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("")
    result = polegw("site", "import", str(site))
    assert result.returncode == 2
    assert "no tenants and no poles" in result.stderr
    assert "created" not in result.stdout
