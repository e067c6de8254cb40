"""Bounded retention (plumbing/retention.py) on a real database: rows past their retention are deleted, recent
ones kept, every DELETE statement takes at most one batch, a row a transaction holds is skipped rather than
waited on, and the loop every process runs purges the inbox and the payment's webhook events."""

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from harness import eventually, migrated_pool
from prometheus_client import REGISTRY

from plumbing import retention
from services.inventory import maintenance
from services.inventory.main import MIGRATIONS as INVENTORY_MIGRATIONS
from services.payment.main import MIGRATIONS as PAYMENT_MIGRATIONS
from services.payment.main import PaymentSettings, build

pytestmark = pytest.mark.integration

# Each DELETE on the inbox notes how many rows it took: the database itself measures the batches.
STATEMENT_SIZES = """
    CREATE TABLE purge_statement (id serial PRIMARY KEY, deleted integer NOT NULL);
    CREATE FUNCTION note_purge() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO purge_statement (deleted) SELECT count(*) FROM gone;
        RETURN NULL;
    END $$;
    CREATE TRIGGER note_purge AFTER DELETE ON inbox REFERENCING OLD TABLE AS gone
        FOR EACH STATEMENT EXECUTE FUNCTION note_purge();
"""


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool("of_retention", PAYMENT_MIGRATIONS) as pool:
        yield pool


async def add_inbox(pool: asyncpg.Pool, prefix: str, count: int, age_hours: float) -> None:
    await pool.execute(
        """INSERT INTO inbox (consumer, message_id, processed_at)
           SELECT 'payment', $1 || i, now() - make_interval(secs => $2) FROM generate_series(1, $3) i""",
        prefix,
        age_hours * 3600,
        count,
    )


async def add_events(pool: asyncpg.Pool, prefix: str, count: int, age_hours: float) -> None:
    await pool.execute(
        """INSERT INTO webhook_event (event_id, type, received_at)
           SELECT $1 || i, 'payment_intent.succeeded', now() - make_interval(secs => $2)
           FROM generate_series(1, $3) i""",
        prefix,
        age_hours * 3600,
        count,
    )


async def ids(pool: asyncpg.Pool, table: str, column: str) -> set[str]:
    return {r[0] for r in await pool.fetch(f"SELECT {column} FROM {table}")}


def purged_total(service: str, table: str) -> float:
    return REGISTRY.get_sample_value("orderflow_retention_purged_total", {"service": service, "table": table}) or 0.0


async def test_old_inbox_rows_go_in_bounded_batches_and_recent_ones_stay(pool: asyncpg.Pool) -> None:
    await pool.execute(STATEMENT_SIZES)
    await add_inbox(pool, "old-", 25, age_hours=200)
    await add_inbox(pool, "young-", 5, age_hours=100)
    await add_inbox(pool, "just-under-", 3, age_hours=167.9)
    before = purged_total("payment", "inbox")

    purged = await retention.purge(pool, retention.inbox_rule(168), service="payment", batch=10)

    assert purged == 25
    left = await ids(pool, "inbox", "message_id")
    assert left == {f"young-{i}" for i in range(1, 6)} | {f"just-under-{i}" for i in range(1, 4)}
    sizes = [r["deleted"] for r in await pool.fetch("SELECT deleted FROM purge_statement ORDER BY id")]
    assert sizes == [10, 10, 5], "each statement takes at most one batch, oldest first, until one falls short"
    assert purged_total("payment", "inbox") == before + 25


async def test_a_row_held_by_a_transaction_is_skipped_not_waited_on(pool: asyncpg.Pool) -> None:
    await add_inbox(pool, "old-", 4, age_hours=200)
    async with pool.acquire() as holder, holder.transaction():
        # A duplicate's claim in progress locks its row (ON CONFLICT DO UPDATE) until its handler commits.
        await holder.execute("UPDATE inbox SET duplicates = duplicates + 1 WHERE message_id = 'old-1'")
        async with asyncio.timeout(5):
            purged = await retention.purge(pool, retention.inbox_rule(168), service="payment", batch=2)
    assert purged == 3
    assert await ids(pool, "inbox", "message_id") == {"old-1"}
    assert await retention.purge(pool, retention.inbox_rule(168), service="payment") == 1


