"""Who is calling and what they may do: roles, the principal, login throttling.

Pure: no I/O, no clock of its own (callers pass `now`), so the rules are tested
without a server.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    MAINTAINER = "maintainer"
    TENANT = "tenant"


# The operator's own people; everything but the mounting service's tenant side.
STAFF = frozenset({Role.ADMIN, Role.OPERATOR, Role.MAINTAINER})
# Those who change the operator's records (archive, rules, schedules, plans).
MANAGERS = frozenset({Role.ADMIN, Role.OPERATOR})
ADMINS = frozenset({Role.ADMIN})
EVERYONE = frozenset(Role)


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: int
    name: str
    role: Role
    tenant_id: str | None = None  # set exactly when role is tenant
    via: str = "token"  # "token" or "api_key:<id>"
    system: bool = False  # the gateway itself, acting on its own (see SYSTEM)

    @property
    def audit_role(self) -> str:
        """The role the audit log records: the gateway's own actions say `system`, so
        they are never mistaken for an administrator's."""
        return SYSTEM_ROLE if self.system else self.role.value

    @property
    def is_staff(self) -> bool:
        return self.role in STAFF


# The actor of what the gateway does on its own (automatic work orders,
# emergency actions). It acts with an administrator's rights, but it is no user
# (no user can have role "system": users.role is constrained to Role), and the
# audit log records its role as SYSTEM_ROLE.
SYSTEM_ROLE = "system"
SYSTEM = Principal(0, "system", Role.ADMIN, via="gateway", system=True)


@dataclass(slots=True)
class LoginThrottle:
    """At most `limit` failed logins per key (a user name, a client address)
    within `window_s`; a blocked key is told how long to wait. Attempts refused
    while blocked are not counted, successful logins clear the key. Memory is
    bounded: only keys with recent failures are kept, at most `max_keys` of
    them (the oldest are forgotten first), each with at most `limit` times."""

    window_s: float = 300.0
    max_keys: int = 100_000
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def retry_after(self, key: str, limit: int, now: float) -> float:
        """Seconds until `key` may try again; 0 when it may try now."""
        times = self._recent(key, now)
        if times is None or len(times) < limit:
            return 0.0
        return max(0.0, times[-limit] + self.window_s - now)

    def failed(self, key: str, limit: int, now: float) -> None:
        times = self._recent(key, now)
        if times is None:
            if len(self._failures) >= self.max_keys:
                del self._failures[next(iter(self._failures))]
            times = self._failures[key] = deque(maxlen=limit)
        times.append(now)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)

    def forgive(self, key: str) -> None:
        """Take back the newest attempt of `key` (it was counted before it succeeded)."""
        times = self._failures.get(key)
        if times:
            times.pop()
            if not times:
                del self._failures[key]

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times
