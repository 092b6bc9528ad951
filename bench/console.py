#!/usr/bin/env python3
"""Console benchmark: how fast the web console's overview (numbers, site map,
active alarms, open emergencies) becomes interactive in a real browser for a
city-sized site, and whether it stays smooth while readings arrive.

    .venv/bin/python bench/console.py                      # 2,000 poles, 12,000 devices
    .venv/bin/python bench/console.py --poles 500 --duration 10 --loads 3
    .venv/bin/python bench/console.py --trace /tmp/console-trace.json

One run does, on this machine, against the real PostgreSQL and Mosquitto:

1. Set-up. A database of its own (``polegw_bench_console_<hex>``, dropped at
   the end unless ``--keep``), migrated, and a site imported with the real site
   importer: ``--poles`` poles 40 m apart along 40 roads (a grid of 20 running
   roughly east-west and 20 roughly north-south, each a little off the
   compass) spread over a 16 km x 13 km box around central Chengdu; six
   devices a pole with the real profiles of devices/ (lamp controller,
   environmental station, cabinet monitor, tilt sensor, SOS button, four-port
   meter), all over MQTT so nothing is polled. So that the map shows every
   state: 3 % of the poles' presence offline (their devices count as offline;
   they publish nothing), 1 % of the poles faulty or under maintenance, and
   active alarms of mixed severity on 6 % of the poles. An operator user.

2. The gateway, ``polegw run``, as a process of its own (topic prefix
   ``bench-console-<hex>/poles``, its own client id, API port and spool).

3. Chromium (Debian's, ``--chromium``; the flags the browser tests use), driven
   by Playwright. The operator logs in through the console's login form once;
   every measured load then opens ``/console/#/`` in a new browser context with
   that session's cookies (so the HTTP cache is cold: the pessimistic case) at
   1440 x 900, ``--loads`` times, and once more with a warm cache (a reload).

   (a) Interactive: from navigation start (``performance.timeOrigin``) until
       the overview's numbers are shown, all the site's markers are on the map
       (``#overview-map .pole-marker``) and the main thread is free (a
       requestAnimationFrame then a zero-delay timer both ran). The API
       responses' times come from the Resource Timing API; long tasks
       (PerformanceObserver ``longtask``, over 50 ms) during the load are
       summed. Median and best of the cold loads are printed.

   (b) Smooth: with the overview open, every pole that is online publishes a
       telemetry batch (``simulators/model.py``: the devices' real values)
       every ``--interval`` s (5 s, the demo's rate: 400 messages/s for 2,000
       poles), for ``--duration`` s, from a paho client in this process,
       paced. In the page: frames (requestAnimationFrame callbacks) per second
       and the longest gap between two frames, long tasks, the live events the
       page received, and the API requests it made and their sizes. The same
       is measured for ``--idle`` s before the readings start, as a baseline.
       The gateway's stored readings (``polegw_readings_stored_total``) show
       it kept up.

   (c) Reference: the same browser loads a bare static page (served by this
       script) that fetches the same poles as a JSON file and draws one Leaflet
       divIcon marker each, with the same map size, Leaflet from the same
       XStatic package and no application logic; measured the same way. The
       console's figure is printed as a ratio to it.

``--trace FILE`` writes a Chrome trace (open it in chrome://tracing or
Perfetto) of one more cold load of the console, for profiling.

Needs: PostgreSQL (a superuser URL, ``--admin-url``), an MQTT broker
(``--mqtt-url``), Chromium, and this project's venv.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import http.server
import json
import math
import os
import random
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import paho.mqtt.client as paho
import psycopg
import xstatic.pkg.leaflet as leaflet
from paho.mqtt.enums import CallbackAPIVersion
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.adapters.credentials import hash_password  # noqa: E402
from gateway.adapters.migrate import upgrade  # noqa: E402
from gateway.adapters.site_store import import_site  # noqa: E402
from gateway.config import MqttEndpoint  # noqa: E402
from gateway.core.site import DeviceSpec, Location, PoleSpec, SiteSpec  # noqa: E402
from simulators.model import PoleModel, build_telemetry, site_models  # noqa: E402

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"
CHROMIUM = os.environ.get("POLEGW_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1440, "height": 900}
PASSWORD = "bench-password-123"

CENTRE = (30.657, 104.066)  # lat, lon: central Chengdu, as the demo site
BOX_M = (16_000.0, 13_000.0)  # east-west, north-south
ROADS = 40
SPACING_M = 40.0
M_PER_DEG_LAT = 111_320.0
ROAD_WORDS = (
    "Renmin", "Tianfu", "Shuncheng", "Jinli", "Wuhou", "Qingyang", "Jinjiang", "Chenghua",
    "Shuangliu", "Hongxing", "Chunxi", "Luomashi", "Taisheng", "Xinhua", "Shudu", "Yongfeng",
    "Guanghua", "Jiaozi", "Fuqin", "Kehua",
)  # fmt: skip
KINDS = (
    ("lamp", "lamp-controller"),
    ("env", "env-station"),
    ("cab", "cabinet-monitor"),
    ("tilt", "pole-tilt"),
    ("sos", "sos-button"),
    ("meter", "port-meter-4"),
)

# Before any of the page's scripts: long tasks, live events by name, and room
# for every resource timing entry of a long window.
INIT_SCRIPT = """
(() => {
  const B = window.__bench = { longtasks: [], sse: {} };
  performance.setResourceTimingBufferSize(100000);
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) B.longtasks.push([e.startTime, e.duration]);
    }).observe({ type: "longtask", buffered: true });
  } catch (e) { B.longtaskError = String(e); }
  if (window.EventSource) {
    const add = EventSource.prototype.addEventListener;
    EventSource.prototype.addEventListener = function (type, fn, opts) {
      const counted = function (ev) {
        B.sse[type] = (B.sse[type] || 0) + 1;
        return fn.call(this, ev);
      };
      return add.call(this, type, counted, opts);
    };
  }
})();
"""

# Resolves when the page is interactive: `ready` holds, then a frame and a task ran.
WAIT_INTERACTIVE = """
async ([selector, n, numbers]) => {
  const frame = () => new Promise((r) => requestAnimationFrame(r));
  const ready = () => document.querySelectorAll(selector).length === n
    && (!numbers || document.querySelector(numbers) !== null);
  const deadline = performance.now() + 120000;
  while (!ready()) {
    if (performance.now() > deadline) throw new Error(
      `not ready: ${document.querySelectorAll(selector).length} of ${n} markers`);
    await frame();
  }
  const seen = performance.now();
  await frame();
  await new Promise((r) => setTimeout(r, 0));
  const interactive = performance.now();
  const resources = performance.getEntriesByType("resource").map((e) => ({
    name: e.name, start: e.startTime, end: e.responseEnd,
    ttfb: e.responseStart - e.startTime, bytes: e.encodedBodySize, transfer: e.transferSize,
  }));
  const nav = performance.getEntriesByType("navigation")[0];
  return { seen, interactive, resources, longtasks: window.__bench.longtasks,
           domContentLoaded: nav ? nav.domContentLoadedEventEnd : null,
           longtaskError: window.__bench.longtaskError || null };
}
"""

# Frames are counted from now until __bench.stopFrames() is called.
START_WINDOW = """
() => {
  const B = window.__bench;
  B.frames = [];
  B.framesOn = true;
  const loop = (t) => { if (!B.framesOn) return; B.frames.push(t); requestAnimationFrame(loop); };
  requestAnimationFrame(loop);
  B.sseAtStart = { ...B.sse };
  return performance.now();
}
"""

END_WINDOW = """
(t0) => {
  const B = window.__bench;
  B.framesOn = false;
  const t1 = performance.now();
  const frames = B.frames.filter((t) => t >= t0);
  const gaps = frames.slice(1).map((t, i) => t - frames[i]);
  const requests = performance.getEntriesByType("resource")
    .filter((e) => e.startTime >= t0 && e.startTime <= t1)
    .map((e) => ({ name: e.name, ms: e.responseEnd - e.startTime, bytes: e.encodedBodySize,
                   transfer: e.transferSize }));
  const sse = {};
  for (const [k, v] of Object.entries(B.sse)) sse[k] = v - ((B.sseAtStart || {})[k] || 0);
  return { t0, t1, frames: frames.length, gaps,
           longtasks: B.longtasks.filter(([s]) => s >= t0 && s <= t1), requests, sse,
           markers: document.querySelectorAll("#overview-map .pole-marker").length };
}
"""

REFERENCE_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>reference</title>
<link rel="stylesheet" href="/leaflet/leaflet.css">
<style>
  body { margin: 0; font: 14px sans-serif; }
  #map { width: __WIDTH__px; height: __HEIGHT__px; background: #eef1ea; }
  .pole-marker { display: flex !important; align-items: center; justify-content: center;
    border-radius: 50%; border: 2px solid #fff; color: #fff; font-size: 11px; font-weight: 700;
    box-shadow: 0 0 0 1px rgba(0,0,0,0.35); background: #2e7d32; }
</style>
<script src="/leaflet/leaflet.js"></script>
</head><body><div id="map"></div>
<script>
fetch("/poles.json").then((r) => r.json()).then((poles) => {
  const map = L.map("map", { preferCanvas: true });
  map.fitBounds(L.latLngBounds(poles.map((p) => [p.lat, p.lon])), { padding: [20, 20] });
  for (const p of poles) {
    const icon = L.divIcon({ className: "pole-marker state-" + p.state,
      html: '<span aria-hidden="true">' + p.glyph + "</span>", iconSize: [18, 18],
      iconAnchor: [9, 9] });
    L.marker([p.lat, p.lon], { icon, title: p.title, alt: p.title, keyboard: true }).addTo(map);
  }
});
</script></body></html>
"""


