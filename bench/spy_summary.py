#!/usr/bin/env python3
"""Summarise a py-spy "raw" (collapsed stacks) profile of the gateway by component.

    .venv/bin/python bench/ingest.py --py-spy /tmp/gw.txt     # py-spy must be installed
    .venv/bin/python bench/spy_summary.py /tmp/gw.txt

Each sample goes to the first component (in the order below) that one of its frames
belongs to; then the functions with the most own time are listed.
"""

from __future__ import annotations

import collections
import sys

# (component, test on one frame "func (file:line)"); first match over the whole stack wins.
COMPONENTS: list[tuple[str, tuple[str, ...]]] = [
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    (
        "after-commit hooks (alarms, presence, live events)",
        ("IngestPipeline._committed",),
    ),
    ("decode (gateway/core/decode.py, profiles)", ("gateway/core/",)),
    ("dedupe dict (telemetry_writer _readings dictcomp)", ("_readings.<locals>.<dictcomp>",)),
    (
        "COPY + commit (telemetry_writer, psycopg)",
        ("gateway/adapters/telemetry_writer.py", "psycopg/"),
    ),
    ("ingest glue (gateway/ingest.py put/run)", ("gateway/ingest.py",)),
    ("aiomqtt message iterator (task + asyncio.wait per message)", ("aiomqtt/client.py:14",)),
    (
        "paho: read + parse PUBLISH (with gateway/adapters/paho_reader.py)",
        ("paho/mqtt/", "paho_reader.py"),
    ),
    ("aiomqtt other", ("aiomqtt/",)),
    ("gateway MQTT adapter (_pump, ack)", ("gateway/adapters/mqtt.py",)),
    ("API (uvicorn/fastapi)", ("uvicorn/", "fastapi/", "starlette/")),
]


def summarise(
    path: str,
    components: list[tuple[str, tuple[str, ...]]] = COMPONENTS,
    *,
    other: str = "event loop / other",
    top: int = 25,
    idle_leaf: str | None = None,
) -> None:
    """Print a py-spy raw profile by component (the first match over a sample's
    stack wins), then the functions with the most own time. With `idle_leaf`,
    samples whose innermost frame contains it are counted as waiting and left out
    of the shares (py-spy does not always tell an idle epoll_wait in this VM)."""
    total = 0
    idle = 0
    by_component: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for line in lines:
        if not line:
            continue
        stack, n_text = line.rsplit(" ", 1)
        n = int(n_text)
        frames = stack.split(";")
        if idle_leaf is not None and idle_leaf in frames[-1]:
            idle += n
            continue
        total += n
        own[frames[-1]] += n
        for name, needles in components:
            if any(needle in frame for frame in frames for needle in needles):
                by_component[name] += n
                break
        else:
            by_component[other] += n
    print(f"{total} samples" + (f" ({idle} more waiting in {idle_leaf}, left out)" if idle else ""))
    for name, n in by_component.most_common():
        print(f"  {100 * n / total:5.1f} %  {name}")
    print("top functions by own time:")
    for frame, n in own.most_common(top):
        print(f"  {100 * n / total:5.1f} %  {frame}")


if __name__ == "__main__":
    summarise(sys.argv[1], idle_leaf="EpollSelector.select")
