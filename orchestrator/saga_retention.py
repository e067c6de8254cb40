"""Retention of finished sagas: a saga that ended long ago goes, with its history, timers and manual actions.

A saga is purged once its last update (``updated_at``: its last transition, or its last audit entry) is older
than SAGA_RETENTION_DAYS (90 by default), and only when nobody can still act on it:

- never a RUNNING saga, however old (it is stuck, not finished: orderflow_sagas_stuck says so);
- never one an operator may still redrive (FAILED_CRITICAL, CANCELLATION_FAILED: api_models.REDRIVABLE): such a
  saga waits for a person, who must find it and its history whatever its age. It stays until it is redriven
  and then ends in another status, whose age then counts;
- never one with a manual refund still pending (its reply would find no saga);
- never one whose order has another saga still kept for one of these reasons (an order's cancellation that
  runs or failed keeps the order's own saga, from which its input came).

The floor (SAGA_RETENTION_FLOOR_DAYS, 7) keeps a saga past every window in which its order can come back: the
inbox's redelivery window (plumbing/retention.py, a day), Stripe's webhook retries (three days), inventory's
idempotency cache (seven days). Each batch locks at most ``batch`` sagas, skipping any a transaction holds (a
reply, a redrive, a refund), and deletes them and their rows in one short transaction; the connection goes back
to the pool between batches. Rows deleted are counted in ``orderflow_retention_purged_total`` (service
orchestrator, table saga, saga_history, saga_timer, saga_manual_action). Stored workflow definitions stay: a
saga that still runs may need its version, and they are few.
"""

import asyncio
import logging
from collections.abc import Callable

import asyncpg

from orchestrator.api_models import REDRIVABLE
from plumbing import metrics, retention

log = logging.getLogger(__name__)

#: The default retention of finished sagas (issue 17).
DEFAULT_DAYS = 90.0
#: The shortest allowed: past the windows in which an order's messages can come back (see the module's doc).
SAGA_RETENTION_FLOOR_DAYS = 7.0
#: Sagas purged per transaction (their history rows, tens each, go with them).
BATCH = 200
#: Statuses whose sagas are never purged: still running, or waiting for an operator.
KEPT_STATUSES: tuple[str, ...] = ("RUNNING", *sorted(REDRIVABLE))
#: Tables purged, children first (they reference saga.order_id).
TABLES = ("saga_history", "saga_timer", "saga_manual_action", "saga")

_PICK = """
SELECT s.order_id FROM saga s
WHERE s.updated_at < now() - make_interval(secs => $1) AND s.status <> ALL($2::text[])
  AND NOT EXISTS (SELECT 1 FROM saga_manual_action m WHERE m.order_id = s.order_id AND m.outcome = 'pending')
  AND NOT EXISTS (
      SELECT 1 FROM saga o
      WHERE o.subject_order_id = s.subject_order_id AND o.order_id <> s.order_id AND o.status = ANY($2::text[]))
ORDER BY s.updated_at LIMIT $3 FOR UPDATE OF s SKIP LOCKED
"""


def check_days(days: float) -> float:
    """``days`` if it covers SAGA_RETENTION_FLOOR_DAYS; otherwise refuse it (the process does not start)."""
    if days < SAGA_RETENTION_FLOOR_DAYS:
        raise retention.RetentionTooShort(
            f"SAGA_RETENTION_DAYS={days:g} is shorter than {SAGA_RETENTION_FLOOR_DAYS:g} days, the windows in which "
            "an order's messages can come back (orchestrator/saga_retention.py): a late OrderRequested would "
            "start its saga again"
        )
    return days


async def purge(pool: asyncpg.Pool, *, days: float, batch: int = BATCH) -> int:
    """Delete every finished saga older than ``days`` that nobody can still act on, ``batch`` sagas per
    transaction, with their rows; returns how many sagas went."""
    purged = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            ids = [r["order_id"] for r in await conn.fetch(_PICK, days * 86400.0, list(KEPT_STATUSES), batch)]
            if not ids:
                break
            for table in TABLES:
                # Identifiers from the tuple above, never from input.
                status = await conn.execute(f"DELETE FROM {table} WHERE order_id = ANY($1::text[])", ids)
                metrics.RETENTION_PURGED.labels("orchestrator", table).inc(int(status.split()[-1]))
        purged += len(ids)
        if len(ids) < batch:
            break
        await asyncio.sleep(0)  # the process's other work between batches
    if purged:
        log.info("retention purged finished sagas", extra={"fields": {"sagas": purged, "days": days}})
    return purged


async def run(
    pool_of: Callable[[], asyncpg.Pool],
    *,
    days: float,
    interval_seconds: float = retention.PURGE_INTERVAL_SECONDS,
    batch: int = BATCH,
) -> None:
    """Purge now, then every ``interval_seconds``; a failed pass is retried at the next."""
    for table in TABLES:
        metrics.RETENTION_PURGED.labels("orchestrator", table)  # exported at 0, so increase() sees the first
    while True:
        try:
            await purge(pool_of(), days=days, batch=batch)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            log.warning("saga retention pass failed; the next pass retries", exc_info=True)
        await asyncio.sleep(interval_seconds)
