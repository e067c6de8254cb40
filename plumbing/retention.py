"""Bounded retention: every process forgets old inbox rows (and the tables a service adds) in small batches.

An inbox row only has to outlive the longest time in which the same message can arrive again: a broker
redelivery (at most DELIVERY_LIMIT deliveries, each within the consumer's handling time), a relay's second
publish after a crash (its hold, seconds), a command waiting in its queue past its step's window (a stale
command, refused on its deadline). With the workflow's windows that is minutes; RETENTION_FLOOR_HOURS is a
day, far above it, and a shorter setting is refused at start (``check``). Stripe retries a webhook for up to
three days, so the webhook event table has its own, longer floor (payment's settings).

Each pass deletes at most ``batch`` rows per statement, oldest first, through the age index, skipping rows
a transaction holds: a backlog of millions never holds locks (or a connection) for long, and a claim of a
duplicate in progress is never waited on.
"""

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import asyncpg

from plumbing import metrics

log = logging.getLogger(__name__)

#: The shortest retention any table may have: above the longest redelivery window (see the module's doc).
RETENTION_FLOOR_HOURS = 24.0
#: How often a process purges; retention is counted in days, so a few minutes late costs nothing.
PURGE_INTERVAL_SECONDS = 300.0
#: Rows deleted per statement: one statement's locks and duration stay small, whatever the backlog.
BATCH = 1000


class RetentionTooShort(ValueError):
    """A retention shorter than the redelivery window it must cover: a late duplicate would act twice."""


def check(setting: str, hours: float, *, floor_hours: float = RETENTION_FLOOR_HOURS, why: str = "") -> float:
    """``hours`` if it covers ``floor_hours``; otherwise refuse it, naming the setting and the floor."""
    if hours < floor_hours:
        reason = why or "the longest redelivery window (docs/reliability.md, Bounded retention)"
        raise RetentionTooShort(
            f"{setting}={hours:g} is shorter than {floor_hours:g} h, the floor set by {reason}: a message "
            f"redelivered after its inbox row is purged would take effect twice"
        )
    return hours


@dataclass(frozen=True)
class Rule:
    """One table whose rows are deleted once ``column`` (a timestamp with an index) is older than ``hours``."""

    table: str
    column: str
    hours: float

    def __post_init__(self) -> None:
        # Identifiers go into SQL as they are: they come from code, never from input, and must be plain names.
        for name in (self.table, self.column):
            if not name.isidentifier():
                raise ValueError(f"retention rule: {name!r} is not a plain identifier")


def inbox_rule(hours: float) -> Rule:
    """The plumbing's inbox (every consumer's handled message ids)."""
    return Rule(table="inbox", column="processed_at", hours=hours)


async def purge(pool: asyncpg.Pool, rule: Rule, *, service: str, batch: int = BATCH) -> int:
    """Delete every row of ``rule.table`` older than its retention, ``batch`` rows per statement; returns how
    many. Each statement commits on its own, and the connection goes back to the pool between batches."""
    statement = f"""
        DELETE FROM {rule.table} WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM {rule.table} WHERE {rule.column} < now() - make_interval(secs => $1)
            ORDER BY {rule.column} LIMIT $2 FOR UPDATE SKIP LOCKED))"""
    purged = 0
    while True:
        async with pool.acquire() as conn:
            deleted = int((await conn.execute(statement, rule.hours * 3600.0, batch)).split()[-1])
        purged += deleted
        metrics.RETENTION_PURGED.labels(service, rule.table).inc(deleted)
        if deleted < batch:
            break
        await asyncio.sleep(0)  # let the process's other work in between batches
    if purged:
        log.info("retention purged old rows", extra={"fields": {"table": rule.table, "rows": purged}})
    return purged


async def run(
    pool_of: Callable[[], asyncpg.Pool],
    rules: Iterable[Rule],
    *,
    service: str,
    interval_seconds: float = PURGE_INTERVAL_SECONDS,
    batch: int = BATCH,
) -> None:
    """Purge every rule's table now, then every ``interval_seconds``; a failed pass is retried at the next."""
    rules = list(rules)
    while True:
        for rule in rules:
            try:
                await purge(pool_of(), rule, service=service, batch=batch)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                log.warning("retention pass failed; the next pass retries", exc_info=True)
        await asyncio.sleep(interval_seconds)