def say(text: str = "") -> None:
    print(text, flush=True)


def with_db(admin_url: str, name: str) -> str:
    return urlunsplit(urlsplit(admin_url)._replace(path="/" + name))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------- the site


def _location(east_m: float, north_m: float) -> Location:
    lat = CENTRE[0] + north_m / M_PER_DEG_LAT
    lon = CENTRE[1] + east_m / (M_PER_DEG_LAT * math.cos(math.radians(CENTRE[0])))
    return Location(lat=round(lat, 6), lon=round(lon, 6))


def city_site(poles: int, seed: int = 15) -> SiteSpec:
    """`poles` poles with six MQTT devices each, in turn on 40 roads of a city grid."""
    rng = random.Random(seed)
    roads: list[tuple[str, float, tuple[float, float]]] = []
    half = ROADS // 2
    for k in range(ROADS):
        word = ROAD_WORDS[k % len(ROAD_WORDS)]
        if k < half:  # east-west, spread north to south
            name = f"{word} Rd"
            bearing = 90.0 + rng.uniform(-12, 12)
            start = (-BOX_M[0] / 2 + rng.uniform(0, 4000), -BOX_M[1] / 2 + BOX_M[1] * k / half)
        else:  # north-south, spread west to east
            name = f"{word} Ave"
            bearing = rng.uniform(-12, 12)
            start = (
                -BOX_M[0] / 2 + BOX_M[0] * (k - half) / half,
                -BOX_M[1] / 2 + rng.uniform(0, 3000),
            )
        roads.append((name, bearing, start))
    specs = []
    per_road = [0] * ROADS
    for index in range(poles):
        road = index % ROADS
        name, bearing, (east0, north0) = roads[road]
        along = per_road[road]
        per_road[road] += 1
        b = math.radians(bearing)
        distance = along * SPACING_M
        pole_id = f"P{index + 1:05d}"
        specs.append(
            PoleSpec(
                id=pole_id,
                name=f"{name} {along + 1}",
                road=name,
                location=_location(east0 + distance * math.sin(b), north0 + distance * math.cos(b)),
                height_m=10.0 + index % 3,
                devices=[DeviceSpec(id=f"{pole_id}-{s}", profile=p) for s, p in KINDS],
            )
        )
    return SiteSpec(poles=specs)


