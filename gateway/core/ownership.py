"""Which leases a replica should hold: the pure part of sharing work between
gateway replicas (gateway/adapters/leases.py does the database side).

Work that must happen once is owned through named leases: leader roles
(`leader/alarms`, `leader/lighting`…) and Modbus buses (`bus/tcp:10.0.0.5:502`).
Each replica also holds `replica/{id}` while it is alive, so that every replica
knows how many share the work. Within a group of leases a replica takes free
ones until it holds its fair share (the group's size divided by the live
replicas, rounded up) and hands back those beyond it, so that a replica that
joins gets work and the work of one that dies is spread over the rest.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

REPLICA = "replica/"
LEADER = "leader/"
BUS = "bus/"
ADOPT = "adopt/"  # adopt/{id}: the replica ingesting a dead replica's MQTT session

# The jobs that run once across the replicas, each through its own leader lease
# (docs/scaling.md says why each is a leader and not partitioned).
LEADER_ROLES = (
    "alarms",  # alarm engine, offline detection, emergency protective actions
    "lighting",  # lighting dispatch
    "inspections",  # inspection scheduling
    "retention",  # retention and archive
    "metering",  # the meter-data ledger's worker
)


def leader(role: str) -> str:
    return LEADER + role


def bus(address: object) -> str:
    return f"{BUS}{address}"


def replica(holder: str) -> str:
    return REPLICA + holder


def adoption(holder: str) -> str:
    return ADOPT + holder


def gone(observed: Mapping[str, Observed], me: str) -> list[str]:
    """The replicas whose heartbeat lease has expired (killed, machine lost): the
    ids whose MQTT sessions another replica adopts (docs/scaling.md)."""
    return sorted(
        name[len(REPLICA) :]
        for name, row in observed.items()
        if name.startswith(REPLICA) and row.expired and name != REPLICA + me
    )


def group_of(name: str) -> str:
    """`leader`, `bus` or `replica`: the prefix before the first slash."""
    return name.split("/", 1)[0]


@dataclass(frozen=True)
class Observed:
    """A lease's row as a round of the keeper read it."""

    holder: str
    expired: bool


@dataclass(frozen=True)
class Plan:
    acquire: tuple[str, ...]  # free leases to try to take, best first
    release: tuple[str, ...]  # held leases to hand back (beyond the fair share)


def preference(holder: str, name: str) -> bytes:
    """A stable order of free leases that differs between replicas, so that
    replicas starting together mostly try different leases first."""
    return hashlib.blake2b(f"{holder}\0{name}".encode(), digest_size=8).digest()


def plan(
    *,
    me: str,
    wanted: Mapping[str, Iterable[str]],
    held: Iterable[str],
    observed: Mapping[str, Observed],
) -> Plan:
    """What to take and what to hand back, per group of `wanted` leases.

    `held` are the leases this replica holds now; `observed` every row read in
    this round (replica heartbeats included, a missing name being free)."""
    held_set = set(held)
    live = sum(1 for name, row in observed.items() if name.startswith(REPLICA) and not row.expired)
    live = max(1, live)  # (this replica, before its own heartbeat row exists)
    acquire: list[str] = []
    release: list[str] = []
    for names in wanted.values():
        group = sorted(set(names))
        if not group:
            continue
        fair = math.ceil(len(group) / live)
        mine = [n for n in group if n in held_set]
        # Leases no longer wanted (a bus removed from the site) go back too.
        free = [
            n
            for n in group
            if n not in held_set and ((row := observed.get(n)) is None or row.expired)
        ]
        free.sort(key=lambda n: preference(me, n))
        if len(mine) < fair:
            acquire.extend(free[: fair - len(mine)])
        elif len(mine) > fair:
            mine.sort(key=lambda n: preference(me, n), reverse=True)
            release.extend(mine[: len(mine) - fair])
    all_wanted = {n for names in wanted.values() for n in names}
    release.extend(sorted(n for n in held_set - all_wanted if not n.startswith(REPLICA)))
    return Plan(tuple(acquire), tuple(release))
