"""The saga clock (orchestrator/saga_clock.py) against a real orchestrator database: a gap in the heartbeat
pushes pending timers back by the part of the gap each lived through, and the timer loop fires nothing while
the broker is away."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
from harness import eventually, migrated_pool

from orchestrator import definition, saga_clock
from orchestrator.main import MIGRATIONS
from orchestrator.runner import Runner, utcnow
from orchestrator.timers import TimerLoop

pytestmark = pytest.mark.integration

ORDER = {
    "customer": {"email": "ada@example.com", "phone": None},
    "items": [{"productId": "sku-clock", "quantity": 1}],
    "paymentMethodId": "pm_card_visa",
    "currency": "usd",
}


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool("of_clock", MIGRATIONS) as pool:
        yield pool


async def start_sagas(pool: asyncpg.Pool, runner: Runner, count: int) -> list[str]:
    """Sagas waiting on their first step, each with its step timeout armed."""
    ids = [f"ORDER#clock-{i}-{uuid.uuid4().hex[:6]}" for i in range(count)]
    async with pool.acquire() as conn:
        for order_id in ids:
            async with conn.transaction():
                assert await runner.start(conn, {**ORDER, "orderId": order_id}, causation_id=None) == "started"
    return ids


async def timers(pool: asyncpg.Pool) -> dict[str, tuple]:
    rows = await pool.fetch("SELECT order_id, due_at, armed_at FROM saga_timer")
    return {r["order_id"]: (r["due_at"], r["armed_at"]) for r in rows}


def seconds(delta: timedelta) -> float:
    return delta.total_seconds()


async def test_a_gap_pushes_pending_timers_back_by_what_each_lived_through(pool: asyncpg.Pool) -> None:
    runner = Runner(definition.load())
    before_gap, armed_in_gap, overdue = await start_sagas(pool, runner, 3)
    async with pool.acquire() as conn:
        # The heartbeat stopped 60 s ago. One timer was armed 100 s ago and is due in 20 s; one was armed 10 s
        # ago, during the gap; one fell due before the gap began, so the gap owes it nothing.
        await conn.execute("UPDATE saga_clock SET heartbeat_at = now() - interval '60 seconds'")
        await conn.execute(
            """UPDATE saga_timer SET armed_at = now() - interval '100 seconds', due_at = now() + interval '20 seconds'
               WHERE order_id = $1""",
            before_gap,
        )
        await conn.execute(
            """UPDATE saga_timer SET armed_at = now() - interval '10 seconds', due_at = now() + interval '20 seconds'
               WHERE order_id = $1""",
            armed_in_gap,
        )
        await conn.execute(
            "UPDATE saga_timer SET due_at = now() - interval '90 seconds' WHERE order_id = $1",
            overdue,
        )
    was = await timers(pool)

    async with pool.acquire() as conn:
        paused = await saga_clock.tick(conn)
        assert 60 <= paused < 65
        assert await saga_clock.tick(conn) == 0.0, "right after a tick there is no gap"
        total = await conn.fetchval("SELECT paused_seconds FROM saga_clock")
    assert total == pytest.approx(paused)

    now = await timers(pool)
    assert seconds(now[before_gap][0] - was[before_gap][0]) == pytest.approx(paused, abs=0.01)
    assert 10 <= seconds(now[armed_in_gap][0] - was[armed_in_gap][0]) < 15
    assert now[overdue][0] == was[overdue][0]


async def test_an_ordinary_heartbeat_moves_nothing(pool: asyncpg.Pool) -> None:
    runner = Runner(definition.load())
    await start_sagas(pool, runner, 2)
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE saga_clock SET heartbeat_at = now() - make_interval(secs => $1)",
            saga_clock.PAUSE_AFTER_SECONDS - 1,
        )
        was = await timers(pool)
        assert await saga_clock.tick(conn) == 0.0
    assert await timers(pool) == was


async def timed_out(pool: asyncpg.Pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM saga_history WHERE event = 'TaskTimedOut'")


async def test_the_timer_loop_fires_nothing_while_the_broker_is_away(pool: asyncpg.Pool) -> None:
    runner = Runner(definition.load())
    (order_id,) = await start_sagas(pool, runner, 1)
    # The broker went away 60 s ago, and the saga's step timeout fell due during the outage.
    await pool.execute("UPDATE saga_clock SET heartbeat_at = now() - interval '60 seconds'")
    await pool.execute(
        "UPDATE saga_timer SET armed_at = now() - interval '100 seconds', due_at = $1",
        utcnow() - timedelta(seconds=1),
    )
    broker = {"up": False, "asked": 0}

    def broker_up() -> bool:
        broker["asked"] += 1
        return broker["up"]

    async def asked(times: int) -> bool:
        return broker["asked"] >= times

    loop = asyncio.create_task(TimerLoop(pool, runner, broker_up=broker_up).run())
    try:
        # Three wake-ups (one per heartbeat) with the broker away: the due timer has not fired.
        await eventually(lambda: asked(3), timeout=10, what="three wake-ups of the timer loop")
        assert await timed_out(pool) == 0
        assert await pool.fetchval("SELECT count(*) FROM saga_timer WHERE order_id = $1", order_id) == 1

        # The broker is back: the first tick pushes the timer back by the outage, so it does not fire.
        broker["up"] = True

        async def paused() -> float:
            return await pool.fetchval("SELECT paused_seconds FROM saga_clock")

        assert await eventually(paused, timeout=10, what="the clock's pause") >= 60
        due = await pool.fetchval("SELECT due_at FROM saga_timer WHERE order_id = $1", order_id)
        assert seconds(due - utcnow()) > 50
        assert await timed_out(pool) == 0

        # With the platform up, a timer that falls due fires as before.
        await pool.execute("UPDATE saga_timer SET due_at = $1", utcnow())

        async def fired() -> bool:
            return await timed_out(pool) == 1

        await eventually(fired, timeout=10, what="the step timeout firing once the clock runs")
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