# Varied states, chosen by a hash of the pole's id so every run draws the same map.
STATES_SQL = [
    """INSERT INTO pole_presence (pole_id, state, since)
       SELECT id, CASE WHEN abs(hashtext(id)) % 100 < 3 THEN 'offline' ELSE 'online' END, now()
       FROM poles""",
    """UPDATE poles SET status = CASE WHEN abs(hashtext(id || 's')) % 2 = 0 THEN 'faulty'
                                      ELSE 'under_maintenance' END
       WHERE abs(hashtext(id || 's')) % 100 < 1""",
    """INSERT INTO alarms (rule_key, fault, severity, pole_id, device_id, state,
                           first_seen, last_seen)
       SELECT 'bench-' || p.id, 'bench fault',
              (ARRAY['critical', 'major', 'minor', 'warning'])[1 + abs(hashtext(p.id || 'v')) % 4],
              p.id, p.id || '-env', 'active', now() - interval '1 hour', now()
       FROM poles p WHERE abs(hashtext(p.id || 'a')) % 100 < 6""",
]


def set_up(url: str, site: SiteSpec) -> dict[str, int]:
    upgrade(url)
    asyncio.run(import_site(url, site))
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in STATES_SQL:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO users (name, role, password_hash)"
            " VALUES ('bench-operator', 'operator', %s)",
            (hash_password(PASSWORD),),
        )
        conn.execute("ANALYZE")
        row = conn.execute(
            "SELECT (SELECT count(*) FROM poles), (SELECT count(*) FROM devices),"
            " (SELECT count(*) FROM pole_presence WHERE state = 'offline'),"
            " (SELECT count(*) FROM poles WHERE status <> 'in_service'),"
            " (SELECT count(*) FROM alarms WHERE state = 'active')"
        ).fetchone()
    assert row is not None
    return dict(zip(("poles", "devices", "offline", "out_of_service", "alarms"), row, strict=True))