async def test_the_payment_process_loop_purges_inbox_and_webhook_events(pool: asyncpg.Pool) -> None:
    process = build(PaymentSettings())
    rules = [retention.inbox_rule(process.settings.inbox_retention_hours), *process.retention_rules]
    assert {rule.table for rule in rules} == {"inbox", "webhook_event", "fraud_screening"}
    await add_inbox(pool, "old-", 3, age_hours=24 * 8)
    await add_inbox(pool, "young-", 2, age_hours=24 * 6)
    # Stripe retries for 3 days: 29-day-old events stay, 31-day-old ones go (720 h by default).
    await add_events(pool, "evt_old_", 4, age_hours=24 * 31)
    await add_events(pool, "evt_young_", 2, age_hours=24 * 29)

    loop = asyncio.create_task(retention.run(lambda: pool, rules, service="payment", interval_seconds=0.2))
    try:

        async def purged() -> bool:
            return await pool.fetchval(
                "SELECT (SELECT count(*) FROM inbox) = 2 AND (SELECT count(*) FROM webhook_event) = 2"
            )

        await eventually(purged, timeout=10, what="the retention loop's first pass")
        assert await ids(pool, "inbox", "message_id") == {"young-1", "young-2"}
        assert await ids(pool, "webhook_event", "event_id") == {"evt_young_1", "evt_young_2"}

        # Later rows are purged by later passes.
        await add_events(pool, "evt_late_", 2, age_hours=24 * 40)

        async def late_purged() -> bool:
            return not await pool.fetchval("SELECT count(*) FROM webhook_event WHERE event_id LIKE 'evt_late_%'")

        await eventually(late_purged, timeout=10, what="a later pass")
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def test_fraud_decisions_go_after_their_retention_and_recent_ones_stay(pool: asyncpg.Pool) -> None:
    (rule,) = [r for r in build(PaymentSettings()).retention_rules if r.table == "fraud_screening"]
    assert rule.hours == 90 * 24
    await pool.execute(
        """INSERT INTO fraud_screening (idempotency_key, order_id, decision, reasons, amount_minor, currency,
                                        created_at)
           SELECT 'o' || i || '-screen', 'o' || i, 'approved', '[]', 100, 'usd', now() - make_interval(days => d)
           FROM unnest(ARRAY[1, 2, 3], ARRAY[91, 95, 89]) AS t(i, d)"""
    )
    before = purged_total("payment", "fraud_screening")
    assert await retention.purge(pool, rule, service="payment") == 2
    assert await ids(pool, "fraud_screening", "idempotency_key") == {"o3-screen"}
    assert purged_total("payment", "fraud_screening") == before + 2


async def test_every_purged_column_is_indexed() -> None:
    """The batches walk the age index; without it each batch would scan the whole table."""
    rules = {
        "payment": (PAYMENT_MIGRATIONS, [retention.inbox_rule(168), *build(PaymentSettings()).retention_rules]),
        "inventory": (
            INVENTORY_MIGRATIONS,
            [retention.inbox_rule(168), retention.Rule("idempotency_record", "created_at", 168)],
        ),
    }
    for name, (migrations, service_rules) in rules.items():
        async with migrated_pool(f"of_retention_{name}", migrations) as pool:
            for rule in service_rules:
                indexed = await pool.fetchval(
                    """SELECT count(*) FROM pg_index i JOIN pg_attribute a
                         ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                       WHERE i.indrelid = $1::regclass AND a.attname = $2""",
                    rule.table,
                    rule.column,
                )
                assert indexed, f"{name}: {rule.table}.{rule.column} has no index"


async def test_inventory_keeps_its_idempotency_records_seven_days_through_the_same_purge() -> None:
    async with migrated_pool("of_retention_inv", INVENTORY_MIGRATIONS) as pool:
        await pool.execute(
            """INSERT INTO idempotency_record (idempotency_id, operation, result, created_at)
               VALUES ('fresh-release', 'release', '{}', now() - interval '6 days'),
                      ('stale-release', 'release', '{}', now() - interval '8 days')"""
        )
        before = purged_total("inventory", "idempotency_record")
        assert await maintenance.purge_once(pool, retention_days=7) == 1
        assert await ids(pool, "idempotency_record", "idempotency_id") == {"fresh-release"}
        assert purged_total("inventory", "idempotency_record") == before + 1
