"""Adopting the MQTT session of a replica that is gone (docs/scaling.md, "Failure
behaviour"; issue 19).

With MQTT 5 shared subscriptions Mosquitto (and EMQX) keep dealing a share of the
group's messages to a member's persistent session while it is disconnected, so a
replica that stopped or died would collect its share in the broker until it came
back or the session expired. So when a replica's heartbeat lease `replica/{id}`
has expired (killed, or expired by the replica itself as it stopped), one
surviving replica (the holder of the lease `adopt/{id}`) connects with that
client id, removes the session's subscriptions, ingests what is queued through
its own pipeline (acknowledged after commit) and ends the session; then deletes
the stale heartbeat row so that nobody adopts it again. With no replica left
running nobody adopts: every session keeps its share until its replica is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from functools import partial

import aiomqtt
import psycopg

from gateway.adapters.leases import LeaseKeeper
from gateway.adapters.mqtt import Inbound, MqttSubscription
from gateway.backoff import Backoff
from gateway.core.ownership import ADOPT, adoption, replica
from gateway.metrics import Metrics

log = logging.getLogger(__name__)

# The adopted session is drained when nothing came for this long after the last
# message or acknowledgement (the broker sends what it queued at once).
QUIET_S = 3.0


class SessionAdoption:
    """Adopts the sessions of gone replicas, each once across the replicas."""

    def __init__(
        self,
        *,
        database_url: str,
        leases: LeaseKeeper,
        mqtt: MqttSubscription,
        deliver: Callable[[Inbound], None],
        metrics: Metrics,
        quiet_s: float = QUIET_S,
    ) -> None:
        self._url = database_url
        self._leases = leases
        self._mqtt = mqtt
        self._deliver = deliver
        self._metrics = metrics
        self._quiet_s = quiet_s

    def wanted(self) -> list[str]:
        """The `adopt/{id}` leases to ask for (LeaseKeeper.want)."""
        return [adoption(rid) for rid in self._leases.gone_replicas]

    async def run(self, stop: asyncio.Event) -> None:
        """Adopt each session whose `adopt/{id}` lease this replica takes."""
        self._leases.want("adopt", self.wanted)
        jobs: dict[str, asyncio.Task[None]] = {}
        try:
            while not stop.is_set():
                for rid in self._held():
                    if rid not in jobs:
                        name = adoption(rid)
                        jobs[rid] = asyncio.create_task(
                            self._leases.while_held(name, partial(self._adopt, rid, stop), stop),
                            name=name,
                        )
                for rid, job in list(jobs.items()):
                    lease = self._leases.lease(adoption(rid))
                    if job.done() or (not lease.held.is_set() and lease.idle.is_set()):
                        job.cancel()
                        del jobs[rid]
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await stop.wait()
        finally:
            for job in jobs.values():
                job.cancel()
            await asyncio.gather(*jobs.values(), return_exceptions=True)

    def _held(self) -> list[str]:
        return self._leases.owned().get(ADOPT.rstrip("/"), [])

    async def _adopt(self, rid: str, stop: asyncio.Event) -> None:
        """Adopt `rid`'s session, while holding `adopt/{rid}`. Cancelled when the
        lease goes: handed back once the replica's heartbeat is alive again."""
        retry = Backoff(first=30.0, cap=600.0)
        while await self._still_gone(rid):
            started = time.monotonic()
            log.info("adopting the MQTT session of replica %s (its heartbeat expired)", rid)
            try:
                n = await self._mqtt.adopt(rid, self._deliver, stop, quiet_s=self._quiet_s)
            except aiomqtt.MqttError as exc:
                # The replica is back (it took its session over) or the broker is
                # gone. The lease is kept meanwhile, so no other replica tries at
                # once; it is handed back when the heartbeat is renewed.
                delay = retry.next_delay()
                self._metrics.sessions_adopted.labels("interrupted").inc()
                log.warning(
                    "adoption of replica %s's MQTT session interrupted (%s): the replica"
                    " is back or the broker connection was lost; the session is kept,"
                    " tried again in %.0fs if the replica is still gone",
                    rid,
                    exc,
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
                continue
            if n is None:  # stopping: the session stays for the next adopter
                return
            self._metrics.sessions_adopted.labels("ended").inc()
            self._metrics.adopted_messages.inc(n)
            await self._forget(rid)
            log.info(
                "replica %s adopted the MQTT session of replica %s: %d messages ingested in"
                " %.1fs, session ended",
                self._leases.holder,
                rid,
                n,
                time.monotonic() - started,
            )
            return

    async def _still_gone(self, rid: str) -> bool:
        """The heartbeat row is still expired (the replica did not come back)."""
        async with await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, connect_timeout=3, application_name="polegw-adoption"
        ) as conn:
            cur = await conn.execute(
                "SELECT expires_at < now() FROM gateway_leases WHERE name = %s", (replica(rid),)
            )
            row = await cur.fetchone()
        return row is not None and bool(row[0])

    async def _forget(self, rid: str) -> None:
        """Delete the stale heartbeat row (unless the replica renewed it meanwhile):
        nobody adopts the session again, nor counts the replica as one."""
        async with await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, connect_timeout=3, application_name="polegw-adoption"
        ) as conn:
            await conn.execute(
                "DELETE FROM gateway_leases WHERE name = %s AND expires_at < now()",
                (replica(rid),),
            )
        self._leases.poke()