def offline_poles(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT pole_id FROM pole_presence WHERE state = 'offline'").fetchall()
    return {str(r[0]) for r in rows}


def raised_alarms(url: str) -> int:
    """Alarms the gateway raised (the set-up's are named bench-...)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM alarms WHERE rule_key NOT LIKE 'bench-%'"
        ).fetchone()
    return int(row[0]) if row else 0


# --------------------------------------------------------------------------- the gateway


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metric(self, name: str) -> float:
        body = httpx.get(f"{self.origin}/metrics", timeout=10).text
        total = 0.0
        for line in body.splitlines():
            if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
                total += float(line.rsplit(" ", 1)[1])
        return total


def polegw_exe() -> str:
    local = Path(sys.executable).parent / "polegw"
    return str(local) if local.exists() else "polegw"


@contextlib.contextmanager
def running_gateway(db_url: str, mqtt_url: str, prefix: str, workdir: Path) -> Iterator[Gateway]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLEGW_")}
    env.update(
        {
            "POLEGW_DATABASE_URL": db_url,
            "POLEGW_MQTT_URL": mqtt_url,
            "POLEGW_MQTT_TOPIC_PREFIX": prefix,
            "POLEGW_MQTT_CLIENT_ID": f"polegw-bench-console-{secrets.token_hex(4)}",
            "POLEGW_MQTT_SESSION_EXPIRY_S": "60",
            "POLEGW_API_HOST": "127.0.0.1",
            "POLEGW_API_PORT": str(port),
            "POLEGW_SECRET_KEY": secrets.token_hex(32),
            "POLEGW_SPOOL_DIR": str(workdir / "spool"),
            "POLEGW_LOG_LEVEL": "WARNING",
        }
    )
    log_path = workdir / "gateway.log"
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [polegw_exe(), "run"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir
        )
    gw = Gateway(proc, port, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(
                    f"gateway exited ({proc.returncode}); see {log_path}:\n"
                    + log_path.read_text()[-3000:]
                )
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if gw.metric("polegw_mqtt_connected") == 1.0:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"gateway not ready within 60 s; see {log_path}")
            time.sleep(0.2)
        yield gw
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


# --------------------------------------------------------------------------- readings


LEAN_DEG = 20.0  # over pole-tilt's critical rule (15 degrees for 10 s)


class Publisher:
    """Every pole's telemetry batch once per `interval_s`, the poles staggered over
    the interval, from one paho client, paced to the schedule. From the start of
    each interval `leaning` more poles report a tilt of LEAN_DEG, so that the
    gateway's own rules raise alarms while the page is watched."""

    def __init__(
        self,
        mqtt_url: str,
        prefix: str,
        models: list[PoleModel],
        interval_s: float,
        leaning: int,
    ) -> None:
        self.endpoint = MqttEndpoint(mqtt_url)
        self.prefix = prefix
        self.models = models
        self.interval_s = interval_s
        self.leaning = leaning
        self.leaning_ids: set[str] = set()
        self.sent = 0
        self.max_late_s = 0.0
        self.cpu_s = 0.0

    def run(self, duration_s: float) -> None:
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-console-pub-{secrets.token_hex(4)}"
        )
        if self.endpoint.username:
            client.username_pw_set(self.endpoint.username, self.endpoint.password)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.connect(self.endpoint.host, self.endpoint.port)
        client.loop_start()
        cpu0 = time.thread_time()
        try:
            step = self.interval_s / len(self.models)
            total = int(duration_s / step)
            seqs = [0] * len(self.models)
            rng = random.Random(15)
            start = time.monotonic()
            infos = []
            for n in range(total):
                due = start + n * step
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    self.max_late_s = max(self.max_late_s, -delay)
                i = n % len(self.models)
                if i == 0:
                    candidates = [
                        m.pole_id for m in self.models if m.pole_id not in self.leaning_ids
                    ]
                    self.leaning_ids.update(
                        rng.sample(candidates, min(self.leaning, len(candidates)))
                    )
                seqs[i] += 1
                model = self.models[i]
                message = build_telemetry(model, datetime.now(UTC), seqs[i])
                tilt = message["devices"].get(f"{model.pole_id}-tilt")
                if tilt is not None and model.pole_id in self.leaning_ids:
                    tilt["tilt_deg"] = LEAN_DEG
                topic = f"{self.prefix}/{model.pole_id}/telemetry"
                infos.append(client.publish(topic, orjson.dumps(message), qos=1))
            for info in infos:
                info.wait_for_publish(timeout=60)
            self.sent = len(infos)
        finally:
            self.cpu_s = time.thread_time() - cpu0
            client.disconnect()
            client.loop_stop()


