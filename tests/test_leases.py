"""Leases in PostgreSQL (gateway/adapters/leases.py): one holder per lease, a fair
share per replica, takeover after a holder's loss within the TTL, at once after
a graceful hand-back, and never two holders using a lease at the same moment."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import psycopg
import pytest

from gateway.adapters.leases import LeaseKeeper, LeaseLost
from gateway.core.ownership import Observed, plan
from tests.support import eventually

TTL = 3.0


class Running:
    def __init__(self, keeper: LeaseKeeper) -> None:
        self.keeper = keeper
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(keeper.run(self.stop))

    async def kill(self) -> None:
        """As a SIGKILL would: no hand-back, the rows are left to expire."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def shutdown(self) -> None:
        self.stop.set()
        await self.task
        await self.keeper.release_all()


@contextlib.asynccontextmanager
async def keepers(url: str, *names: str, roles: list[str]) -> AsyncIterator[list[Running]]:
    running = []
    for name in names:
        keeper = LeaseKeeper(url, name, ttl_s=TTL)
        keeper.want("leader", lambda: [f"leader/{r}" for r in roles])
        running.append(Running(keeper))
    try:
        yield running
    finally:
        for r in running:
            await r.kill()


def holders(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT name, holder FROM gateway_leases WHERE expires_at > now()"
        ).fetchall()
    return {str(n): str(h) for n, h in rows}


def test_plan_takes_a_fair_share_and_hands_back_the_rest() -> None:
    wanted = {"leader": [f"leader/{i}" for i in range(5)]}
    live = {f"replica/{r}": Observed(r, expired=False) for r in ("a", "b")}
    first = plan(me="a", wanted=wanted, held=[], observed=live)
    assert len(first.acquire) == 3
    assert not first.release
    taken = {n: Observed("a", False) for n in first.acquire}
    second = plan(me="b", wanted=wanted, held=[], observed=live | taken)
    assert set(second.acquire) == set(wanted["leader"]) - set(first.acquire)
    # A third replica joins: a holds one more than its share, and hands it back.
    more = live | {"replica/c": Observed("c", False)} | taken
    third = plan(me="a", wanted=wanted, held=first.acquire, observed=more)
    assert len(third.release) == 1
    assert not third.acquire
    # An expired row is free; a lease no longer wanted goes back.
    gone = plan(
        me="a",
        wanted={"leader": ["leader/0"]},
        held=["leader/9"],
        observed={"leader/0": Observed("b", expired=True)},
    )
    assert gone.acquire == ("leader/0",)
    assert gone.release == ("leader/9",)


async def test_each_lease_has_one_holder_and_the_work_is_shared(
    migrated_database_url: str,
) -> None:
    url = migrated_database_url
    roles = ["a", "b", "c", "d"]
    async with keepers(url, "r1", "r2", roles=roles) as (one, two):
        await eventually(
            lambda: (
                len([n for n in holders(url) if n.startswith("leader/")]) == 4
                and one.keeper.live_replicas == 2
                and sum(one.keeper.holds(f"leader/{r}") for r in roles) == 2
                and sum(two.keeper.holds(f"leader/{r}") for r in roles) == 2
            ),
            within=TTL * 4,
            what="two leases each",
        )
        for r in roles:
            assert one.keeper.holds(f"leader/{r}") != two.keeper.holds(f"leader/{r}")
        assert sorted(one.keeper.owned()["leader"] + two.keeper.owned()["leader"]) == roles


async def test_a_killed_holders_leases_are_taken_over_within_the_ttl(
    migrated_database_url: str,
) -> None:
    url = migrated_database_url
    async with keepers(url, "k1", "k2", roles=["x", "y"]) as (one, two):
        await eventually(
            lambda: (
                one.keeper.holds("leader/x") != two.keeper.holds("leader/x")
                and one.keeper.holds("leader/y") != two.keeper.holds("leader/y")
            ),
            within=TTL * 4,
            what="the roles shared",
        )
        killed_at = time.monotonic()
        await one.kill()
        await eventually(
            lambda: two.keeper.holds("leader/x") and two.keeper.holds("leader/y"),
            within=TTL * 3,
            what="the survivor holding both",
        )
        assert time.monotonic() - killed_at < TTL + TTL  # expiry plus one round at most


async def test_a_graceful_stop_hands_back_at_once(migrated_database_url: str) -> None:
    url = migrated_database_url
    async with keepers(url, "g1", roles=["only"]) as (one,):
        await eventually(lambda: one.keeper.holds("leader/only"), within=TTL * 2, what="held")
        two = LeaseKeeper(url, "g2", ttl_s=TTL)
        two.want("leader", lambda: ["leader/only"])
        second = Running(two)
        try:
            await asyncio.sleep(TTL / 2)
            assert not two.holds("leader/only")
            stopped_at = time.monotonic()
            await one.shutdown()
            await eventually(lambda: two.holds("leader/only"), within=TTL, what="taken over")
            assert time.monotonic() - stopped_at < TTL / 2 + 0.5
        finally:
            await second.kill()


async def test_two_jobs_never_overlap_across_a_takeover(migrated_database_url: str) -> None:
    """The old holder's job stops before the new holder's starts, even when the
    old one is cut off from the database (its renewals stop, it keeps running)."""
    url = migrated_database_url
    running: list[str] = []
    overlaps: list[list[str]] = []

    def job_of(name: str):  # type: ignore[no-untyped-def]
        async def job() -> None:
            running.append(name)
            if len(running) > 1:
                overlaps.append(list(running))
            try:
                await asyncio.Event().wait()
            finally:
                running.remove(name)

        return job

    one = LeaseKeeper(url, "o1", ttl_s=TTL)
    two = LeaseKeeper(url, "o2", ttl_s=TTL)
    stop = asyncio.Event()
    for keeper in (one, two):
        keeper.want("leader", lambda: ["leader/bus-like"])
    jobs = [
        asyncio.create_task(one.while_held("leader/bus-like", job_of("o1"), stop)),
        asyncio.create_task(two.while_held("leader/bus-like", job_of("o2"), stop)),
    ]
    first = Running(one)
    await eventually(lambda: running == ["o1"], within=TTL * 2, what="o1 working")
    second = Running(two)
    await asyncio.sleep(TTL)
    assert running == ["o1"]
    # o1's database goes away: its keeper stops renewing (the task is frozen in
    # a way the watchdog still sees, as a partition would leave it).
    await first.kill()
    one_watch = asyncio.create_task(one._watch_deadlines(stop))
    await eventually(lambda: running == ["o2"], within=TTL * 3, what="o2 took over")
    assert overlaps == []
    stop.set()
    await second.kill()
    for task in [*jobs, one_watch]:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_fence_refuses_a_lease_that_is_not_ours(migrated_database_url: str) -> None:
    url = migrated_database_url
    async with keepers(url, "f1", roles=["fenced"]) as (one,):
        await eventually(lambda: one.keeper.holds("leader/fenced"), within=TTL * 2, what="held")
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await one.keeper.fence(conn, "leader/fenced")
            await conn.rollback()
            other = LeaseKeeper(url, "f2", ttl_s=TTL)
            with pytest.raises(LeaseLost):
                await other.fence(conn, "leader/fenced")
