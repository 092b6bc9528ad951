"""Live events for the console: triggers that NOTIFY on the channel `polegw_events`.

Every committed change an operator watches live is announced once, by the
database itself, whichever process or replica made it: alarms (raised,
acknowledged, cleared, severity changed), device state (a polled device's
online/offline; a pole's presence, announced for each of its MQTT devices),
commands (every state), emergencies and work orders (created or changed). A
notification is sent only when its transaction commits. Payload: JSON
`{"event": name, "data": {…}}` (gateway/adapters/events.py reads it; the
telemetry writer adds `telemetry` notices itself). Row-level triggers are fine:
these tables change a few times a second at most.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

CHANNEL = "polegw_events"


def _notify(event: str, data: str) -> str:
    return (
        f"PERFORM pg_notify('{CHANNEL}', json_build_object("
        f"'event', '{event}', 'data', json_build_object({data}))::text);"
    )


# (table, function, condition on UPDATE for a notice, body building the notice)
TRIGGERS: list[tuple[str, str, str, str]] = [
    (
        "alarms",
        "polegw_event_alarm",
        "NEW.state IS DISTINCT FROM OLD.state OR NEW.severity IS DISTINCT FROM OLD.severity",
        _notify(
            "alarm",
            "'id', NEW.id, 'pole_id', NEW.pole_id, 'device_id', NEW.device_id,"
            " 'severity', NEW.severity, 'state', NEW.state, 'rule', NEW.rule_key",
        ),
    ),
    (
        "device_commands",
        "polegw_event_command",
        "NEW.state IS DISTINCT FROM OLD.state",
        _notify("command", "'id', NEW.id, 'device_id', NEW.device_id, 'state', NEW.state"),
    ),
    (
        "emergencies",
        "polegw_event_emergency",
        "NEW IS DISTINCT FROM OLD",
        _notify("emergency", "'id', NEW.id, 'pole_id', NEW.pole_id, 'state', NEW.state"),
    ),
    (
        "work_orders",
        "polegw_event_work_order",
        "NEW IS DISTINCT FROM OLD",
        _notify("work_order", "'id', NEW.id, 'pole_id', NEW.pole_id, 'state', NEW.state"),
    ),
    (
        "device_state",
        "polegw_event_device_state",
        "NEW.online IS DISTINCT FROM OLD.online",
        _notify(
            "device",
            "'device_id', NEW.device_id,"
            " 'pole_id', (SELECT d.pole_id FROM devices d WHERE d.id = NEW.device_id),"
            " 'state', CASE WHEN NEW.online THEN 'online' ELSE 'offline' END,"
            " 'since', NEW.since",
        ),
    ),
    (
        # A pole's presence is its MQTT devices' state (the API reads it so too).
        "pole_presence",
        "polegw_event_pole_presence",
        "NEW.state IS DISTINCT FROM OLD.state",
        f"""PERFORM pg_notify('{CHANNEL}', json_build_object(
                'event', 'device', 'data', json_build_object(
                    'device_id', d.id, 'pole_id', d.pole_id,
                    'state', CASE WHEN NEW.state IN ('online', 'offline')
                                  THEN NEW.state ELSE 'unknown' END,
                    'since', NEW.since))::text)
            FROM devices d
            WHERE d.pole_id = NEW.pole_id AND d.transport <> 'modbus' AND d.status <> 'retired';""",
    ),
]


def upgrade() -> None:
    for table, function, changed, body in TRIGGERS:
        op.execute(
            f"""
            CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'INSERT' OR ({changed}) THEN
                    {body}
                END IF;
                RETURN NULL;
            END
            $$
            """
        )
        op.execute(
            f"CREATE TRIGGER {table}_live_event AFTER INSERT OR UPDATE ON {table}"
            f" FOR EACH ROW EXECUTE FUNCTION {function}()"
        )


def downgrade() -> None:
    for table, function, _, _ in reversed(TRIGGERS):
        op.execute(f"DROP TRIGGER IF EXISTS {table}_live_event ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS {function}()")