# --------------------------------------------------------------------------- the browser


@dataclass
class Load:
    seen_ms: float  # all markers and the numbers are in the DOM
    interactive_ms: float  # and a frame and a task ran after that
    dom_content_loaded_ms: float
    longtask_count: int
    longtask_ms: float
    longtask_max_ms: float
    resources: list[dict[str, Any]]


def api_path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def load_from(result: dict[str, Any]) -> Load:
    tasks = [(float(s), float(d)) for s, d in result["longtasks"] if s <= result["interactive"]]
    if result.get("longtaskError"):
        say(f"  (no long task observer: {result['longtaskError']})")
    return Load(
        seen_ms=float(result["seen"]),
        interactive_ms=float(result["interactive"]),
        dom_content_loaded_ms=float(result["domContentLoaded"] or 0.0),
        longtask_count=len(tasks),
        longtask_ms=sum(d for _, d in tasks),
        longtask_max_ms=max((d for _, d in tasks), default=0.0),
        resources=list(result["resources"]),
    )


async def log_in(browser: Browser, origin: str) -> dict[str, Any]:
    """The operator logs in through the form; returns the session's storage state."""
    ctx = await browser.new_context(viewport=VIEWPORT, locale="en", base_url=origin)  # type: ignore[arg-type]
    try:
        page = await ctx.new_page()
        await page.goto("/console/")
        await page.get_by_label(re.compile("User name|用户名")).fill("bench-operator")
        await page.get_by_label(re.compile("Password|密码")).fill(PASSWORD)
        await page.get_by_role("button", name=re.compile("Log in|登录")).click()
        await page.locator("#topbar").wait_for(state="visible", timeout=30_000)
        state: dict[str, Any] = dict(await ctx.storage_state())
        return state
    finally:
        await ctx.close()


async def new_context(
    browser: Browser, origin: str, state: dict[str, Any] | None
) -> BrowserContext:
    ctx = await browser.new_context(
        viewport=VIEWPORT,  # type: ignore[arg-type]
        locale="en",
        base_url=origin,
        storage_state=state,  # type: ignore[arg-type]
    )
    await ctx.add_init_script(INIT_SCRIPT)
    return ctx


async def wait_interactive(page: Page, selector: str, n: int, numbers: str | None) -> Load:
    result = await page.evaluate(WAIT_INTERACTIVE, [selector, n, numbers])
    return load_from(result)


async def console_load(
    browser: Browser, origin: str, state: dict[str, Any], markers: int, errors: list[str]
) -> tuple[BrowserContext, Page, Load]:
    ctx = await new_context(browser, origin, state)
    page = await ctx.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto("/console/#/", wait_until="commit")
    load = await wait_interactive(
        page, "#overview-map .pole-marker", markers, "#overview-numbers [data-figure=poles]"
    )
    return ctx, page, load


