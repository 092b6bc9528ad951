"""Alarm rules and the rule engine (智能检测): pure, no I/O.

Rules are declared in a device profile's `alarms:` section (parsed here, checked
against the profile's metrics and events in gateway/core/profiles.py) and may be
overridden per site (thresholds, severity, enabled) through the API.

Rule kinds, keyed "<profile>/<rule name>":

- threshold: `metric` with `above` (clears below `clear_below`, or
  `above - hysteresis`) or `below` (clears above `clear_above`), raised only
  when the condition has held for `for_s` seconds (by the readings' own times);
- state: `metric` with `equals` (a bool metric: `equals: true`);
- event: `raise_on` event types (and `clear_on` types, or `clear_after_s`
  seconds of quiet); a metric rule may take `raise_on`/`clear_on` too, so the
  same fault reported as an event and as a metric is one alarm;
- offline: the profile's `offline:` entry, a device silent for
  `after_intervals` x its report interval (evaluated on a timer, by arrival time).

The engine takes readings, events and the time in and returns transitions out
(Raise, Update, Clear); what to do with them is the caller's business.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple, Protocol, Self, get_args

from pydantic import Field, ValidationError, model_validator

from gateway.core.readings import DeviceEvent, Reading
from gateway.core.schema import MetricName, Strict

__all__ = [
    "EMERGENCY_TYPES", "SEVERITIES", "AlarmEngine", "AlarmSection", "Clear", "OfflineSpec",
    "OverrideProblem", "Raise", "Rule", "RuleSpec", "Target", "Transition", "Update",
    "apply_override", "compile_rules",
]  # fmt: skip

Severity = Literal["critical", "major", "minor", "warning"]
SEVERITIES: tuple[str, ...] = ("critical", "major", "minor", "warning")
EmergencyType = Literal[
    "collision_tilt",
    "flooding",
    "leakage",
    "fire_smoke",
    "sos_call",
    "power_outage",
    "severe_weather",
]
EMERGENCY_TYPES: tuple[str, ...] = get_args(EmergencyType)
OFFLINE = "offline"  # the rule name of a profile's offline rule

# What a site may change of a rule through the API.
OVERRIDABLE = frozenset(
    {
        "enabled",
        "severity",
        "above",
        "below",
        "clear_below",
        "clear_above",
        "hysteresis",
        "for_s",
        "clear_after_s",
        "after_intervals",
        "interval_s",
    }
)


class RuleSpec(Strict):
    """One alarm rule as a profile declares it."""

    metric: MetricName | None = None
    above: float | None = None
    below: float | None = None
    clear_below: float | None = None
    clear_above: float | None = None
    hysteresis: float | None = Field(None, ge=0)
    equals: float | bool | None = None
    for_s: float = Field(0.0, ge=0, le=7 * 86400)
    raise_on: list[MetricName] = Field(default_factory=list)
    clear_on: list[MetricName] = Field(default_factory=list)
    clear_after_s: float | None = Field(None, gt=0, le=30 * 86400)
    severity: Severity = "major"
    fault: str | None = Field(None, pattern=r"^[a-z][a-z0-9_:]{0,62}$")
    message: str = ""
    unless_work_order: bool = False
    emergency: EmergencyType | None = None
    enabled: bool = True

    @model_validator(mode="after")
    def _check(self) -> Self:
        conditions = [n for n in ("above", "below", "equals") if getattr(self, n) is not None]
        if self.metric is None:
            if conditions:
                raise ValueError(f"{conditions[0]} needs a metric")
            if not self.raise_on:
                raise ValueError("a rule needs a metric condition or raise_on events")
            if self.for_s:
                raise ValueError("for_s applies to metric rules only")
        else:
            if len(conditions) != 1:
                raise ValueError("a metric rule has exactly one of above, below, equals")
            if self.clear_after_s is not None:
                raise ValueError("clear_after_s is for event rules; a metric rule clears itself")
        if self.clear_below is not None:
            if self.above is None:
                raise ValueError("clear_below goes with above")
            if self.clear_below > self.above:
                raise ValueError(f"clear_below ({self.clear_below:g}) is above above")
        if self.clear_above is not None:
            if self.below is None:
                raise ValueError("clear_above goes with below")
            if self.clear_above < self.below:
                raise ValueError(f"clear_above ({self.clear_above:g}) is below below")
        if self.hysteresis is not None:
            if self.above is None and self.below is None:
                raise ValueError("hysteresis goes with above or below")
            if self.clear_below is not None or self.clear_above is not None:
                raise ValueError("give hysteresis or clear_below/clear_above, not both")
        if self.clear_on and not self.raise_on:
            raise ValueError("clear_on goes with raise_on")
        return self


class OfflineSpec(Strict):
    """Alarm when a device has sent nothing for `after_intervals` report intervals."""

    after_intervals: int = Field(3, ge=1, le=1000)
    # The report interval of a device that publishes (MQTT); a polled device
    # uses its poll interval.
    interval_s: float = Field(300.0, gt=0, le=86400)
    severity: Severity = "minor"
    enabled: bool = True


class AlarmSection(Strict):
    """A profile's `alarms:` section."""

    offline: OfflineSpec | None = None
    rules: dict[MetricName, RuleSpec] = Field(default_factory=dict)


