"""Pole clocks: when to tell a pole the time (README "Clocks"). Pure.

A pole's skew is the stamp of its live telemetry minus the gateway's clock when
the message arrived (transit makes it a little negative; a few seconds are
noise). Above `max_skew_s` either way the pole is due a `set_time`, at most once
per `interval_s`: a pole whose clock will not take the correction is not sent
a command with every message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

CONTROLLER = "controller"  # the device id of a pole's edge controller itself
SET_TIME = "set_time"


def set_time_command(command_id: str, now: datetime) -> dict[str, object]:
    """The command (DESIGN.md section 5 shape) that sets a pole's clock to `now`."""
    return {
        "id": command_id,
        "command": SET_TIME,
        "args": {"epoch_ms": round(now.timestamp() * 1000)},
    }


@dataclass(slots=True)
class ClockWatch:
    max_skew_s: float
    interval_s: float
    skew: dict[str, float] = field(default_factory=dict)  # pole -> last skew seen, s
    _sent: dict[str, float] = field(default_factory=dict)  # pole -> when corrected (monotonic)

    def observe(self, pole_id: str, stamped: datetime, received: datetime, now: float) -> bool:
        """Note a live message's stamp; True when the pole is due a correction now
        (`now`: a monotonic clock, in seconds)."""
        skew = (stamped - received).total_seconds()
        self.skew[pole_id] = skew
        if abs(skew) <= self.max_skew_s:
            return False
        last = self._sent.get(pole_id)
        if last is not None and now - last < self.interval_s:
            return False
        self._sent[pole_id] = now
        return True
