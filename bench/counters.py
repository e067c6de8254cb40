"""What one saga costs, counted rather than assumed, and how long each step takes.

- AMQP deliveries: the delta of ``orderflow_messages_handled_total`` scraped from every process's /metrics
  (every consumer counts each delivery it handles, whatever the outcome).
- Batches: the delta of ``orderflow_batch_deliveries_count`` (units of work, one transaction each) beside the
  deliveries: deliveries per unit is the mean batch size of a process that batches.
- PostgreSQL transactions: the delta of ``pg_stat_database.xact_commit`` summed over the installation's
  databases. A backend reports its counts when it goes idle, at most once a second, and counts it holds back
  then wait for its next transaction or its exit: measured on PostgreSQL 15 here, an idle pool connection
  kept a second's worth of commits for over 50 s. So the count is taken from before the warm-up to after
  the processes stopped (their backends report everything as they exit), over every saga of the run, and
  the processes' own idle commits (the saga clock's heartbeat, the outbox relays' wake-ups), measured
  before the warm-up, are subtracted.
- Step latency: from the orchestrator's saga_history, each TaskScheduled to the TaskSucceeded, TaskFailed or
  TaskTimedOut of the same command: the command's trip through the outbox, the broker and the service, and the
  reply's way back until the orchestrator applied it.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

from orderctl.config import SERVICES, CtlSettings
from orderctl.sandbox import db, metric_value
from plumbing.db import database_name

T = TypeVar("T")
HANDLED = "orderflow_messages_handled_total"
#: Units of work a batching consumer ran (one transaction each); not counted where BATCH_MAX is 1.
UNITS = "orderflow_batch_deliveries_count"
#: How long to watch the idle processes' own commits: two periods of the outbox relays' 5 s safety wake-up.
IDLE_SAMPLE_SECONDS = 10.0


async def handled_by_process(settings: CtlSettings, metric: str = HANDLED) -> dict[str, float]:
    """Deliveries each process has handled since it started (``metric``: another counter of each process)."""
    ports = [settings.http_port(s.name) for s in SERVICES]
    values = await asyncio.gather(*(asyncio.to_thread(metric_value, port, metric) for port in ports))
    return {s.name: v for s, v in zip(SERVICES, values, strict=True)}


async def xact_commits(settings: CtlSettings) -> dict[str, int]:
    """Committed transactions of each process's database, as the statistics know them now."""
    names = {database_name(settings.database_url(s.name)): s.name for s in SERVICES}
    conn = await asyncpg.connect(settings.admin_database_url)
    try:
        query = "SELECT datname, xact_commit FROM pg_stat_database WHERE datname = ANY($1::text[])"
        rows = await conn.fetch(query, list(names))
    finally:
        await conn.close()
    counts = {names[r["datname"]]: int(r["xact_commit"]) for r in rows}
    return {s.name: counts[s.name] for s in SERVICES if s.name in counts}


@dataclass(frozen=True)
class CommitReading:
    value: dict[str, int]
    """Commits by process (database)."""
    at: float
    """time.monotonic() of the reading."""
    idle_per_second: dict[str, float]
    """Each database's commits per second while no order is in flight."""


async def idle_commits(settings: CtlSettings, seconds: float = IDLE_SAMPLE_SECONDS) -> CommitReading:
    """The starting reading, and the idle commit rates over the ``seconds`` before it."""
    first, first_at = await xact_commits(settings), time.monotonic()
    await asyncio.sleep(seconds)
    value, at = await xact_commits(settings), time.monotonic()
    return CommitReading(value, at, {k: (v - first.get(k, 0)) / (at - first_at) for k, v in value.items()})


async def agreed(read: Callable[[], Awaitable[T]], *, interval: float = 0.5, timeout: float = 15.0) -> T:
    """Read until two readings ``interval`` apart agree, or ``timeout`` passes; returns the last reading."""
    deadline = time.monotonic() + timeout
    last = await read()
    while time.monotonic() < deadline:
        await asyncio.sleep(interval)
        latest = await read()
        if latest == last:
            break
        last = latest
    return last


def commits_between(start: CommitReading, end: dict[str, int], end_at: float) -> dict[str, int]:
    """Commits by process from ``start`` to ``end``, less the idle commits the processes make anyway meanwhile."""
    idle_seconds = end_at - start.at
    return {
        name: max(0, round(value - start.value.get(name, 0) - start.idle_per_second.get(name, 0.0) * idle_seconds))
        for name, value in end.items()
    }


@dataclass(frozen=True)
class StepLatency:
    step: str
    count: int
    p50: float
    p95: float
    p99: float
    max: float


STEP_QUERY = """
SELECT s.state AS step, count(*) AS n,
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM e.at - s.at)) AS p,
       max(extract(epoch FROM e.at - s.at)) AS worst
  FROM saga_history s
  JOIN saga_history e ON e.order_id = s.order_id AND e.command_id = s.command_id
 WHERE s.event = 'TaskScheduled'
   AND e.event IN ('TaskSucceeded', 'TaskFailed', 'TaskTimedOut')
   AND s.order_id = ANY($1::text[])
 GROUP BY s.state
 ORDER BY min(s.id)
"""


async def step_latencies(settings: CtlSettings, order_ids: list[str]) -> list[StepLatency]:
    """Per step name: command sent to its reply applied, over the given orders' sagas."""
    conn = await db(settings, "orchestrator")
    try:
        rows = await conn.fetch(STEP_QUERY, order_ids)
    finally:
        await conn.close()
    return [
        StepLatency(r["step"], r["n"], *(round(float(v), 4) for v in r["p"]), round(float(r["worst"]), 4)) for r in rows
    ]