class ProfileLike(Protocol):
    @property
    def profile(self) -> str: ...

    @property
    def alarms(self) -> AlarmSection | None: ...


Kind = Literal["above", "below", "equals", "event", "offline"]


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule ready to evaluate (profile default with the site's override applied)."""

    key: str
    profile: str
    name: str
    kind: Kind
    fault: str
    severity: str
    message: str = ""
    metric: str | None = None
    limit: float = 0.0
    clear: float = 0.0  # above: clears below this; below: clears above this
    for_s: float = 0.0
    raise_on: frozenset[str] = frozenset()
    clear_on: frozenset[str] = frozenset()
    clear_after_s: float | None = None
    unless_work_order: bool = False
    emergency: str | None = None
    after_intervals: int = 0
    interval_s: float = 0.0
    enabled: bool = True

    def describe(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "profile": self.profile,
            "kind": self.kind,
            "metric": self.metric,
            "fault": self.fault,
            "severity": self.severity,
            "enabled": self.enabled,
        }


class OverrideProblem(ValueError):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


def _spec_rule(profile: str, name: str, spec: RuleSpec) -> Rule:
    key = f"{profile}/{name}"
    common: dict[str, Any] = {
        "key": key,
        "profile": profile,
        "name": name,
        "severity": spec.severity,
        "message": spec.message,
        "raise_on": frozenset(spec.raise_on),
        "clear_on": frozenset(spec.clear_on),
        "unless_work_order": spec.unless_work_order,
        "emergency": spec.emergency,
        "enabled": spec.enabled,
        "metric": spec.metric,
        "for_s": spec.for_s,
    }
    if spec.metric is None:
        return Rule(
            kind="event", fault=spec.fault or name, clear_after_s=spec.clear_after_s, **common
        )
    fault = spec.fault or f"threshold:{spec.metric}"
    if spec.above is not None:
        clear = spec.clear_below
        if clear is None:
            clear = spec.above - (spec.hysteresis or 0.0)
        return Rule(kind="above", fault=fault, limit=spec.above, clear=clear, **common)
    if spec.below is not None:
        clear = spec.clear_above
        if clear is None:
            clear = spec.below + (spec.hysteresis or 0.0)
        return Rule(kind="below", fault=fault, limit=spec.below, clear=clear, **common)
    assert spec.equals is not None
    return Rule(kind="equals", fault=fault, limit=float(spec.equals), **common)


def _offline_rule(profile: str, spec: OfflineSpec) -> Rule:
    return Rule(
        key=f"{profile}/{OFFLINE}",
        profile=profile,
        name=OFFLINE,
        kind="offline",
        fault=OFFLINE,
        severity=spec.severity,
        after_intervals=spec.after_intervals,
        interval_s=spec.interval_s,
        enabled=spec.enabled,
    )


def _first_problem(exc: ValidationError, given: Iterable[str]) -> OverrideProblem:
    """The first error, at the field it names; a cross-field error is put at the
    first overridden field its message mentions (or the first overridden one)."""
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"] if isinstance(p, str)]
    message = str(err["msg"]).removeprefix("Value error, ")
    if loc:
        return OverrideProblem(loc[-1], message)
    given = list(given)
    named = [f for f in given if f in message]
    return OverrideProblem((named or given or ["body"])[0], message)


def apply_override(
    profiles: Mapping[str, ProfileLike], key: str, override: Mapping[str, Any]
) -> Rule:
    """The rule `key` with `override` applied; KeyError if there is no such rule,
    OverrideProblem (naming the field) if the result is not a valid rule."""
    profile_name, _, name = key.partition("/")
    profile = profiles.get(profile_name)
    section = profile.alarms if profile is not None else None
    if section is None:
        raise KeyError(key)
    unknown = sorted(set(override) - OVERRIDABLE)
    if unknown:
        raise OverrideProblem(unknown[0], "cannot be overridden")
    if name == OFFLINE:
        if section.offline is None:
            raise KeyError(key)
        allowed = {"enabled", "severity", "after_intervals", "interval_s"}
        for f in override:
            if f not in allowed:
                raise OverrideProblem(f, "does not apply to an offline rule")
        try:
            offline = OfflineSpec.model_validate(section.offline.model_dump() | dict(override))
        except ValidationError as exc:
            raise _first_problem(exc, override) from None
        return _offline_rule(profile_name, offline)
    spec = section.rules.get(name)
    if spec is None:
        raise KeyError(key)
    for f in ("after_intervals", "interval_s"):
        if f in override:
            raise OverrideProblem(f, "applies to offline rules only")
    data = spec.model_dump(exclude_none=True) | dict(override)
    # Fields left out keep the profile's value, a clear level included: a new
    # threshold does not move it. A clear level and a hysteresis are two ways of
    # saying one thing, so the one given replaces the profile's other.
    for limit, clear in (("above", "clear_below"), ("below", "clear_above")):
        if "hysteresis" in override and clear not in override:
            data.pop(clear, None)
        if clear in override and "hysteresis" not in override:
            data.pop("hysteresis", None)
        kept, new_limit = data.get(clear), override.get(limit)
        if clear in override or "hysteresis" in override or kept is None or new_limit is None:
            continue
        if (kept > new_limit) if limit == "above" else (kept < new_limit):
            side = "above" if limit == "above" else "below"
            raise OverrideProblem(
                clear,
                f"the profile's {clear} ({kept:g}) is {side} the new {limit} ({new_limit:g}):"
                f" give {clear} (or hysteresis) with it",
            )
    data = {k: v for k, v in data.items() if v is not None}
    try:
        merged = RuleSpec.model_validate(data)
    except ValidationError as exc:
        raise _first_problem(exc, override) from None
    return _spec_rule(profile_name, name, merged)


def compile_rules(
    profiles: Mapping[str, ProfileLike], overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[list[Rule], list[OverrideProblem]]:
    """Every rule of every profile, with the site's overrides; an override that no
    longer fits (the profile changed) is reported and the profile's rule kept."""
    overrides = overrides or {}
    rules: list[Rule] = []
    problems: list[OverrideProblem] = []
    for name, profile in profiles.items():
        section = profile.alarms
        if section is None:
            continue
        keys = [f"{name}/{r}" for r in section.rules]
        if section.offline is not None:
            keys.append(f"{name}/{OFFLINE}")
        for key in keys:
            try:
                rules.append(apply_override(profiles, key, overrides.get(key, {})))
            except OverrideProblem as exc:
                problems.append(OverrideProblem(exc.field, f"{key}: {exc.message}"))
                rules.append(apply_override(profiles, key, {}))
    return rules, problems


# --------------------------------------------------------------------------- engine


class Target(NamedTuple):
    """A device as the engine needs it."""

    device_id: str
    pole_id: str
    profile: str
    interval_s: float | None = None  # a polled device's poll interval


@dataclass(frozen=True, slots=True)
class Raise:
    rule: Rule
    device_id: str
    pole_id: str
    at: datetime
    value: float | None
    message: str


@dataclass(frozen=True, slots=True)
class Update:
    """The alarm is still on: `count` more occurrences, seen last at `at`."""

    rule: Rule
    device_id: str
    pole_id: str
    at: datetime
    value: float | None
    count: int


@dataclass(frozen=True, slots=True)
class Clear:
    rule: Rule
    device_id: str
    pole_id: str
    at: datetime
    value: float | None


Transition = Raise | Update | Clear


@dataclass(slots=True)
class _State:
    active: bool = False
    pending_since: datetime | None = None
    last_ts: datetime | None = None
    last_trigger: datetime | None = None  # arrival time of the last raising event


@dataclass(slots=True)
class _Out:
    """Transitions of one call; updates coalesced per (rule, device)."""

    items: list[Transition] = field(default_factory=list)
    updates: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, t: Transition) -> None:
        if isinstance(t, Update):
            key = (t.rule.key, t.device_id)
            at = self.updates.get(key)
            if at is not None:
                prev = self.items[at]
                assert isinstance(prev, Update)
                self.items[at] = Update(
                    t.rule,
                    t.device_id,
                    t.pole_id,
                    max(t.at, prev.at),
                    t.value,
                    prev.count + t.count,
                )
                return
            self.updates[key] = len(self.items)
        else:
            # Anything after a raise or clear must stay in order behind it.
            self.updates.pop((t.rule.key, t.device_id), None)
        self.items.append(t)


Lookup = Callable[[str], Target | None]


class AlarmEngine:
    """Evaluates the rules on what devices send; keeps per (rule, device) state."""

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._state: dict[tuple[str, str], _State] = {}
        self._seen: dict[str, datetime] = {}
        self._offline_active: set[str] = set()
        self.configure(rules)

    def configure(self, rules: Iterable[Rule], now: datetime | None = None) -> list[Transition]:
        """Swap the rule set; state of rules that stay is kept. Alarms on of a rule
        now disabled are cleared (returned when `now` is given)."""
        by_key: dict[str, Rule] = {}
        by_metric: dict[tuple[str, str], list[Rule]] = {}
        by_event: dict[tuple[str, str], list[tuple[Rule, bool]]] = {}
        offline: dict[str, Rule] = {}
        for rule in rules:
            by_key[rule.key] = rule
            if not rule.enabled:
                continue
            if rule.kind == "offline":
                offline[rule.profile] = rule
                continue
            if rule.metric is not None:
                by_metric.setdefault((rule.profile, rule.metric), []).append(rule)
            for ev in rule.raise_on:
                by_event.setdefault((rule.profile, ev), []).append((rule, True))
            for ev in rule.clear_on:
                by_event.setdefault((rule.profile, ev), []).append((rule, False))
        self._rules = by_key
        self._by_metric = {k: tuple(v) for k, v in by_metric.items()}
        self._by_event = {k: tuple(v) for k, v in by_event.items()}
        self._offline = offline
        self._watched = frozenset(m for _, m in by_metric)
        self._events = frozenset(e for _, e in by_event)
        self._timed = frozenset(
            k for k, r in by_key.items() if r.enabled and r.clear_after_s is not None
        )
        out = _Out()
        if now is not None:
            for (key, device_id), st in self._state.items():
                gone = by_key.get(key)
                if st.active and gone is not None and not gone.enabled:
                    st.active = False
                    st.pending_since = None
                    if gone.kind == "offline":
                        self._offline_active.discard(device_id)
                    out.add(Clear(gone, device_id, "", now, None))
        return out.items

    def rule(self, key: str) -> Rule | None:
        return self._rules.get(key)

    @property
    def rules(self) -> list[Rule]:
        return list(self._rules.values())

    def prime(
        self,
        active: Iterable[tuple[str, str]],
        last_seen: Mapping[tuple[str, str], datetime] | None = None,
    ) -> None:
        """Alarms the store has open (after a restart): the engine takes them as on,
        so the condition's end clears them. An event alarm that clears after quiet
        is timed from its `last_seen` (when given), so one whose clear was lost in
        a crash still clears."""
        for rule_key, device_id in active:
            st = self._state.setdefault((rule_key, device_id), _State())
            st.active = True
            if last_seen is not None and st.last_trigger is None:
                st.last_trigger = last_seen.get((rule_key, device_id))
            rule = self._rules.get(rule_key)
            if rule is not None and rule.kind == "offline":
                self._offline_active.add(device_id)
                seen = last_seen.get((rule_key, device_id)) if last_seen is not None else None
                if seen is not None:  # raised then: heard of after it, the device is back
                    self._seen.setdefault(device_id, seen)

    def reset(self) -> None:
        """Forget every device's state (a new term as the alarm leader: what
        another replica did meanwhile is in the store, primed again)."""
        self._state.clear()
        self._seen.clear()
        self._offline_active.clear()

    def watched(self, profile: str) -> list[str]:
        """The metrics the enabled rules of `profile` evaluate."""
        return sorted(m for p, m in self._by_metric if p == profile)

    def longest_hold(self) -> float:
        """The longest `for_s` of the enabled metric rules."""
        return max((r.for_s for rs in self._by_metric.values() for r in rs), default=0.0)

    def resume(self, rule_key: str, device_id: str, after: datetime) -> None:
        """Readings of (rule, device) up to `after` were evaluated already (by the
        leader before this one): they are skipped."""
        st = self._state.setdefault((rule_key, device_id), _State())
        if st.last_ts is None or after > st.last_ts:
            st.last_ts = after

    def rules_of(self, profile: str, metric: str) -> tuple[Rule, ...]:
        return self._by_metric.get((profile, metric), ())

    def overdue(self, now: datetime, targets: Iterable[Target]) -> list[Target]:
        """The devices the next `tick` would call offline (not yet alarmed), to be
        confirmed from what other replicas stored before it is called."""
        out: list[Target] = []
        for t in targets:
            rule = self._offline.get(t.profile)
            last = self._seen.get(t.device_id)
            if rule is None or last is None or t.device_id in self._offline_active:
                continue
            interval = t.interval_s if t.interval_s is not None else rule.interval_s
            if now - last > timedelta(seconds=rule.after_intervals * interval):
                out.append(t)
        return out

    def last_seen(self, device_id: str) -> datetime | None:
        return self._seen.get(device_id)

    def offline_devices(self) -> list[str]:
        """The devices with an offline alarm on."""
        return sorted(self._offline_active)

    def saw(self, seen: Mapping[str, datetime], lookup: Lookup, now: datetime) -> list[Transition]:
        """Devices last heard of at these times (from the database: what any
        replica stored). A device with an offline alarm heard of after it was
        last seen here is back."""
        out = _Out()
        for device_id, at in seen.items():
            last = self._seen.get(device_id)
            if last is not None and at <= last:
                continue
            self._seen[device_id] = at
            if device_id in self._offline_active and last is not None:
                self._back_online(device_id, lookup, now, out)
        return out.items

    def is_active(self, rule_key: str, device_id: str) -> bool:
        st = self._state.get((rule_key, device_id))
        return st is not None and st.active

    def readings(
        self, readings: Iterable[Reading], lookup: Lookup, now: datetime
    ) -> list[Transition]:
        """Readings as committed, `now` their arrival. Readings with a quality flag
        (a clock that cannot be right) count as a sign of life only."""
        out = _Out()
        seen = self._seen
        watched = self._watched
        back = self._offline_active
        by_metric = self._by_metric
        for r in readings:
            device_id = r.device_id
            seen[device_id] = now
            if back and device_id in back:
                self._back_online(device_id, lookup, now, out)
            if r.metric not in watched or r.quality:
                continue
            target = lookup(device_id)
            if target is None:
                continue
            rules = by_metric.get((target.profile, r.metric))
            if rules:
                for rule in rules:
                    self._evaluate(rule, target, r.ts, r.value, out)
        return out.items

    def events(
        self, events: Iterable[DeviceEvent], lookup: Lookup, now: datetime
    ) -> list[Transition]:
        out = _Out()
        for ev in events:
            self._seen[ev.device_id] = now
            if ev.device_id in self._offline_active:
                self._back_online(ev.device_id, lookup, now, out)
            if ev.type not in self._events:
                continue
            target = lookup(ev.device_id)
            if target is None:
                continue
            for rule, raising in self._by_event.get((target.profile, ev.type), ()):
                st = self._state.setdefault((rule.key, target.device_id), _State())
                if raising:
                    st.last_trigger = now
                    st.pending_since = None
                    if st.active:
                        out.add(Update(rule, target.device_id, target.pole_id, ev.ts, None, 1))
                    else:
                        st.active = True
                        message = rule.message or f"{ev.type} reported by {target.device_id}"
                        out.add(Raise(rule, target.device_id, target.pole_id, ev.ts, None, message))
                elif st.active:
                    st.active = False
                    out.add(Clear(rule, target.device_id, target.pole_id, ev.ts, None))
        return out.items

    def tick(self, now: datetime, targets: Iterable[Target]) -> list[Transition]:
        """Timer: devices silent too long, event alarms quiet for clear_after_s.
        A device is timed from its last arrival, or from its first tick."""
        out = _Out()
        offline = self._offline
        if offline:
            for t in targets:
                rule = offline.get(t.profile)
                if rule is None or t.device_id in self._offline_active:
                    continue
                last = self._seen.setdefault(t.device_id, now)
                interval = t.interval_s if t.interval_s is not None else rule.interval_s
                limit = timedelta(seconds=rule.after_intervals * interval)
                if now - last > limit:
                    st = self._state.setdefault((rule.key, t.device_id), _State())
                    st.active = True
                    self._offline_active.add(t.device_id)
                    message = rule.message or (
                        f"{t.device_id} sent nothing since {last.isoformat()} "
                        f"({rule.after_intervals} intervals of {interval:g}s)"
                    )
                    out.add(Raise(rule, t.device_id, t.pole_id, now, None, message))
        if self._timed:
            for (key, device_id), st in self._state.items():
                if key not in self._timed or not st.active or st.last_trigger is None:
                    continue
                rule = self._rules[key]
                assert rule.clear_after_s is not None
                if now - st.last_trigger >= timedelta(seconds=rule.clear_after_s):
                    st.active = False
                    out.add(Clear(rule, device_id, "", now, None))
        return out.items

    def _back_online(self, device_id: str, lookup: Lookup, now: datetime, out: _Out) -> None:
        self._offline_active.discard(device_id)
        target = lookup(device_id)
        if target is None:
            return
        rule = self._offline.get(target.profile)
        key = rule.key if rule is not None else f"{target.profile}/{OFFLINE}"
        st = self._state.get((key, device_id))
        if st is not None and st.active:
            st.active = False
            if rule is None:
                rule = self._rules.get(key)
            if rule is not None:
                out.add(Clear(rule, device_id, target.pole_id, now, None))

    def _evaluate(self, rule: Rule, t: Target, ts: datetime, value: float, out: _Out) -> None:
        st = self._state.get((rule.key, t.device_id))
        if st is None:
            st = self._state[(rule.key, t.device_id)] = _State()
        if st.last_ts is not None and ts <= st.last_ts:
            return  # a replay or an older reading: the state already moved past it
        st.last_ts = ts
        kind = rule.kind
        if kind == "above":
            on = value > rule.limit
            off = value < rule.clear
        elif kind == "below":
            on = value < rule.limit
            off = value > rule.clear
        else:
            on = value == rule.limit
            off = not on
        if st.active:
            if off:
                st.active = False
                st.pending_since = None
                out.add(Clear(rule, t.device_id, t.pole_id, ts, value))
            else:
                out.add(Update(rule, t.device_id, t.pole_id, ts, value, 0))
            return
        if not on:
            st.pending_since = None
            return
        if st.pending_since is None:
            st.pending_since = ts
        if (ts - st.pending_since).total_seconds() >= rule.for_s:
            st.active = True
            st.pending_since = None
            out.add(
                Raise(rule, t.device_id, t.pole_id, ts, value, rule.message or _says(rule, value))
            )


def _says(rule: Rule, value: float) -> str:
    if rule.kind == "above":
        what = f"above {rule.limit:g}"
    elif rule.kind == "below":
        what = f"below {rule.limit:g}"
    else:
        what = f"= {rule.limit:g}"
    held = f" for {rule.for_s:g}s" if rule.for_s else ""
    return f"{rule.metric} {value:g} {what}{held}"
