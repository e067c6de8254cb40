"""Inventory's safety nets on a real database: the sweeper releases only reservations past the age limit whose
order ended otherwise than CONFIRMED, and idempotency records are kept 7 days, then purged."""

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from harness import ADMIN_DSN, Stack

from plumbing.db import create_pool, database_name, with_database
from services.inventory import maintenance
from services.inventory import repository as repo

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(stack: Stack):
    url = with_database(ADMIN_DSN, database_name(stack.settings.inventory_database_url))
    pool = await create_pool(url, size=2)
    yield pool
    await pool.close()


async def test_sweeper_releases_only_stale_holds_of_orders_that_ended_otherwise(pool) -> None:
    """Past the age limit, a hold is released only when its order is known to have ended otherwise than
    CONFIRMED; a young hold, a running saga's (no outcome yet) and a confirmed order's stay."""
    sku = f"sku-{uuid.uuid4().hex[:8]}"
    failed, young, running, confirmed = (f"ORDER#{uuid.uuid4().hex[:8]}" for _ in range(4))
    async with pool.acquire() as conn, conn.transaction():
        await repo.upsert_product(conn, sku, name="x", stock=20, price=Decimal("1.00"), currency="usd")
        for order_id in (failed, young, running, confirmed):
            assert await repo.take_stock(conn, sku, 3)
            await repo.create_reservation(conn, order_id, order_id, {sku: 3})
        await conn.execute(
            "UPDATE reservation SET created_at = now() - interval '2 hours' WHERE order_id = ANY($1::text[])",
            [failed, running, confirmed],
        )
        await repo.record_outcome(conn, failed, "FAILED_CRITICAL")
        await repo.record_outcome(conn, young, "FAILED")
        await repo.record_outcome(conn, confirmed, "CONFIRMED")
    before = maintenance.RESERVATIONS_SWEPT._value.get()

    released = await maintenance.sweep_once(pool, max_age_seconds=3600)

    assert released >= 1
    assert maintenance.RESERVATIONS_SWEPT._value.get() == before + released
    assert maintenance.RESERVATIONS_UNRESOLVED._value.get() >= 2  # running and confirmed: held, counted
    async with pool.acquire() as conn:
        statuses = dict(
            await conn.fetch(
                "SELECT order_id, status FROM reservation WHERE order_id = ANY($1::text[])",
                [failed, young, running, confirmed],
            )
        )
        assert statuses == {failed: "released", young: "active", running: "active", confirmed: "active"}
        assert await conn.fetchval("SELECT stock FROM product WHERE product_id = $1", sku) == 11


async def test_idempotency_records_are_kept_seven_days(pool) -> None:
    fresh, stale = f"K-{uuid.uuid4().hex[:8]}-release", f"K-{uuid.uuid4().hex[:8]}-release"
    async with pool.acquire() as conn:
        for key, age in ((fresh, timedelta(days=6)), (stale, timedelta(days=8))):
            await conn.execute(
                "INSERT INTO idempotency_record (idempotency_id, operation, result, created_at) "
                "VALUES ($1, 'release', '{}', now() - $2::interval)",
                key,
                age,
            )
    await maintenance.purge_once(pool, retention_days=7)
    async with pool.acquire() as conn:
        kept = {r["idempotency_id"] for r in await conn.fetch("SELECT idempotency_id FROM idempotency_record")}
    assert fresh in kept and stale not in kept
