"""The emergency policy: alarms that open emergencies, and protective actions.

`EmergencyPolicy` is an AlarmListener: an alarm whose rule names an emergency
type (`emergency:` in the profile; SOS, water, leakage, smoke) opens an emergency
on its pole, or joins the one of that type already open there, inside the
alarm's transaction. The protective actions configured for the type are planned
on the pole's devices and stored as pending (`emergency_actions`) in that same
transaction, so they survive a crash. `ProtectiveActions` issues them as tracked
device commands, and retries each one that fails or times out with back-off
until it succeeds or `max_attempts` are spent; the first issue and a final
failure (or a success after failures) go in the emergency's timeline ("action").
Its loop resumes pending actions after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.adapters import audit, emergency_store
from gateway.backoff import Backoff
from gateway.commands import CommandDispatcher
from gateway.core.alarms import Rule
from gateway.core.auth import SYSTEM, Principal
from gateway.core.emergencies import DEFAULT_ACTIONS, plan_actions
from gateway.core.profiles import CommandRefused
from gateway.core.registry import Registry
from gateway.ops_events import AlarmEvent

log = logging.getLogger(__name__)

SYSTEM_AUTHOR = "system (gateway)"

TITLES = {
    "collision_tilt": "Collision / tilt",
    "flooding": "Flooding",
    "leakage": "Electrical leakage",
    "fire_smoke": "Fire / smoke",
    "sos_call": "SOS call",
    "power_outage": "Large-area outage",
    "severe_weather": "Severe weather",
}

Conn = psycopg.AsyncConnection[Any]


async def plan(
    conn: Conn, registry: Callable[[], Registry], pole_id: str, actions: Sequence[str]
) -> list[dict[str, Any]]:
    """The commands carrying out `actions` on the pole's devices, checked against
    their profiles (a command a profile refuses is logged and left out)."""
    if not actions:
        return []
    device_ids = await emergency_store.pole_devices(conn, pole_id)
    reg = registry()
    refs = {d: ref for d in device_ids if (ref := reg.device(d)) is not None}
    steps: list[dict[str, Any]] = []
    for step in plan_actions(actions, [(d, ref.profile.commands) for d, ref in refs.items()]):
        ref = refs[step.device_id]
        checked = ref.profile.commands[step.command].check_args(step.args)
        if isinstance(checked, CommandRefused):  # a profile that does not fit: log, go on
            log.error("protective %s on %s refused: %s", step.command, ref.id, checked)
            continue
        steps.append(
            {
                "action": step.action,
                "device_id": step.device_id,
                "command": step.command,
                "args": step.args,
            }
        )
    return steps


async def record_plan(
    conn: Conn,
    *,
    registry: Callable[[], Registry],
    dispatcher: CommandDispatcher | None,
    emergency_id: int,
    pole_id: str,
    actions: Sequence[str],
    actor: Principal = SYSTEM,
) -> int:
    """In the emergency's transaction: its protective actions, stored as pending
    (audited as "protect"); without a dispatcher (a process that does not run
    commands) they are only noted in the timeline as not sent. The count planned."""
    steps = await plan(conn, registry, pole_id, actions)
    if not steps:
        return 0
    author = SYSTEM_AUTHOR if actor is SYSTEM else actor.name
    if dispatcher is None:
        for data in steps:
            text = f"{data['action']}: {data['command']} on {data['device_id']} not sent"
            await emergency_store.add_entry(conn, emergency_id, "action", author, text, data)
    else:
        await emergency_store.add_actions(conn, emergency_id, steps, by=author)
    await audit.append(conn, actor, "protect", "emergency", emergency_id, after={"actions": steps})
    return len(steps)


async def protect(
    *,
    pool: AsyncConnectionPool,
    registry: Callable[[], Registry],
    dispatcher: CommandDispatcher | None,
    emergency_id: int,
    pole_id: str,
    actions: Sequence[str],
    actor: Principal = SYSTEM,
) -> list[dict[str, Any]]:
    """For an emergency already committed (one opened by hand): store `actions`
    as pending and issue them now; the gateway's ProtectiveActions loop retries
    any that fail. Returns the command records issued."""
    if not actions:
        return []
    async with pool.connection() as conn, conn.transaction():
        planned = await record_plan(
            conn,
            registry=registry,
            dispatcher=dispatcher,
            emergency_id=emergency_id,
            pole_id=pole_id,
            actions=actions,
            actor=actor,
        )
    if not planned or dispatcher is None:
        return []
    issuer = ProtectiveActions(pool=pool, registry=registry, dispatcher=dispatcher)
    return await issuer.issue_due(emergency_id=emergency_id)


class ProtectiveActions:
    """Issues the pending protective actions and retries the failed ones.

    An attempt submits the device command and marks the action running; when
    the command ends, the action succeeds, or is retried after a back-off
    (`retry_first_s`, doubling, up to `retry_cap_s`, with jitter) until
    `max_attempts` attempts have failed, when it fails for good with a timeline
    entry. An attempt whose command has no outcome after `stale_after_s` (its
    outcome could not be recorded) counts as failed. Actions of an emergency no
    longer open are cancelled. Rows are claimed with FOR UPDATE SKIP LOCKED, so
    a second issuer (a request opening an emergency by hand) never sends the
    same attempt twice. A command a restart abandoned counts as a failed
    attempt; an action pending at a crash is issued when the loop starts again.
    """

    def __init__(
        self,
        *,
        pool: AsyncConnectionPool,
        registry: Callable[[], Registry],
        dispatcher: CommandDispatcher,
        max_attempts: int = 5,
        retry_first_s: float = 5.0,
        retry_cap_s: float = 120.0,
        poll_s: float = 1.0,
        stale_after_s: float = 600.0,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._pool = pool
        self._registry = registry
        self._dispatcher = dispatcher
        self._max_attempts = max_attempts
        self._retry_first_s = retry_first_s
        self._retry_cap_s = retry_cap_s
        self._poll_s = poll_s
        self._stale_after_s = stale_after_s
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Actions were stored: look now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Settle and issue forever (cancel to stop)."""
        backoff = Backoff(first=0.5, cap=10.0)
        while True:
            delay = self._poll_s
            try:
                await self.step()
                backoff.reset()
            except (psycopg.OperationalError, PoolTimeout) as exc:
                log.warning("protective actions waiting for the database: %s", exc)
                delay = backoff.next_delay()
            except Exception:  # a background loop's edge: log, keep going
                log.exception("protective actions: step failed")
                delay = backoff.next_delay()
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def step(self) -> None:
        """Take the outcome of finished attempts, then issue what is due."""
        await self.settle()
        await self.issue_due()

    def _retry_delay(self, attempts: int) -> float:
        delay = min(self._retry_cap_s, self._retry_first_s * 2 ** min(attempts - 1, 32))
        return self._rng.uniform(delay / 2, delay)

    async def settle(self) -> int:
        """Running actions whose command has ended: succeeded, retry later, or
        failed for good. Returns how many were settled."""
        async with self._pool.connection() as conn, conn.transaction():
            rows = await emergency_store.finished_attempts(
                conn, stale_after_s=self._stale_after_s, limit=200
            )
            for row in rows:
                await self._settle_one(conn, row)
        return len(rows)

    async def _settle_one(self, conn: Conn, row: dict[str, Any]) -> None:
        aid, eid, attempts = int(row["id"]), int(row["emergency_id"]), int(row["attempts"])
        what = f"{row['action']}: {row['command']} {row['args']} to {row['device_id']}"
        data = {
            "action": row["action"],
            "device_id": row["device_id"],
            "command": row["command"],
            "args": row["args"],
            "command_id": str(row["command_id"]),
            "attempts": attempts,
        }
        if row["outcome"] == "succeeded":
            await emergency_store.action_ended(conn, aid, "succeeded")
            if attempts > 1:
                await emergency_store.add_entry(
                    conn,
                    eid,
                    "action",
                    row["requested_by"],
                    f"{what} succeeded at attempt {attempts}",
                    {**data, "outcome": "succeeded"},
                )
            return
        if row["outcome"] is None:
            error = "the command's record is gone"
        elif row["outcome"] in ("pending", "sent"):
            error = f"{row['outcome']}: no outcome within {self._stale_after_s:g}s"
        else:
            error = f"{row['outcome']}: {row['command_error'] or 'no detail'}"
        if row["emergency_state"] != "open":
            await emergency_store.action_ended(conn, aid, "cancelled", error)
        elif attempts >= self._max_attempts:
            await emergency_store.action_ended(conn, aid, "failed", error)
            await emergency_store.add_entry(
                conn,
                eid,
                "action",
                row["requested_by"],
                f"{what} FAILED after {attempts} attempts ({error})",
                {**data, "outcome": "failed", "error": error},
            )
            log.error("protective action %s of emergency %s failed: %s", aid, eid, error)
        else:
            delay = self._retry_delay(attempts)
            await emergency_store.action_retry(conn, aid, error, delay)
            log.warning(
                "protective action %s of emergency %s: attempt %d %s; again in %.1fs",
                aid,
                eid,
                attempts,
                error,
                delay,
            )

    async def issue_due(self, *, emergency_id: int | None = None) -> list[dict[str, Any]]:
        """Submit the due pending actions (of one emergency, or all); returns the
        command records."""
        issued: list[dict[str, Any]] = []
        async with self._pool.connection() as conn, conn.transaction():
            rows = await emergency_store.due_actions(conn, emergency_id=emergency_id, limit=200)
            reg = self._registry()
            for row in rows:
                aid, eid = int(row["id"]), int(row["emergency_id"])
                if row["emergency_state"] != "open":
                    await emergency_store.action_ended(conn, aid, "cancelled")
                    continue
                what = f"{row['action']}: {row['command']} {row['args']} to {row['device_id']}"
                data: dict[str, Any] = {
                    "action": row["action"],
                    "device_id": row["device_id"],
                    "command": row["command"],
                    "args": row["args"],
                }
                sent = await emergency_store.unrecorded_attempt(conn, row)
                if sent is not None:  # submitted by an issuer that stopped before recording it
                    command_id = sent["id"]
                    log.warning(
                        "protective action %s of emergency %s: command %s was sent already;"
                        " its outcome is awaited, not sent again",
                        aid,
                        eid,
                        command_id,
                    )
                else:
                    ref = reg.device(row["device_id"])
                    command = ref.profile.commands.get(row["command"]) if ref is not None else None
                    checked = command.check_args(row["args"]) if command is not None else None
                    if ref is None or command is None or isinstance(checked, CommandRefused):
                        why = (
                            "the device is no longer registered"
                            if ref is None
                            else f"its profile refuses it ({checked or 'no such command'})"
                        )
                        await emergency_store.action_ended(conn, aid, "failed", why)
                        await emergency_store.add_entry(
                            conn,
                            eid,
                            "action",
                            row["requested_by"],
                            f"{what} FAILED: {why}",
                            {**data, "outcome": "failed", "error": why},
                        )
                        continue
                    assert checked is not None
                    try:
                        record = await self._dispatcher.submit(ref, row["command"], checked)
                    except (psycopg.Error, PoolTimeout) as exc:
                        # Not recorded, so not sent: keep what was issued so far, the
                        # rest stays pending for the next round.
                        log.warning("protective action %s not issued yet: %s", aid, exc)
                        break
                    issued.append(record)
                    command_id = record["id"]
                await emergency_store.action_sent(conn, aid, command_id)
                if int(row["attempts"]) == 0:
                    await emergency_store.add_entry(
                        conn,
                        eid,
                        "action",
                        row["requested_by"],
                        what,
                        {**data, "command_id": str(command_id)},
                    )
                else:
                    log.info(
                        "protective action %s of emergency %s: attempt %d (command %s)",
                        aid,
                        eid,
                        int(row["attempts"]) + 1,
                        command_id,
                    )
        return issued


