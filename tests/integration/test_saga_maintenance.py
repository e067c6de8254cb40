"""The orchestrator's upkeep of its sagas on a real database: stuck sagas counted by the limits of the definition
each runs on (orchestrator/stuck.py), and finished sagas purged with their rows after their retention, while
those an operator may still act on stay (orchestrator/saga_retention.py)."""

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from harness import migrated_pool
from prometheus_client import REGISTRY

from orchestrator import definition, saga_retention, stuck
from orchestrator.main import MIGRATIONS
from orchestrator.runner import Runner
from orchestrator.versions import Versions, document_of

pytestmark = pytest.mark.integration

ORDER = {
    "customer": {"email": "ada@example.com", "phone": None},
    "items": [{"productId": "sku-upkeep", "quantity": 1}],
    "paymentMethodId": "pm_card_visa",
    "currency": "usd",
}
DAY = 86400


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool("of_upkeep", MIGRATIONS) as pool:
        yield pool


async def start(pool: asyncpg.Pool, runner: Runner, name: str) -> str:
    order_id = f"ORDER#{name}-{uuid.uuid4().hex[:6]}"
    async with pool.acquire() as conn, conn.transaction():
        assert await runner.start(conn, {**ORDER, "orderId": order_id}, causation_id=None) == "started"
    return order_id


async def age(pool: asyncpg.Pool, order_id: str, seconds: float, status: str | None = None) -> None:
    """The saga last moved ``seconds`` ago (in ``status``, when given: the status column is what both read)."""
    await pool.execute(
        """UPDATE saga SET updated_at = now() - make_interval(secs => $2), status = coalesce($3, status)
           WHERE order_id = $1""",
        order_id,
        seconds,
        status,
    )


def gauge(step: str, workflow: str = "order") -> float | None:
    return REGISTRY.get_sample_value("orderflow_sagas_stuck", {"workflow": workflow, "step": step})


def purged_total(table: str) -> float:
    labels = {"service": "orchestrator", "table": table}
    return REGISTRY.get_sample_value("orderflow_retention_purged_total", labels) or 0.0


async def test_a_saga_quiet_past_its_steps_timeout_plus_the_margin_is_stuck(pool: asyncpg.Pool) -> None:
    runner = Runner(definition.load())
    counter = stuck.StuckSagas(runner, margin_seconds=60)
    # CheckInventory: TimeoutSeconds 30, no retry waits longer, so stuck after 90 s without a transition.
    stalled, quiet, _, ended = [await start(pool, runner, n) for n in ("stalled", "quiet", "moving", "ended")]
    await age(pool, stalled, 95)
    await age(pool, quiet, 85)
    await age(pool, ended, 10 * DAY, status="FAILED_COMPENSATED")

    counts = await counter.count(pool)

    assert counts == {("order", "CheckInventory"): 1}
    assert gauge("CheckInventory") == 1
    assert gauge("ProcessPayment") == 0  # every step of the definition is exported, at zero
    await age(pool, stalled, 0)  # it moved again
    await counter.count(pool)
    assert gauge("CheckInventory") == 0


async def test_each_saga_is_judged_by_the_definition_it_runs_on(pool: asyncpg.Pool) -> None:
    current = definition.load()
    runner = Runner(current)
    # An older version of the workflow, still stored, in which CheckInventory waited ten minutes.
    document = document_of(current)
    document["States"]["CheckInventory"]["TimeoutSeconds"] = 600
    older = Versions(definition.parse(document))
    async with pool.acquire() as conn:
        await older.deploy(conn)
    on_older, on_current, unversioned = [await start(pool, runner, n) for n in ("older", "current", "unversioned")]
    await pool.execute("UPDATE saga SET workflow_version = $2 WHERE order_id = $1", on_older, older.version)
    # A saga from before versions were recorded runs on the current definition.
    await pool.execute("UPDATE saga SET workflow_name = NULL, workflow_version = NULL WHERE order_id = $1", unversioned)
    for order_id in (on_older, on_current, unversioned):
        await age(pool, order_id, 300)

    counts = await stuck.StuckSagas(runner, margin_seconds=60).count(pool)

    assert counts == {("order", "CheckInventory"): 2}  # the one on the older version has 600 s + 60 s
    await age(pool, on_older, 700)
    assert await stuck.StuckSagas(runner, margin_seconds=60).count(pool) == {("order", "CheckInventory"): 3}


