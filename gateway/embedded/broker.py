"""An embedded amqtt broker for `polegw demo`.

`embedded_broker` runs an amqtt broker in the current event loop. amqtt's stock
`AnonymousAuthPlugin` marks *every* session anonymous when anonymous access is
allowed, and amqtt then keeps neither the session nor the messages queued for it
once the client goes away. `OpenPersistentAuth` allows everyone and leaves
sessions non-anonymous, so a client with a stable id and clean_session=False
gets MQTT 3.1.1 persistent-session behaviour (offline QoS1 messages queued).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from gateway.embedded.net import hostport
from gateway.errors import EmbeddedServiceError

try:
    from amqtt.broker import Broker
    from amqtt.errors import BrokerError
    from amqtt.plugins.base import BaseAuthPlugin
except ImportError:  # the `embedded` extra is not installed
    HAVE_AMQTT = False
else:
    HAVE_AMQTT = True

    # amqtt ships no type information, so its base class is Any to mypy.
    class OpenPersistentAuth(BaseAuthPlugin):  # type: ignore[misc]
        """Accept every client (with or without a username); keep its session persistent."""

        async def authenticate(self, *, session: Any) -> bool:
            session.is_anonymous = False
            return True


log = logging.getLogger(__name__)

_SESSION_EXPIRY_S = 24 * 3600


@asynccontextmanager
async def embedded_broker(host: str = "127.0.0.1", port: int = 1883) -> AsyncIterator[str]:
    """Run an amqtt MQTT 3.1.1 broker on host:port in this loop; yield its mqtt:// URL."""
    if not HAVE_AMQTT:
        raise EmbeddedServiceError(
            "the embedded broker needs amqtt: pip install 'polegw[embedded]'"
        )
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.WARNING)
    config = {
        "listeners": {"default": {"type": "tcp", "bind": hostport(host, port)}},
        "plugins": {f"{__name__}.OpenPersistentAuth": {}},
        "session_expiry_interval": _SESSION_EXPIRY_S,
    }
    broker = Broker(config)
    try:
        await broker.start()
    except BrokerError as exc:
        raise EmbeddedServiceError(
            f"embedded MQTT broker on {hostport(host, port)}: {exc}"
        ) from exc
    log.info("embedded MQTT broker listening on %s", hostport(host, port))
    try:
        yield f"mqtt://{hostport(host, port)}"
    finally:
        await broker.shutdown()
        log.info("embedded MQTT broker stopped")
