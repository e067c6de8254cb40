"""Inventory's safety nets: the reservation sweeper and the purge of old idempotency records.

The sweeper releases reservations still active past a configurable age: a
saga that ended without releasing (a bug, a lost compensation) must not hold
stock for ever. The age must exceed the longest saga, or a slow order would
lose its stock; it is counted, so it can be alerted on.
"""

import asyncio
import logging

import asyncpg
from prometheus_client import Counter

from plumbing import inbox
from services.inventory import repository as repo

log = logging.getLogger(__name__)

RESERVATIONS_SWEPT = Counter(
    "orderflow_reservations_swept_total", "Active reservations the sweeper released for being too old."
)
RECORDS_PURGED = Counter(
    "orderflow_idempotency_records_purged_total", "Idempotency records and inbox rows purged after retention."
)


async def sweep_once(pool: asyncpg.Pool, *, max_age_seconds: float, batch: int = 100) -> int:
    """Release every reservation active for longer than ``max_age_seconds``; returns how many."""
    released = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            stale = await repo.stale_reservations(conn, max_age_seconds, batch)
            for reservation_id in stale:
                await repo.release_reservation(conn, reservation_id)
        released += len(stale)
        if len(stale) < batch:
            break
    if released:
        RESERVATIONS_SWEPT.inc(released)
        log.warning("sweeper released stale reservations", extra={"fields": {"released": released}})
    return released


async def purge_once(pool: asyncpg.Pool, *, retention_days: int) -> int:
    async with pool.acquire() as conn:
        purged = await repo.purge_idempotency_records(conn, retention_days)
        purged += await inbox.purge(conn, older_than_days=retention_days)
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