class ReferenceServer:
    """The bare reference page, its JSON and Leaflet, over HTTP from a temporary directory."""

    def __init__(self, directory: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> ReferenceServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


# As sitemap.js GLYPH (multiplication sign, en dash).
GLYPH = {
    "critical": "!",
    "warning": "▲",
    "offline": "\u00d7",
    "ok": "✓",
    "out_of_service": "\u2013",
}


def reference_dir(workdir: Path, poles: list[dict[str, Any]], width: int, height: int) -> Path:
    ref = workdir / "reference"
    ref.mkdir()
    (ref / "leaflet").symlink_to(Path(leaflet.BASE_DIR))
    html = REFERENCE_HTML.replace("__WIDTH__", str(width)).replace("__HEIGHT__", str(height))
    (ref / "index.html").write_text(html)
    (ref / "poles.json").write_bytes(orjson.dumps(poles))
    return ref


def pole_state(p: dict[str, Any]) -> str:
    """As the console's sitemap.js poleState."""
    if p["status"] != "in_service":
        return "out_of_service"
    if p["worst_alarm"] == "critical":
        return "critical"
    if p["worst_alarm"]:
        return "warning"
    return "offline" if p["devices_offline"] > 0 else "ok"


# --------------------------------------------------------------------------- report


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def api_breakdown(load: Load) -> list[tuple[str, float, float, int]]:
    """(path, start ms, end ms, bytes) of each API request of a load, in start order."""
    rows = []
    for r in load.resources:
        path = api_path(r["name"])
        if path.startswith("/api/") or path.startswith("/console/config.json"):
            rows.append((path, float(r["start"]), float(r["end"]), int(r["bytes"])))
    return sorted(rows, key=lambda row: row[1])


def print_loads(title: str, loads: list[Load]) -> None:
    inter = [x.interactive_ms for x in loads]
    say(
        f"  {title:<28} interactive median {median(inter):6.0f} ms  best {min(inter):6.0f} ms"
        f"  worst {max(inter):6.0f} ms  ({len(loads)} loads)"
    )
    say(
        f"  {'':<28} DOMContentLoaded {median([x.dom_content_loaded_ms for x in loads]):6.0f} ms,"
        f" long tasks {median([float(x.longtask_count) for x in loads]):.1f}"
        f" totalling {median([x.longtask_ms for x in loads]):.0f} ms"
        f" (longest {median([x.longtask_max_ms for x in loads]):.0f} ms), medians"
    )


def print_window(title: str, w: dict[str, Any], seconds: float) -> dict[str, float]:
    span_s = (w["t1"] - w["t0"]) / 1000
    fps = w["frames"] / span_s if span_s else 0.0
    gaps = sorted(float(g) for g in w["gaps"])
    worst_gap = gaps[-1] if gaps else float("nan")
    p99 = gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))] if gaps else float("nan")
    janky = sum(1 for g in gaps if g > 50)
    tasks = [float(d) for _, d in w["longtasks"]]
    requests = w["requests"]
    api = [r for r in requests if "/api/" in r["name"]]
    size = sum(int(r["bytes"]) for r in api)
    by_path: dict[str, list[int]] = {}
    for r in api:
        by_path.setdefault(urlsplit(r["name"]).path, []).append(int(r["bytes"]))
    say(f"  {title} ({span_s:.1f} s):")
    say(
        f"    frames {fps:5.1f}/s, frame gap p99 {p99:5.1f} ms, longest {worst_gap:5.0f} ms,"
        f" gaps over 50 ms: {janky}"
    )
    say(
        f"    long tasks {len(tasks)} totalling {sum(tasks):.0f} ms"
        f" (longest {max(tasks, default=0.0):.0f} ms)"
    )
    events = ", ".join(f"{k} {v}" for k, v in sorted(w["sse"].items()) if v) or "none"
    say(f"    live events received: {events}")
    say(
        f"    API requests {len(api)} ({len(api) / span_s * 60:.1f}/min), {size / 1024:.0f} KiB"
        + "".join(
            f"; {p.removeprefix('/api/v1/')} {len(s)}x {sum(s) / len(s) / 1024:.1f} KiB"
            for p, s in sorted(by_path.items())
        )
    )
    say(f"    markers on the map at the end: {w['markers']}")
    return {
        "fps": fps,
        "p99": p99,
        "worst_gap": worst_gap,
        "janky": janky,
        "longtasks": len(tasks),
        "longtask_ms": sum(tasks),
        "requests": len(api),
        "kib": size / 1024,
        "seconds": seconds,
    }


# --------------------------------------------------------------------------- main


