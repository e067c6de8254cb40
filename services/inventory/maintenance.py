"""Inventory's safety nets: the reservation sweeper and the purge of old idempotency records.

Its inbox is purged by every process's retention loop (plumbing/retention.py); the idempotency records
(the guide's 7-day cache) are purged here, by the same batched delete.

The sweeper releases reservations still active past a configurable age whose
order is known (from its order.<status> event) to have ended otherwise than
CONFIRMED: a saga that ended without releasing (a compensation that failed)
must not hold stock for ever. A running saga's hold, and a confirmed order's
sold stock whose commit has not arrived, are never released by age: they are
counted in orderflow_reservations_unresolved for an operator.
"""

import asyncio
import logging

import asyncpg
from prometheus_client import Counter, Gauge

from plumbing import retention
from services.inventory import repository as repo

log = logging.getLogger(__name__)

RESERVATIONS_SWEPT = Counter(
    "orderflow_reservations_swept_total", "Active reservations the sweeper released for being too old."
)
RESERVATIONS_UNRESOLVED = Gauge(
    "orderflow_reservations_unresolved",
    "Reservations active past their age that the sweeper keeps: no outcome known for the order, or CONFIRMED "
    "and not yet committed. Never released by age; an operator looks at them.",
)
RECORDS_PURGED = Counter(
    "orderflow_idempotency_records_purged_total", "Idempotency records purged after their retention."
)


async def sweep_once(pool: asyncpg.Pool, *, max_age_seconds: float, batch: int = 100) -> int:
    """Release every reservation active for longer than ``max_age_seconds`` whose order ended otherwise than
    CONFIRMED; returns how many. The other old holds are counted, never released."""
    released = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            stale = await repo.stale_reservations(conn, max_age_seconds, batch)
            for reservation_id in stale:
                await repo.release_reservation(conn, reservation_id)
        released += len(stale)
        if len(stale) < batch:
            break
    async with pool.acquire() as conn:
        RESERVATIONS_UNRESOLVED.set(await repo.unresolved_reservations(conn, max_age_seconds))
    if released:
        RESERVATIONS_SWEPT.inc(released)
        log.warning("sweeper released stale reservations", extra={"fields": {"released": released}})
    return released


async def purge_once(pool: asyncpg.Pool, *, retention_days: int) -> int:
    """Delete idempotency records older than ``retention_days``, in bounded batches; returns how many."""
    rule = retention.Rule(table="idempotency_record", column="created_at", hours=retention_days * 24.0)
    purged = await retention.purge(pool, rule, service="inventory")
    RECORDS_PURGED.inc(purged)
    return purged


async def run(pool_of, *, interval_seconds: float, max_age_seconds: float, retention_days: int) -> None:  # noqa: ANN001
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            await sweep_once(pool_of(), max_age_seconds=max_age_seconds)
            await purge_once(pool_of(), retention_days=retention_days)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            log.warning("maintenance pass failed; next pass retries", exc_info=True)
