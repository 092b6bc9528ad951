"""GET /api/v1/events: the console's live updates as Server-Sent Events.

One stream per browser tab (EventSource sends the session cookie). It starts
with `retry: 3000`, then carries `alarm`, `device`, `command`, `telemetry`,
`emergency` and `work_order` events with JSON data (gateway/adapters/events.py
says where each comes from), and a `: keepalive` comment every 15 s so
proxies keep the connection open. The stream ends when it falls behind, when
the gateway lost and regained the database (events may have been missed), or
when the server stops; EventSource then reconnects by itself, and the console
reloads what it shows.

Who sees what: staff (admin, operator, maintainer) every event. A tenant sees
none of these for now (every kind is about the operator's equipment, and a
tenant may read none of it through the API); its stream carries keepalives
only, so the same client code works for every role.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException
from fastapi.responses import StreamingResponse

from gateway.adapters.events import LiveEvent, LiveEvents, StreamEnded
from gateway.api.deps import Context
from gateway.api.security import AnyUser
from gateway.core.auth import Principal

router = APIRouter(tags=["events"])

KEEPALIVE_S = 15.0
RETRY = b"retry: 3000\n\n"  # EventSource waits 3 s before reconnecting
KEEPALIVE = b": keepalive\n\n"
EVENT_STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {}},
        "description": "Server-Sent Events: event names alarm, device, command, telemetry,"
        " emergency, work_order; data is JSON",
    },
    503: {"description": "This process does not serve live events"},
}


def visible_to(principal: Principal) -> Callable[[LiveEvent], bool]:
    if principal.is_staff:
        return lambda event: True
    return lambda event: False


def _sse(event: LiveEvent) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (event.name.encode(), orjson.dumps(event.data))


async def _stream(hub: LiveEvents, visible: Callable[[LiveEvent], bool]) -> AsyncIterator[bytes]:
    # Subscribed when the response starts, so a client gone before never leaks one.
    subscription = hub.subscribe(visible)
    try:
        yield RETRY
        while True:
            event = await subscription.next(KEEPALIVE_S)
            # orjson writes no newline, so the data is one `data:` line.
            yield KEEPALIVE if event is None else _sse(event)
    except StreamEnded:
        return
    finally:
        hub.unsubscribe(subscription)


@router.get(
    "/events",
    summary="Live events for the console (Server-Sent Events; staff get all, tenants none yet)",
    response_class=StreamingResponse,
    responses=EVENT_STREAM,
)
async def events(ctx: Context, principal: AnyUser) -> StreamingResponse:
    hub = ctx.events
    if hub is None or hub.closed:
        raise HTTPException(
            503,
            detail="live events are served by `polegw run` while it is running",
            headers={"Retry-After": "5"},
        )
    return StreamingResponse(
        _stream(hub, visible_to(principal)),
        media_type="text/event-stream",
        # No caching, and no buffering by a proxy (nginx) in front.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