async def measure(
    args: argparse.Namespace, gw: Gateway, db_url: str, prefix: str, workdir: Path
) -> Results:
    models = [m for m in site_models(city_site(args.poles), transport=None)]
    offline = offline_poles(db_url)
    publishing = [m for m in models if m.pole_id not in offline]
    errors: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=args.chromium, args=FLAGS)
        try:
            say(f"browser: Chromium {browser.version}, {VIEWPORT['width']}x{VIEWPORT['height']}")
            state = await log_in(browser, gw.origin)
            async with httpx.AsyncClient(
                cookies={c["name"]: c["value"] for c in state["cookies"]}, timeout=60
            ) as client:
                poles = (await client.get(f"{gw.origin}/api/v1/overview/poles")).json()["poles"]
            markers = sum(1 for p in poles if p["lat"] is not None and p["lon"] is not None)
            say(f"  logged in as bench-operator; {markers:,} poles to draw")

            # (a) cold loads, then a warm reload in the last context.
            cold: list[Load] = []
            map_size = (0, 0)
            for i in range(args.loads):
                ctx, page, load = await console_load(browser, gw.origin, state, markers, errors)
                cold.append(load)
                box = await page.locator("#overview-map").bounding_box()
                if box:
                    map_size = (round(box["width"]), round(box["height"]))
                if i < args.loads - 1:
                    await ctx.close()
            warm: list[Load] = []
            for _ in range(args.loads):
                await page.reload(wait_until="commit")
                warm.append(
                    await wait_interactive(
                        page,
                        "#overview-map .pole-marker",
                        markers,
                        "#overview-numbers [data-figure=poles]",
                    )
                )

            # (b) the last warm page stays open: idle, then readings.
            t0 = await page.evaluate(START_WINDOW)
            await asyncio.sleep(args.idle)
            idle = await page.evaluate(END_WINDOW, t0)
            publisher = Publisher(args.mqtt_url, prefix, publishing, args.interval, args.leaning)
            stored0 = await asyncio.to_thread(gw.metric, "polegw_readings_stored_total")
            t0 = await page.evaluate(START_WINDOW)
            wall0 = time.monotonic()
            await asyncio.to_thread(publisher.run, args.duration)
            published_s = time.monotonic() - wall0
            busy = await page.evaluate(END_WINDOW, t0)
            stored1 = await asyncio.to_thread(gw.metric, "polegw_readings_stored_total")
            raised = await asyncio.to_thread(raised_alarms, db_url)
            await ctx.close()

            # (c) the bare reference page, in the same browser.
            sample = [
                {
                    "lat": p["lat"],
                    "lon": p["lon"],
                    "state": pole_state(p),
                    "glyph": GLYPH[pole_state(p)],
                    "title": f"{p['id']} {p['name']} · {p['road']} · {pole_state(p)}",
                }
                for p in poles
                if p["lat"] is not None and p["lon"] is not None
            ]
            width, height = map_size if map_size[0] else (700, 420)
            reference: list[Load] = []
            with ReferenceServer(reference_dir(workdir, sample, width, height)) as ref:
                for _ in range(args.loads):
                    rctx = await new_context(browser, ref.origin, None)
                    rpage = await rctx.new_page()
                    await rpage.goto(f"{ref.origin}/index.html", wait_until="commit")
                    reference.append(
                        await wait_interactive(rpage, "#map .pole-marker", markers, None)
                    )
                    await rctx.close()

            if args.trace:
                tctx = await new_context(browser, gw.origin, state)
                tpage = await tctx.new_page()
                await browser.start_tracing(page=tpage, path=args.trace, screenshots=False)
                await tpage.goto("/console/#/", wait_until="commit")
                await wait_interactive(
                    tpage,
                    "#overview-map .pole-marker",
                    markers,
                    "#overview-numbers [data-figure=poles]",
                )
                await browser.stop_tracing()
                await tctx.close()
                say(f"  Chrome trace of one cold load: {args.trace}")
        finally:
            await browser.close()

    return Results(
        markers, cold, warm, reference, (width, height), idle, busy, publisher,
        published_s, stored1 - stored0, len(publishing), raised, errors,
    )  # fmt: skip


@dataclass
class Results:
    markers: int
    cold: list[Load]
    warm: list[Load]
    reference: list[Load]
    map_size: tuple[int, int]
    idle: dict[str, Any]
    busy: dict[str, Any]
    publisher: Publisher
    published_s: float
    stored: float
    publishing: int
    raised: int
    errors: list[str]


