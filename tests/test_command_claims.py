"""Commands across replicas in the database (gateway/adapters/command_store.py):
one claim wins, a reply is recorded only for the command's own device and pole,
the commands of a replica that is gone are failed (sent) or handed back (not
started), and a restarted replica abandons only its own commands."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.adapters.command_store import CommandStore
from tests.support import POLES

TTL = 3.0
POLE = POLES[0]
DEVICE = f"{POLE}-lamp"


async def state(pool: AsyncConnectionPool, cid: uuid.UUID) -> tuple[str, str | None, str | None]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT state, claimed_by, error FROM device_commands WHERE id = %s", (cid,)
        )
        row = await cur.fetchone()
    assert row is not None
    return row[0], row[1], row[2]


async def heartbeat(pool: AsyncConnectionPool, replica: str, *, alive: bool) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO gateway_leases (name, holder, token, acquired_at, renewed_at, expires_at)"
            " VALUES (%s, %s, 1, now(), now(), now() + make_interval(secs => %s))"
            " ON CONFLICT (name) DO UPDATE SET expires_at = excluded.expires_at",
            (f"replica/{replica}", replica, 60 if alive else -60),
        )


async def claimed_long_ago(pool: AsyncConnectionPool, cid: uuid.UUID, *, sent: bool) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE device_commands SET claimed_at = now() - interval '1 minute',"
            " state = CASE WHEN %s THEN 'sent' ELSE state END WHERE id = %s",
            (sent, cid),
        )


async def test_one_claim_wins(pool: AsyncConnectionPool) -> None:
    a = CommandStore(pool, replica="claim-a", lease_ttl_s=TTL)
    b = CommandStore(pool, replica="claim-b", lease_ttl_s=TTL)
    row = await a.create(DEVICE, "switch_on", {}, claim=False)
    assert (await state(pool, row["id"]))[1] is None
    got = await asyncio.gather(*(s.claim(row["id"], within_s=60) for s in (a, b, a, b)))
    winners = [g for g in got if g is not None]
    assert len(winners) == 1
    assert (await state(pool, row["id"]))[1] in ("claim-a", "claim-b")
    # Too late: a command older than `within_s` is not claimed.
    late = await a.create(DEVICE, "switch_on", {}, claim=False)
    await asyncio.sleep(0.05)
    assert await b.claim(late["id"], within_s=0.01) is None


async def test_reply_recorded_only_for_its_device_and_pole(pool: AsyncConnectionPool) -> None:
    sender = CommandStore(pool, replica="reply-a", lease_ttl_s=TTL)
    other = CommandStore(pool, replica="reply-b", lease_ttl_s=TTL)
    row = await sender.create(DEVICE, "switch_on", {})
    await sender.sent(row["id"])
    cid = row["id"]
    wrong_device = {"pole_id": POLE, "device_id": f"{POLE}-env"}
    wrong_pole = {"pole_id": POLES[1], "device_id": DEVICE}
    for where in (wrong_device, wrong_pole):
        assert not await other.replied(cid, ok=True, error=None, **where)
    assert (await state(pool, cid))[0] == "sent"
    assert await other.replied(cid, pole_id=POLE, device_id=DEVICE, ok=False, error="locked")
    assert await state(pool, cid) == ("failed", "reply-a", "locked")
    # Recorded once: neither a second reply nor the sender's own timeout changes it.
    assert not await other.replied(cid, pole_id=POLE, device_id=DEVICE, ok=True, error=None)
    assert not await sender.finished(cid, "timed_out", error="no reply")
    assert (await state(pool, cid))[0] == "failed"
    # A command nobody claimed (waiting for its bus's owner) takes no reply.
    waiting = await sender.create(DEVICE, "switch_on", {}, claim=False)
    assert not await other.replied(
        waiting["id"], pole_id=POLE, device_id=DEVICE, ok=True, error=None
    )


async def test_commands_of_a_gone_replica(pool: AsyncConnectionPool) -> None:
    gone = CommandStore(pool, replica="sweep-gone", lease_ttl_s=TTL)
    alive = CommandStore(pool, replica="sweep-alive", lease_ttl_s=TTL)
    await heartbeat(pool, "sweep-gone", alive=False)
    await heartbeat(pool, "sweep-alive", alive=True)
    sent = (await gone.create(DEVICE, "switch_on", {}))["id"]
    await claimed_long_ago(pool, sent, sent=True)
    unstarted = (await gone.create(DEVICE, "switch_on", {}))["id"]
    await claimed_long_ago(pool, unstarted, sent=False)
    just_claimed = (await gone.create(DEVICE, "switch_on", {}))["id"]  # within a TTL
    alive_sent = (await alive.create(DEVICE, "switch_on", {}))["id"]
    await claimed_long_ago(pool, alive_sent, sent=True)
    unclaimed_old = (await alive.create(DEVICE, "switch_on", {}, claim=False))["id"]
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE device_commands SET created_at = now() - interval '1 hour' WHERE id = %s",
            (unclaimed_old,),
        )

    failed, back, late = await alive.sweep_gone(within_s=60)
    assert (failed, back, late) == (1, 1, 1)
    s, _, error = await state(pool, sent)
    assert s == "failed"
    assert "sweep-gone" in str(error)
    assert await state(pool, unstarted) == ("pending", None, None)
    assert (await state(pool, just_claimed))[:2] == ("pending", "sweep-gone")
    assert (await state(pool, alive_sent))[:2] == ("sent", "sweep-alive")
    assert (await state(pool, unclaimed_old))[0] == "timed_out"


@pytest.mark.parametrize("replicated", [True, False])
async def test_restart_abandons_only_its_own(pool: AsyncConnectionPool, replicated: bool) -> None:
    async with pool.connection() as conn:  # a clean slate for this test's counts
        await conn.execute(
            "UPDATE device_commands SET state = 'failed' WHERE state IN ('pending', 'sent')"
        )
    before = CommandStore(pool, replica="restart-me", lease_ttl_s=TTL)
    mine = (await before.create(DEVICE, "switch_on", {}))["id"]
    others = (await CommandStore(pool, replica="restart-other").create(DEVICE, "x", {}))["id"]
    waiting = (await before.create(DEVICE, "switch_on", {}, claim=False))["id"]
    after = CommandStore(pool, replica="restart-me" if replicated else None, lease_ttl_s=TTL)
    this_run = (await after.create(DEVICE, "switch_on", {}))["id"]
    abandoned = await after.abandon_unfinished()
    assert (await state(pool, this_run))[0] == "pending"
    assert (await state(pool, mine))[0] == "failed"
    if replicated:  # another replica's, and one waiting for its bus's owner, stay
        assert abandoned == 1
        assert (await state(pool, others))[0] == "pending"
        assert (await state(pool, waiting))[0] == "pending"
    else:  # one gateway: everything the last run left
        assert abandoned == 3
