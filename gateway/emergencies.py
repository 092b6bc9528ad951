"""The emergency policy: alarms that open emergencies, and protective actions.

`EmergencyPolicy` is an AlarmListener: an alarm whose rule names an emergency
type (`emergency:` in the profile; SOS, water, leakage, smoke) opens an emergency
on its pole, or joins the one of that type already open there, inside the
alarm's transaction. Once that transaction commits, the runner calls
`committed()`, which issues the protective actions configured for the type as
tracked device commands and records each in the timeline ("action").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from gateway.adapters import audit, emergency_store
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
    """Issue `actions` on the pole's devices as tracked commands and put each
    in the emergency's timeline; returns the command records."""
    if not actions:
        return []
    async with pool.connection() as conn:
        device_ids = await emergency_store.pole_devices(conn, pole_id)
    reg = registry()
    refs = {d: ref for d in device_ids if (ref := reg.device(d)) is not None}
    plan = plan_actions(actions, [(d, ref.profile.commands) for d, ref in refs.items()])
    issued: list[dict[str, Any]] = []
    notes: list[tuple[str, dict[str, Any]]] = []
    for step in plan:
        ref = refs[step.device_id]
        checked = ref.profile.commands[step.command].check_args(step.args)
        if isinstance(checked, CommandRefused):  # a profile that does not fit: log, go on
            log.error("protective %s on %s refused: %s", step.command, ref.id, checked)
            continue
        data: dict[str, Any] = {
            "action": step.action,
            "device_id": step.device_id,
            "command": step.command,
            "args": step.args,
        }
        if dispatcher is None:
            notes.append((f"{step.action}: {step.command} on {step.device_id} not sent", data))
            continue
        record = await dispatcher.submit(ref, step.command, checked)
        issued.append(record)
        data["command_id"] = str(record["id"])
        notes.append((f"{step.action}: {step.command} {step.args} to {step.device_id}", data))
    if notes:
        author = SYSTEM_AUTHOR if actor is SYSTEM else actor.name
        async with pool.connection() as conn, conn.transaction():
            for text, data in notes:
                await emergency_store.add_entry(conn, emergency_id, "action", author, text, data)
            await audit.append(
                conn,
                actor,
                "protect",
                "emergency",
                emergency_id,
                after={"commands": [d for _, d in notes]},
            )
    return issued


class EmergencyPolicy:
    """Opens emergencies from alarms; issues protective actions after commit."""

    def __init__(
        self,
        *,
        pool: AsyncConnectionPool,
        registry: Callable[[], Registry],
        rules: Callable[[str], Rule | None],
        dispatcher: CommandDispatcher | None,
        actions: Mapping[str, Sequence[str]] = DEFAULT_ACTIONS,
    ) -> None:
        self._pool = pool
        self._registry = registry
        self._rules = rules
        self._dispatcher = dispatcher
        self._actions = actions
        self._pending: list[tuple[int, str, str]] = []

    async def alarm_raised(self, conn: psycopg.AsyncConnection[Any], alarm: AlarmEvent) -> None:
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
            self._pending.append((eid, kind, alarm.pole_id))

    async def alarm_cleared(self, conn: psycopg.AsyncConnection[Any], alarm: AlarmEvent) -> None:
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
        self._pending.clear()

    async def committed(self) -> None:
        pending, self._pending = self._pending, []
        for eid, kind, pole_id in pending:
            try:
                await protect(
                    pool=self._pool,
                    registry=self._registry,
                    dispatcher=self._dispatcher,
                    emergency_id=eid,
                    pole_id=pole_id,
                    actions=self._actions.get(kind, ()),
                )
            except Exception:  # a background edge: log, never lose the next one
                log.exception("protective actions for emergency %s failed", eid)