class EmergencyPolicy:
    """Opens emergencies from alarms, with their protective actions stored as
    pending in the alarm's transaction; after commit it wakes `issuer`."""

    def __init__(
        self,
        *,
        pool: AsyncConnectionPool,
        registry: Callable[[], Registry],
        rules: Callable[[str], Rule | None],
        dispatcher: CommandDispatcher | None,
        actions: Mapping[str, Sequence[str]] = DEFAULT_ACTIONS,
        issuer: ProtectiveActions | None = None,
    ) -> None:
        self._registry = registry
        self._rules = rules
        self._dispatcher = dispatcher
        self._actions = actions
        # Issues (and retries) the stored actions; run it (`issuer.run`) beside
        # the alarm writer. None without a dispatcher.
        self.issuer = issuer
        if issuer is None and dispatcher is not None:
            self.issuer = ProtectiveActions(pool=pool, registry=registry, dispatcher=dispatcher)
        self._stored = False

    async def alarm_raised(self, conn: Conn, alarm: AlarmEvent) -> None:
        rule = self._rules(alarm.rule)
        if rule is None or rule.emergency is None:
            return
        kind = rule.emergency
        eid, created = await emergency_store.open_or_join(
            conn,
            type=kind,
            pole_id=alarm.pole_id,
            title=f"{TITLES.get(kind, kind)} at pole {alarm.pole_id}",
            text=f"alarm {alarm.alarm_id}: {alarm.message}",
            by=SYSTEM_AUTHOR,
            alarm_id=alarm.alarm_id,
        )
        if created:
            await audit.append(
                conn,
                SYSTEM,
                "create",
                "emergency",
                eid,
                after={"type": kind, "pole_id": alarm.pole_id, "alarm_id": alarm.alarm_id},
            )
            try:
                async with conn.transaction():  # a savepoint: the emergency stands regardless
                    planned = await record_plan(
                        conn,
                        registry=self._registry,
                        dispatcher=self._dispatcher,
                        emergency_id=eid,
                        pole_id=alarm.pole_id,
                        actions=self._actions.get(kind, ()),
                    )
            except psycopg.OperationalError:
                raise
            except Exception as exc:
                log.exception("protective actions for emergency %s not planned", eid)
                await emergency_store.add_entry(
                    conn,
                    eid,
                    "note",
                    SYSTEM_AUTHOR,
                    f"protective actions could not be planned: {exc}",
                )
                return
            self._stored = self._stored or planned > 0

    async def alarm_cleared(self, conn: Conn, alarm: AlarmEvent) -> None:
        for eid in await emergency_store.open_for_alarm(conn, alarm.alarm_id):
            await emergency_store.add_entry(
                conn,
                eid,
                "note",
                SYSTEM_AUTHOR,
                f"alarm {alarm.alarm_id} cleared",
                {"alarm_id": alarm.alarm_id},
            )

    def rolled_back(self) -> None:
        self._stored = False

    async def committed(self) -> None:
        if self._stored and self.issuer is not None:
            self.issuer.wake()
        self._stored = False
