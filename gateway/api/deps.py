"""What routes need, as Annotated dependencies; everything hangs off app.state."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from psycopg_pool import AsyncConnectionPool

from gateway.adapters.command_store import CommandStore
from gateway.adapters.credentials import TokenIssuer
from gateway.adapters.db import DatabaseHealth
from gateway.adapters.events import LiveEvents
from gateway.adapters.leases import LeaseKeeper
from gateway.adapters.read_model import ReadModel
from gateway.adapters.users import UserStore
from gateway.api.cache import StaleWhileRevalidate
from gateway.commands import CommandDispatcher
from gateway.config import Settings
from gateway.core.auth import LoginThrottle
from gateway.core.profiles import ProfileCatalog
from gateway.core.registry import Registry
from gateway.metrics import Metrics


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiContext:
    settings: Settings
    pool: AsyncConnectionPool
    catalog: ProfileCatalog
    metrics: Metrics
    # Signs and checks access tokens (POLEGW_SECRET_KEY).
    tokens: TokenIssuer
    # The gateway's current registry (poles, devices and their profiles).
    registry: Callable[[], Registry]
    # None when this process runs no MQTT ingest (then readiness ignores it).
    mqtt_connected: Callable[[], bool] | None = None
    # None when this process does not execute commands.
    commands: CommandDispatcher | None = None
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    # The live events of GET /events; None when this process does not listen.
    events: LiveEvents | None = None
    # The database circuit (a probe's verdict): while it says down, requests that
    # need the database answer 503 at once. None: no circuit, requests try.
    database: DatabaseHealth | None = None
    # A pole's clock minus the gateway's at its last telemetry, s (clock sync,
    # README "Clocks"); None when this process runs no MQTT ingest.
    clock_skew: Callable[[str], float | None] | None = None
    # What this replica holds (leader roles, buses), for /readyz's details; None
    # when this process takes no part in sharing work (an API-only test app).
    leases: LeaseKeeper | None = None
    # The dashboard's kWh today: a scan of the day's counter readings (seconds at
    # city scale), so computed at most every 30 s and served from the last result.
    kwh_today: StaleWhileRevalidate[float] = field(
        default_factory=lambda: StaleWhileRevalidate[float](max_age_s=30.0)
    )

    @property
    def reads(self) -> ReadModel:
        return ReadModel(self.pool)

    @property
    def users(self) -> UserStore:
        return UserStore(self.pool)

    @property
    def command_store(self) -> CommandStore:
        return CommandStore(self.pool)


def _context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


Context = Annotated[ApiContext, Depends(_context)]
