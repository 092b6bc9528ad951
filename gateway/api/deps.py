"""What routes need, as Annotated dependencies; everything hangs off app.state."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from gateway.adapters.command_store import CommandStore
from gateway.adapters.read_model import ReadModel
from gateway.commands import CommandDispatcher
from gateway.config import Settings
from gateway.core.profiles import ProfileCatalog
from gateway.core.registry import Registry
from gateway.metrics import Metrics


@dataclass(frozen=True, slots=True)
class ApiContext:
    settings: Settings
    reads: ReadModel
    catalog: ProfileCatalog
    metrics: Metrics
    command_store: CommandStore
    # The gateway's current registry (poles, devices and their profiles).
    registry: Callable[[], Registry]
    # None when this process runs no MQTT ingest (then readiness ignores it).
    mqtt_connected: Callable[[], bool] | None = None
    # None when this process does not execute commands.
    commands: CommandDispatcher | None = None


def _context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


Context = Annotated[ApiContext, Depends(_context)]
