"""What the alarm engine tells the rest of operations: an alarm was raised or cleared.

Listeners (the work-order policy, the emergency policy) run inside the
transaction that records the alarm, so an alarm and what it caused commit
together or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import psycopg


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    alarm_id: int
    rule: str  # the rule's key, e.g. "lamp-controller/lamp_failure"
    # The fault class the rule detects (work orders dedupe on pole + fault):
    # e.g. "lamp_failure", "door_open", "water", "smoke", "leakage", "sos",
    # "tilt", "offline", "threshold:<metric>".
    fault: str
    severity: str  # "critical" | "major" | "minor" | "warning"
    pole_id: str
    device_id: str | None
    message: str
    at: datetime
    state: str  # "active" on raise, "cleared" on clear


class AlarmListener(Protocol):
    async def alarm_raised(self, conn: psycopg.AsyncConnection[Any], alarm: AlarmEvent) -> None: ...

    async def alarm_cleared(
        self, conn: psycopg.AsyncConnection[Any], alarm: AlarmEvent
    ) -> None: ...