async def add_history(pool: asyncpg.Pool, order_id: str, count: int) -> None:
    await pool.execute(
        """INSERT INTO saga_history (order_id, at, event, state, lane)
           SELECT $1, now(), 'Note', 'CheckInventory', 'main' FROM generate_series(1, $2)""",
        order_id,
        count,
    )


async def add_refund(pool: asyncpg.Pool, order_id: str, outcome: str) -> None:
    await pool.execute(
        """INSERT INTO saga_manual_action (command_id, order_id, action, request_key, request, amount, outcome)
           VALUES ($1, $2, 'refund', $1, '{}'::jsonb, 1.00, $3)""",
        uuid.uuid4().hex,
        order_id,
        outcome,
    )


async def sagas(pool: asyncpg.Pool) -> set[str]:
    return {r["order_id"] for r in await pool.fetch("SELECT order_id FROM saga")}


async def test_finished_sagas_past_their_retention_go_with_their_rows_and_the_rest_stay(pool: asyncpg.Pool) -> None:
    runner = Runner(definition.load())
    old = {}
    for status in ("CONFIRMED", "CANCELLED", "FAILED", "FAILED_COMPENSATED", "CONFIRMED"):
        order_id = await start(pool, runner, f"old-{status.lower()}")
        await age(pool, order_id, 91 * DAY, status=status)
        await add_history(pool, order_id, 3)
        old[order_id] = status
    refunded = next(iter(old))
    await add_refund(pool, refunded, "succeeded")  # a settled refund goes with its saga
    kept = {}
    for name, seconds, status in [
        ("young", 89 * DAY, "CONFIRMED"),
        ("running", 400 * DAY, None),
        ("critical", 400 * DAY, "FAILED_CRITICAL"),
        ("cancellation-failed", 400 * DAY, "CANCELLATION_FAILED"),
        ("refund-pending", 400 * DAY, "CONFIRMED"),
    ]:
        order_id = await start(pool, runner, name)
        await age(pool, order_id, seconds, status=status)
        kept[name] = order_id
    await add_refund(pool, kept["refund-pending"], "pending")
    # An old CONFIRMED order whose cancellation still runs: the order's saga stays while its cancellation does.
    cancelled = await start(pool, runner, "being-cancelled")
    await age(pool, cancelled, 400 * DAY, status="CONFIRMED")
    await pool.execute(
        """INSERT INTO saga (order_id, status, current_state, state, request_hash)
           SELECT order_id || ' cancel', 'RUNNING', 'RefundPayment', state, 'x' FROM saga WHERE order_id = $1""",
        cancelled,
    )
    history_rows = await pool.fetchval("SELECT count(*) FROM saga_history WHERE order_id = ANY($1)", list(old))
    before = {table: purged_total(table) for table in saga_retention.TABLES}

    purged = await saga_retention.purge(pool, days=90, batch=2)

    assert purged == len(old)
    assert await sagas(pool) == {*kept.values(), cancelled, f"{cancelled} cancel"}
    assert await pool.fetchval("SELECT count(*) FROM saga_history WHERE order_id = ANY($1)", list(old)) == 0
    assert await pool.fetchval("SELECT count(*) FROM saga_timer WHERE order_id = ANY($1)", list(old)) == 0
    assert await pool.fetchval("SELECT count(*) FROM saga_manual_action WHERE order_id = $1", refunded) == 0
    assert purged_total("saga") - before["saga"] == len(old)
    assert purged_total("saga_history") - before["saga_history"] == history_rows
    assert purged_total("saga_manual_action") - before["saga_manual_action"] == 1
    # Those kept still have their history.
    assert await pool.fetchval("SELECT count(*) FROM saga_history WHERE order_id = $1", kept["critical"]) > 0
    # Once the cancellation has ended, the order's saga goes at the next pass (the cancellation is recent).
    await pool.execute("UPDATE saga SET status = 'CANCELLED_BY_CUSTOMER' WHERE order_id = $1", f"{cancelled} cancel")
    assert await saga_retention.purge(pool, days=90) == 1
    assert cancelled not in await sagas(pool)


async def test_a_saga_a_transaction_holds_is_skipped_not_waited_on(pool: asyncpg.Pool) -> None:
    runner = Runner(definition.load())
    held, free = await start(pool, runner, "held"), await start(pool, runner, "free")
    for order_id in (held, free):
        await age(pool, order_id, 100 * DAY, status="CONFIRMED")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM saga WHERE order_id = $1 FOR UPDATE", held)  # a reply being applied
        assert await asyncio.wait_for(saga_retention.purge(pool, days=90), 10) == 1
    assert await sagas(pool) == {held}
    assert await saga_retention.purge(pool, days=90) == 1
