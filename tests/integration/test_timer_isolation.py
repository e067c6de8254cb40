"""Timers are isolated from each other (orchestrator/timers.py) on a real orchestrator database: a timer whose
saga the engine cannot apply it to (here, a saga parked in a state the definition no longer has) is retried
with backoff and then parked, while the timers due after it fire on time."""

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from harness import migrated_pool

from orchestrator import definition, metrics
from orchestrator.main import MIGRATIONS
from orchestrator.runner import Runner
from orchestrator.timers import MAX_TIMER_FAILURES, TimerLoop

pytestmark = pytest.mark.integration

ORDER = {
    "customer": {"email": "ada@example.com", "phone": None},
    "items": [{"productId": "sku-timers", "quantity": 1}],
    "paymentMethodId": "pm_card_visa",
    "currency": "usd",
}


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool("of_timers", MIGRATIONS) as pool:
        yield pool


async def start(pool: asyncpg.Pool, runner: Runner) -> str:
    order_id = f"ORDER#timers-{uuid.uuid4().hex[:8]}"
    async with pool.acquire() as conn, conn.transaction():
        assert await runner.start(conn, {**ORDER, "orderId": order_id}, causation_id=None) == "started"
    return order_id


async def due_now(pool: asyncpg.Pool, order_id: str, seconds_ago: int) -> None:
    await pool.execute(
        "UPDATE saga_timer SET due_at = now() - make_interval(secs => $2) WHERE order_id = $1", order_id, seconds_ago
    )


async def test_a_failing_timer_is_retried_then_parked_and_never_holds_up_the_others(pool: asyncpg.Pool) -> None:
    runner = Runner(definition.load())
    broken, healthy = await start(pool, runner), await start(pool, runner)
    # A rolling update removed the state the broken saga waits in: applying its timeout raises in the engine.
    await pool.execute(
        """UPDATE saga SET state = jsonb_set(state, '{main,current}', '"RemovedState"') WHERE order_id = $1""",
        broken,
    )
    await due_now(pool, broken, 20)  # due first: the healthy timer is behind it in line
    await due_now(pool, healthy, 10)
    failures_before = metrics.TIMER_FAILURES._value.get()
    loop = TimerLoop(pool, runner)

    assert await loop.fire_due() == 1
    assert await pool.fetchval("SELECT count(*) FROM saga_timer WHERE order_id = $1", healthy) == 0
    assert await pool.fetchval("SELECT 1 FROM saga_history WHERE order_id = $1 AND event = 'TaskTimedOut'", healthy), (
        "the healthy saga's timeout did not fire"
    )
    row = await pool.fetchrow(
        "SELECT failures, last_error, parked_at, due_at > now() AS later FROM saga_timer WHERE order_id = $1", broken
    )
    assert row["failures"] == 1 and row["parked_at"] is None and row["later"], "retried later, with backoff"
    assert "RemovedState" in row["last_error"]

    for _ in range(MAX_TIMER_FAILURES - 1):
        await due_now(pool, broken, 1)
        assert await loop.fire_due() == 0
    row = await pool.fetchrow("SELECT failures, parked_at FROM saga_timer WHERE order_id = $1", broken)
    assert row["failures"] == MAX_TIMER_FAILURES and row["parked_at"] is not None
    assert metrics.TIMER_FAILURES._value.get() == failures_before + MAX_TIMER_FAILURES

    # Parked: no longer due, no longer what the loop sleeps towards.
    await due_now(pool, broken, 1)
    assert await loop.fire_due() == 0
    assert await pool.fetchval("SELECT failures FROM saga_timer WHERE order_id = $1", broken) == MAX_TIMER_FAILURES
    assert await loop._seconds_to_next() > 0
