#!/usr/bin/env python3
"""Replica benchmark (issue 19): ingest throughput and CPU per reading with 1, 2 and
3 `polegw run` replicas on shared subscriptions, failover time of every lease, and
the database load the leases add.

    .venv/bin/python bench/replicas.py                        # everything, ~5 minutes
    .venv/bin/python bench/replicas.py --replicas 1,3 --rate 20000,60000
    .venv/bin/python bench/replicas.py --skip-ingest          # failover and lease load only

One run does, on this machine, against the real broker and PostgreSQL:

1. Set-up as bench/ingest.py: a database of its own (``polegw_bench_<hex>``,
   dropped at the end), ``polegw migrate``, the demo site (``--poles``) imported,
   messages of ``--readings-per-message`` readings built from the simulators'
   models before the clock starts, one ``mosquitto_pub -l -q 1`` per pole fed by
   a pacer thread (bench/ingest.py's Publishers and Pacer).

2. Ingest, per configuration: ``single`` (one gateway without a share group: the
   gateway as it was before replicas, the reference every other row is compared
   with) and N = 1, 2, 3 replicas in one share group (unique to the run), each
   its own client id, API port and spool. For each configuration:

   - idle database load: 10 s without messages; PostgreSQL's transaction count
     on the bench database (``pg_stat_database.xact_commit``, everything the
     gateways do), and the lease keepers' rounds (``gateway_leases``'s sequential
     scans: one per round; a round is a renewal and an observation, two
     statements) and row writes (``pg_stat_user_tables``), per second and per
     replica;
   - each ``--rate`` in turn for ``--duration`` s (the first ``--warmup`` s not
     measured): readings stored per second (the sum of the replicas'
     ``polegw_readings_stored_total``), CPU seconds of the replicas, the broker,
     the PostgreSQL backends of the bench database (with the WAL writer,
     checkpointer and background writer) and the whole machine over the window,
     then the stored total checked against ``SELECT count(*)`` after a drain.
     The first rate should be one every configuration keeps up with (CPU per
     reading is then comparable); the second one above what one gateway
     sustains on this machine, to show where the cores saturate.

3. Failover: N replicas (``--failover-replicas``, default 3) with the production
   lease TTL (``--ttl``, default 6 s). For every lease in ``gateway_leases``
   other than the replicas' heartbeats (the five leader roles; the buses too
   once buses are leased) the holder is killed with SIGKILL and the time until
   another replica holds each lease it held is read from ``gateway_leases``
   (polled every 50 ms); the killed replica is started again and the leases
   settle before the next kill. Then one holder is stopped with SIGTERM, the
   graceful hand-back.

Everything runs on the same machine: the broker, PostgreSQL, the replicas and
the load generator share its cores. The figures are for comparing the rows of
one run, not for sizing a server; docs/scaling.md turns them into a plan.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ingest import (  # noqa: E402  (beside this script; run as bench/replicas.py)
    DEFAULT_ADMIN_URL,
    CpuMeter,
    Gateway,
    Pacer,
    Plan,
    Publishers,
    all_processes_cpu,
    bench_pg_pids,
    broker_drops,
    build_plan,
    build_site,
    create_database,
    discard_run,
    find_broker_pid,
    machine_cpu_between,
    pg_connect,
    pole_samples,
    polegw_exe,
    start_gateway,
    stop_gateway,
    with_db,
)

IDLE_S = 10.0
# A lease keeper's round is a renewal (an index scan per lease named) and an
# observation (the table's only sequential scan), plus an acquisition when a
# lease is free: so sequential scans count rounds, and statements are about two
# a round.
LEASE_STATS = (
    "SELECT coalesce(seq_scan, 0), n_tup_ins + n_tup_upd + n_tup_del"
    " FROM pg_stat_user_tables WHERE relname = 'gateway_leases'"
)


@dataclass
class Replicas:
    """The gateways of one configuration."""

    gateways: list[Gateway]
    dirs: list[Path]
    extra_env: list[dict[str, str]]

    @property
    def pids(self) -> list[int]:
        return [g.pid for g in self.gateways if g.proc.poll() is None]

    def stored(self) -> float:
        return sum(g.stored() for g in self.gateways if g.proc.poll() is None)

    def batches(self) -> tuple[float, float]:
        """Readings committed in batches, and batches, summed over the replicas."""
        readings = batches = 0.0
        for g in self.gateways:
            if g.proc.poll() is None:
                m = g.metrics()
                readings += m.get("polegw_batch_readings_sum", 0.0)
                batches += m.get("polegw_batch_readings_count", 0.0)
        return readings, batches


@dataclass
class Context:
    args: argparse.Namespace
    run_id: str
    prefix: str
    db_url: str
    dbname: str
    mqtt_url: str
    workdir: Path
    env_base: dict[str, str]
    broker_pid: int | None
    topics: list[str]
    make_plan: Any
    results: dict[str, Any] = field(default_factory=dict)


def say(text: str = "") -> None:
    print(text, flush=True)


def wait_subscribed(gw: Gateway, timeout: float = 30.0) -> None:
    """start_gateway returns once connected; the SUBACK comes a moment later."""
    deadline = time.monotonic() + timeout
    starts = gw.log_path.read_text(errors="replace").count("MQTT connected to")
    while starts < 1:
        if time.monotonic() > deadline:
            raise SystemExit(f"{gw.client_id} not subscribed within {timeout}s ({gw.log_path})")
        time.sleep(0.1)
        starts = gw.log_path.read_text(errors="replace").count("MQTT connected to")


def start_replicas(ctx: Context, n: int, label: str, *, ttl: float | None = None) -> Replicas:
    group = None if label == "single" else f"{ctx.run_id}-{label}".replace("-", "_")
    dirs, envs, gws = [], [], []
    for i in range(n):
        d = ctx.workdir / f"{label}-{i}"
        d.mkdir(parents=True, exist_ok=True)
        extra = dict(ctx.args.extra_env)
        if group is not None:
            extra["POLEGW_MQTT_SHARE_GROUP"] = group
        if ttl is not None:
            extra["POLEGW_LEASE_TTL_S"] = str(ttl)
        dirs.append(d)
        envs.append(extra)
    for i in range(n):  # started together, as an orchestrator would
        gws.append(
            start_gateway(
                ctx.env_base,
                ctx.db_url,
                ctx.prefix,
                f"polegw-{ctx.run_id}-{label}-{i}",
                ctx.mqtt_url,
                dirs[i],
                envs[i],
                None,
            )
        )
    for g in gws:
        wait_subscribed(g)
    return Replicas(gws, dirs, envs)


def stop_replicas(ctx: Context, reps: Replicas | None) -> None:
    if reps is None:
        return
    for g in reps.gateways:
        stop_gateway(g, ctx.args.mqtt_host, ctx.args.mqtt_port)


def db_counters(ctx: Context) -> tuple[float, int, int, int]:
    with pg_connect(ctx.db_url, autocommit=True) as conn:
        # A fresh snapshot of the cumulative statistics (PostgreSQL 15 caches them
        # for the transaction otherwise).
        conn.execute("SELECT pg_stat_clear_snapshot()")
        xacts = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            (ctx.dbname,),
        ).fetchone()[0]
        lease = conn.execute(LEASE_STATS).fetchone() or (0, 0)
    return time.monotonic(), int(xacts), int(lease[0]), int(lease[1])


def idle_load(ctx: Context, reps: Replicas) -> dict[str, float]:
    time.sleep(2.0)  # past start-up's own queries
    meter = CpuMeter()
    meter.start(reps.pids)
    t0, x0, s0, w0 = db_counters(ctx)
    time.sleep(IDLE_S)
    t1, x1, s1, w1 = db_counters(ctx)
    idle_cpu = meter.stop()
    dt, n = t1 - t0, len(reps.gateways)
    # Each db_counters call is itself 4 transactions (connect, clear, two reads).
    xacts = max(0, x1 - x0 - 4)
    return {
        "window_s": dt,
        "xacts_per_s": xacts / dt,
        "xacts_per_s_per_replica": xacts / dt / n,
        "lease_rounds_per_s_per_replica": (s1 - s0) / dt / n,
        "lease_row_writes_per_s_per_replica": (w1 - w0) / dt / n,
        "idle_cpu_cores_per_replica": idle_cpu / dt / n,
    }


def count_rows(ctx: Context) -> int:
    with pg_connect(ctx.db_url) as conn:
        return int(conn.execute("SELECT count(*) FROM telemetry").fetchone()[0])


def load_step(ctx: Context, reps: Replicas, rate: float, label: str) -> dict[str, Any]:
    args = ctx.args
    before_db = count_rows(ctx)
    pubs = Publishers(args.mqtt_host, args.mqtt_port, ctx.topics, f"{ctx.run_id}-{label}")
    time.sleep(1.0)  # let them connect
    plan: Plan = ctx.make_plan(rate, args.duration)
    pacer = Pacer(plan, pubs.fds)
    t0 = plan.sched[0]
    time.sleep(max(0.0, t0 - time.time() - 0.2))
    stored0 = reps.stored()
    pacer.start()
    warm_end, load_end = t0 + args.warmup, t0 + args.duration
    while time.time() < warm_end:
        time.sleep(0.05)
    meters = {k: CpuMeter() for k in ("replicas", "broker", "postgres", "publishers")}
    meters["replicas"].start(reps.pids)
    meters["broker"].start([ctx.broker_pid] if ctx.broker_pid else [])
    meters["postgres"].start(bench_pg_pids(args.admin_url, ctx.dbname))
    meters["publishers"].start(pubs.pids)
    sys0 = all_processes_cpu()
    s_start, w_start, sent0 = reps.stored(), time.monotonic(), pacer.sent
    b_start = reps.batches()
    while time.time() < load_end:
        if pacer.error:
            raise pacer.error
        time.sleep(0.2)
    s_end, w_end, sent1 = reps.stored(), time.monotonic(), pacer.sent
    b_end = reps.batches()
    sys1 = all_processes_cpu()
    cpu = {k: m.stop() for k, m in meters.items()}
    pacer.join()
    pubs.close_inputs()
    window = w_end - w_start
    # Drain: until everything published is stored, or progress stops.
    last, last_at = -1.0, time.monotonic()
    while True:
        done = reps.stored() - stored0
        if done >= plan.readings:
            break
        if done != last:
            last, last_at = done, time.monotonic()
        if time.monotonic() - last_at > args.drain_timeout:
            break
        time.sleep(0.2)
    pubs.wait(30)
    stored_db = count_rows(ctx) - before_db
    # Readings missing after the drain were dropped by the broker (its queue per
    # session full): the replicas never received them. Its log says so.
    drops = sum(max(0, broker_drops(args.broker_log, g.client_id, t0 - 2)) for g in reps.gateways)
    busy = machine_cpu_between(sys0, sys1)
    cpu["machine"] = busy
    cpu["other"] = max(0.0, busy - sum(v for k, v in cpu.items() if k != "machine"))
    stored_rps = (s_end - s_start) / window
    return {
        "rate_target": rate,
        "offered_rps": (sent1 - sent0) * plan.readings_per_message / window,
        "stored_rps": stored_rps,
        "readings": plan.readings,
        "missing": plan.readings - stored_db,
        "broker_drop_notices": drops,
        "window_s": window,
        "cpu_s": cpu,
        "cpu_cores": {k: v / window for k, v in cpu.items()},
        "replica_cpu_us_per_reading": 1e6 * cpu["replicas"] / max(1.0, s_end - s_start),
        "mean_batch_readings": (b_end[0] - b_start[0]) / max(1.0, b_end[1] - b_start[1]),
    }


def ingest(ctx: Context) -> None:
    args = ctx.args
    configs = [("single", 1)] + [(f"r{n}", n) for n in args.replicas]
    out: dict[str, Any] = {}
    for label, n in configs:
        say(
            f"\n== {label}: {n} gateway{'s' if n > 1 else ''}"
            + (" (no share group)" if label == "single" else " in one share group")
        )
        reps = None
        try:
            reps = start_replicas(ctx, n, label)
            row: dict[str, Any] = {"gateways": n, "idle": idle_load(ctx, reps), "steps": []}
            idle = row["idle"]
            say(
                f"   idle: {idle['xacts_per_s']:.1f} transactions/s on the database"
                f" ({idle['xacts_per_s_per_replica']:.1f} per gateway);"
                f" per gateway: {idle['lease_rounds_per_s_per_replica']:.2f} lease rounds/s"
                " (~2 statements each),"
                f" {idle['lease_row_writes_per_s_per_replica']:.2f} gateway_leases row writes/s,"
                f" {idle['idle_cpu_cores_per_replica']:.3f} cores of CPU"
            )
            for rate in args.rate:
                step = load_step(ctx, reps, rate, f"{label}-{rate:.0f}")
                row["steps"].append(step)
                c = step["cpu_cores"]
                say(
                    f"   {rate:>8,.0f}/s offered {step['offered_rps']:>8,.0f}:"
                    f" stored {step['stored_rps']:>8,.0f}/s, missing {step['missing']:,}"
                    f" (broker drop notices {step['broker_drop_notices']});"
                    f" CPU (cores) replicas {c['replicas']:.2f}, broker {c['broker']:.2f},"
                    f" postgres {c['postgres']:.2f}, publishers {c['publishers']:.2f},"
                    f" other {c['other']:.2f}, machine {c['machine']:.2f};"
                    f" {step['replica_cpu_us_per_reading']:.1f} µs replica CPU per reading,"
                    f" batches of {step['mean_batch_readings']:,.0f} readings"
                )
            out[label] = row
        finally:
            stop_replicas(ctx, reps)
    ctx.results["ingest"] = out
    ref = out.get("single")
    if ref:
        say("\n== ratios to the single gateway (same run)")
        for label, row in out.items():
            parts = []
            for step, base in zip(row["steps"], ref["steps"], strict=True):
                stored = step["stored_rps"] / base["stored_rps"]
                per = step["replica_cpu_us_per_reading"] / base["replica_cpu_us_per_reading"]
                parts.append(
                    f"{step['rate_target']:,.0f}/s: stored x{stored:.2f}, CPU/reading x{per:.2f}"
                )
            say(f"   {label:>6}: " + "; ".join(parts))


# --------------------------------------------------------------------------- failover


def lease_rows(ctx: Context) -> dict[str, str]:
    """Lease -> holder, for every unexpired lease but the heartbeats."""
    with pg_connect(ctx.db_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT name, holder FROM gateway_leases"
            " WHERE expires_at > now() AND name NOT LIKE 'replica/%'"
        ).fetchall()
    return {str(n): str(h) for n, h in rows}


def settle(ctx: Context, reps: Replicas, timeout: float = 60.0) -> dict[str, str]:
    """Until every leader role is held and every replica holds at most its share."""
    deadline = time.monotonic() + timeout
    alive = {g.client_id for g in reps.gateways if g.proc.poll() is None}
    while True:
        rows = lease_rows(ctx)
        per: dict[str, int] = {}
        for h in rows.values():
            per[h] = per.get(h, 0) + 1
        leaders = [n for n in rows if n.startswith("leader/")]
        share = -(-len(leaders) // max(1, len(alive)))
        if (
            len(leaders) >= 5
            and set(rows.values()) <= alive
            and max(per.values(), default=0) <= share + 1
            and len(per) == len(alive)
        ):
            return rows
        if time.monotonic() > deadline:
            return rows
        time.sleep(0.25)


def failover(ctx: Context) -> None:
    args = ctx.args
    n, ttl = args.failover_replicas, args.ttl
    say(f"\n== failover: {n} replicas, lease TTL {ttl:g} s")
    reps = start_replicas(ctx, n, "fo", ttl=ttl)
    measured: dict[str, list[float]] = {}
    graceful: dict[str, float] = {}
    try:
        rows = settle(ctx, reps)
        say(f"   holders: {rows}")
        kills = 0
        graceful_round = False
        while not graceful_round:
            rows = settle(ctx, reps)
            todo = [name for name in sorted(rows) if name not in measured]
            # SIGKILL the holder of a lease not measured yet, until each was
            # (at most --kills times); then SIGTERM one holder.
            graceful_round = not todo or kills >= args.kills
            todo = todo or sorted(rows)
            kills += not graceful_round
            victim_id = rows[todo[0]]
            i = next(k for k, g in enumerate(reps.gateways) if g.client_id == victim_id)
            held = sorted(name for name, h in rows.items() if h == victim_id)
            t0 = time.monotonic()
            if graceful_round:
                reps.gateways[i].proc.send_signal(signal.SIGTERM)
            else:
                reps.gateways[i].proc.kill()
            taken: dict[str, float] = {}
            while len(taken) < len(held) and time.monotonic() - t0 < ttl * 4:
                now_rows = lease_rows(ctx)
                for name in held:
                    h = now_rows.get(name)
                    if name not in taken and h is not None and h != victim_id:
                        taken[name] = time.monotonic() - t0
                time.sleep(0.05)
            reps.gateways[i].proc.wait(30)
            how = "SIGTERM (hand-back)" if graceful_round else "SIGKILL"
            for name in held:
                took = taken.get(name)
                say(
                    f"   {how} {victim_id}: {name} held again after"
                    f" {f'{took:.2f} s' if took is not None else 'NOT within 4 TTL'}"
                )
                if took is not None:
                    if graceful_round:
                        graceful[name] = took
                    else:
                        measured.setdefault(name, []).append(took)
            # The same replica comes back (same client id: its session and spool).
            reps.gateways[i] = start_gateway(
                ctx.env_base,
                ctx.db_url,
                ctx.prefix,
                victim_id,
                ctx.mqtt_url,
                reps.dirs[i],
                reps.extra_env[i],
                None,
            )
    finally:
        stop_replicas(ctx, reps)
    ctx.results["failover"] = {"ttl_s": ttl, "sigkill": measured, "sigterm": graceful}
    say("\n== failover summary (s from the holder's death to another replica holding it)")
    for name, times in sorted(measured.items()):
        say(f"   {name:<22} SIGKILL: " + ", ".join(f"{t:.2f}" for t in times))
    for name, took in sorted(graceful.items()):
        say(f"   {name:<22} SIGTERM: {took:.2f}")


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )

    def floats(v: str) -> list[float]:
        return [float(x) for x in v.split(",")]

    def ints(v: str) -> list[int]:
        return [int(x) for x in v.split(",")]

    ap.add_argument("--replicas", type=ints, default=[1, 2, 3], help="default 1,2,3")
    ap.add_argument(
        "--rate", type=floats, default=[20_000, 60_000], help="readings/s (default 20000,60000)"
    )
    ap.add_argument("--duration", type=float, default=12, help="seconds per rate (default 12)")
    ap.add_argument("--warmup", type=float, default=3, help="seconds not measured (default 3)")
    ap.add_argument("--poles", type=int, default=200)
    ap.add_argument("--readings-per-message", type=int, default=20)
    ap.add_argument("--drain-timeout", type=float, default=10.0)
    ap.add_argument(
        "--broker-log",
        default="/var/log/mosquitto/mosquitto.log",
        help="mosquitto's log, read for 'messages are being dropped' notices",
    )
    ap.add_argument("--ttl", type=float, default=6.0, help="failover: lease TTL (default 6)")
    ap.add_argument("--failover-replicas", type=int, default=3)
    ap.add_argument(
        "--kills",
        type=int,
        default=6,
        help="failover: SIGKILLs until each lease was measured (at most this many), then a SIGTERM",
    )
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--skip-failover", action="store_true")
    ap.add_argument(
        "--admin-url", default=os.environ.get("POLEGW_BENCH_ADMIN_URL", DEFAULT_ADMIN_URL)
    )
    ap.add_argument("--mqtt-host", default="127.0.0.1")
    ap.add_argument("--mqtt-port", type=int, default=1883)
    ap.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--keep", action="store_true", help="keep the database and work dir")
    args = ap.parse_args()
    args.extra_env = dict(kv.split("=", 1) for kv in args.gateway_env)

    run_id = "bench-" + secrets.token_hex(4)
    prefix = f"{run_id}/poles"
    dbname = "polegw_bench_" + run_id.split("-")[1]
    db_url = with_db(args.admin_url, dbname)
    workdir = Path(tempfile.mkdtemp(prefix=f"polegw-{run_id}-"))
    env_base = {k: v for k, v in os.environ.items() if not k.startswith("POLEGW_")}
    say(
        f"polegw replica bench {run_id}: {os.cpu_count()} CPUs, load average"
        f" {Path('/proc/loadavg').read_text().split()[:3]}, work dir {workdir}"
    )
    create_database(args.admin_url, dbname)
    try:
        from simulators.demo_site import site_to_yaml

        site = build_site(args.poles)
        site_file = workdir / "site.yaml"
        site_file.write_text(site_to_yaml(site), encoding="utf-8")
        env = dict(env_base, POLEGW_DATABASE_URL=db_url, POLEGW_LOG_LEVEL="WARNING")
        for cmd in (["migrate"], ["site", "import", str(site_file)]):
            subprocess.run(
                [polegw_exe(), *cmd], env=env, check=True, cwd=workdir, stdout=subprocess.DEVNULL
            )
        variants = 4
        fragments, rows, lamps = pole_samples(site, args.readings_per_message, variants)

        def make_plan(rate: float, duration: float) -> Plan:
            t0 = time.time() + 1.0 + 2e-5 * rate * duration / args.readings_per_message
            return build_plan(
                site,
                prefix,
                rate=rate,
                duration=duration,
                per_message=args.readings_per_message,
                t0=t0,
                fragments=fragments,
                rows=rows,
                lamps=lamps,
                variants=variants,
            )

        ctx = Context(
            args=args,
            run_id=run_id,
            prefix=prefix,
            db_url=db_url,
            dbname=dbname,
            mqtt_url=f"mqtt://{args.mqtt_host}:{args.mqtt_port}",
            workdir=workdir,
            env_base=env_base,
            broker_pid=find_broker_pid(args.mqtt_port),
            topics=[f"{prefix}/{p.id}/telemetry" for p in site.poles],
            make_plan=make_plan,
        )
        ctx.results = {"run_id": run_id, "args": {k: v for k, v in vars(args).items()}}
        if not args.skip_ingest:
            ingest(ctx)
        if not args.skip_failover:
            failover(ctx)
        say(f"\nload average at the end {Path('/proc/loadavg').read_text().split()[:3]}")
        if args.json:
            Path(args.json).write_text(json.dumps(ctx.results, indent=2, default=str))
    finally:
        if not args.keep:
            with contextlib.suppress(Exception):
                discard_run(args.admin_url, dbname, workdir, None)


if __name__ == "__main__":
    main()
