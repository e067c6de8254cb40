"""The saga clock: timers count only time during which the orchestrator could reach the platform.

A step's TimeoutSeconds bounds how long a *service* may take. When RabbitMQ or PostgreSQL is away, no
service can take a step and no reply can arrive, so letting a 30 s timeout run through a one-minute
broker outage would fail (and compensate) orders that are perfectly healthy and complete the moment the
broker returns. A broker that is connected but *blocked* (connection.blocked: a memory or disk alarm, so
no command can be published) is away in the same sense, and counts as such (plumbing.broker.Broker.available).
The same holds while every orchestrator replica is down: replies wait in their queue,
and a timer firing at start-up before they are read would be wrong.

So while a replica can use both the broker and the database it stamps ``saga_clock.heartbeat_at``
every HEARTBEAT_SECONDS. The first replica to tick after a gap longer than PAUSE_AFTER_SECONDS pushes
every timer still pending at the gap's start back by the part of the gap it lived through, in the same
transaction that stamps the heartbeat (the row lock makes one replica do it once). A
service that is slow or dead while the platform is up still times out exactly as the guide says: only a
platform outage, seen from the orchestrator, stops the clock.
"""

import logging
from datetime import timedelta

import asyncpg

from orchestrator.metrics import CLOCK_PAUSED_SECONDS

log = logging.getLogger(__name__)

#: How often a connected replica stamps the heartbeat.
HEARTBEAT_SECONDS = 1.0
#: A gap longer than this is a pause; shorter gaps are ordinary scheduling jitter.
PAUSE_AFTER_SECONDS = 3.0


async def tick(conn: asyncpg.Connection) -> float:
    """Stamp the heartbeat; after a pause, push pending timers back. Returns the seconds paused (0 if none)."""
    async with conn.transaction():
        row = await conn.fetchrow("SELECT heartbeat_at, now() AS now FROM saga_clock WHERE id = 1 FOR UPDATE")
        gap = row["now"] - row["heartbeat_at"]
        paused = gap if gap > timedelta(seconds=PAUSE_AFTER_SECONDS) else timedelta(0)
        if paused:
            # A timer armed during the gap (a redrive from orderctl, a handler finishing as the broker went)
            # is pushed back by the part of the gap it lived through; one armed before it, by all of it.
            # A timer row locked right now belongs to a transition in progress, which sets its saga's timers
            # afresh: skipping it (SKIP LOCKED) means this never waits on a transition, so never deadlocks
            # with one that changes two lanes.
            moved = await conn.execute(
                """UPDATE saga_timer t SET due_at = t.due_at + LEAST($2::interval, now() - t.armed_at)
                   FROM (SELECT order_id, lane FROM saga_timer WHERE due_at > $1 FOR UPDATE SKIP LOCKED) pending
                   WHERE t.order_id = pending.order_id AND t.lane = pending.lane""",
                row["heartbeat_at"],
                paused,
            )
            await conn.execute("UPDATE saga_clock SET paused_seconds = paused_seconds + $1", paused.total_seconds())
        await conn.execute("UPDATE saga_clock SET heartbeat_at = now() WHERE id = 1")
    if paused:
        seconds = paused.total_seconds()
        CLOCK_PAUSED_SECONDS.inc(seconds)
        log.warning(
            "saga clock paused: pending timers pushed back",
            extra={"fields": {"paused_seconds": round(seconds, 3), "timers": int(moved.split()[-1])}},
        )
        return seconds
    return 0.0