def report(r: Results, args: argparse.Namespace) -> None:
    cold, warm, reference = r.cold, r.warm, r.reference
    say()
    say(f"(a) overview interactive (navigation start → numbers, {r.markers:,} markers,"
        " main thread free):")  # fmt: skip
    print_loads("console, cold cache", cold)
    print_loads("console, warm cache", warm)
    print_loads("reference (bare Leaflet)", reference)
    ratio = median([x.interactive_ms for x in cold]) / median([x.interactive_ms for x in reference])
    say(f"  ratio console (cold) / reference: {ratio:.2f}")
    say(f"  map {r.map_size[0]}x{r.map_size[1]} px")
    say("  API and config responses of the median cold load (start → end ms after navigation):")
    mid = sorted(cold, key=lambda x: x.interactive_ms)[len(cold) // 2]
    for path, start, end, size in api_breakdown(mid):
        say(f"    {path:<44} {start:6.0f} → {end:6.0f}"
            f"  ({end - start:5.0f} ms, {size / 1024:6.1f} KiB)")  # fmt: skip
    say(f"    all markers in the DOM at {mid.seen_ms:.0f} ms,"
        f" interactive at {mid.interactive_ms:.0f} ms")  # fmt: skip
    say()
    say(f"(b) overview open while readings arrive ({r.publishing:,} poles"
        f" every {args.interval:g} s):")  # fmt: skip
    idle = print_window("idle, no readings", r.idle, args.idle)
    busy = print_window("readings arriving", r.busy, args.duration)
    pub = r.publisher
    rate = pub.sent / r.published_s if r.published_s else 0.0
    say(f"    published {pub.sent:,} messages in {r.published_s:.1f} s ({rate:.0f}/s, publisher"
        f" at most {pub.max_late_s * 1000:.0f} ms late, {pub.cpu_s:.1f} s CPU); gateway stored"
        f" {r.stored:,.0f} readings ({r.stored / r.published_s:,.0f}/s) and raised"
        f" {r.raised} alarms ({pub.leaning} more poles leaning each interval)")  # fmt: skip
    if r.errors:
        say(f"page errors: {r.errors[:5]}")
    verdict = "meets" if median([x.interactive_ms for x in cold]) < 2000 else "MISSES"
    say()

    def med(loads: list[Load], field: str) -> str:
        return f"{median([float(getattr(x, field)) for x in loads]):.0f}"

    summary = [
        ("interactive, cold cache, median ms", med(cold, "interactive_ms"),
         med(reference, "interactive_ms")),
        ("interactive, warm cache, median ms", med(warm, "interactive_ms"), ""),
        ("long tasks per cold load, median ms", med(cold, "longtask_ms"),
         med(reference, "longtask_ms")),
        ("frames/s idle / with readings", f"{idle['fps']:.1f} / {busy['fps']:.1f}", ""),
        ("long tasks with readings (n, ms)",
         f"{busy['longtasks']:.0f}, {busy['longtask_ms']:.0f}", ""),
        ("longest frame gap with readings, ms", f"{busy['worst_gap']:.0f}", ""),
        ("API requests with readings (n, KiB)", f"{busy['requests']:.0f}, {busy['kib']:.0f}", ""),
    ]  # fmt: skip
    say(f"{'':<40} {'console':>14} {'reference':>10}")
    for label, console, ref in summary:
        say(f"{label:<40} {console:>14} {ref:>10}")
    say()
    say(f"verdict: {verdict} the 2 s target (median cold load).")
    say(f"at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {os.getloadavg()}")
    if args.json:
        raw = {
            "cold": [x.__dict__ for x in cold],
            "warm": [x.__dict__ for x in warm],
            "reference": [x.__dict__ for x in reference],
            "idle": r.idle,
            "busy": r.busy,
        }
        Path(args.json).write_text(json.dumps(raw, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--admin-url", default=os.environ.get("POLEGW_BENCH_ADMIN_URL", DEFAULT_ADMIN_URL)
    )
    parser.add_argument(
        "--mqtt-url", default=os.environ.get("POLEGW_BENCH_MQTT_URL", DEFAULT_MQTT_URL)
    )
    parser.add_argument("--chromium", default=CHROMIUM)
    parser.add_argument("--poles", type=int, default=2000)
    parser.add_argument("--loads", type=int, default=5, help="measured page loads of each kind")
    parser.add_argument("--interval", type=float, default=5.0, help="s between a pole's batches")
    parser.add_argument("--duration", type=float, default=30.0, help="s of readings")
    parser.add_argument("--idle", type=float, default=10.0, help="s of baseline without readings")
    parser.add_argument(
        "--leaning",
        type=int,
        default=1,
        help="poles that start to lean (a critical alarm) in each interval of readings",
    )
    parser.add_argument("--trace", help="write a Chrome trace of one more cold load here")
    parser.add_argument("--json", help="write the raw figures here")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    if args.poles < 1 or args.loads < 1:
        parser.error("--poles and --loads must be at least 1")
    if args.leaning < 0:
        parser.error("--leaning cannot be negative")
    if args.interval <= 0 or args.duration <= 0 or args.idle <= 0:
        parser.error("--interval, --duration and --idle must be positive")
    if not Path(args.chromium).exists():
        parser.error(f"--chromium: no browser at {args.chromium} (apt-get install chromium)")

    run_id = secrets.token_hex(4)
    name = f"polegw_bench_console_{run_id}"
    url = with_db(args.admin_url, name)
    prefix = f"bench-console-{run_id}/poles"
    with psycopg.connect(args.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    say(f"polegw console bench {run_id}: {os.cpu_count()} CPUs, load average {os.getloadavg()}")
    say(f"database {name}, topic prefix {prefix}")
    try:
        with tempfile.TemporaryDirectory(prefix=f"polegw-console-{run_id}-") as tmp:
            workdir = Path(tmp)
            t0 = time.monotonic()
            counts = set_up(url, city_site(args.poles))
            say(
                f"set-up: {counts['poles']:,} poles, {counts['devices']:,} devices;"
                f" {counts['offline']} poles offline, {counts['out_of_service']} out of service,"
                f" {counts['alarms']} active alarms; {time.monotonic() - t0:.0f} s"
            )
            with running_gateway(url, args.mqtt_url, prefix, workdir) as gw:
                results = asyncio.run(measure(args, gw, url, prefix, workdir))
            report(results, args)
    finally:
        if not args.keep:
            with psycopg.connect(args.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
