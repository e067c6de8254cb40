"""The Wait state on the durable timers, on a real orchestrator database: the saga waits as a saga_timer row
of kind 'wait', the timer loop fires it when due, and the saga goes on to its next state."""

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from harness import eventually, migrated_pool

from orchestrator import definition
from orchestrator.main import MIGRATIONS
from orchestrator.runner import Runner
from orchestrator.timers import TimerLoop

pytestmark = pytest.mark.integration

WORKFLOW = {
    "StartAt": "Pause",
    "States": {
        "Pause": {"Type": "Wait", "SecondsPath": "$.pauseSeconds", "Next": "CheckInventory"},
        "CheckInventory": {
            "Type": "Task",
            "Resource": "arn:aws:lambda:eu-west-1:123456789012:function:CheckInventory",
            "Parameters": {"orderId.$": "$.orderId", "items.$": "$.items", "currency.$": "$.currency"},
            "End": True,
        },
    },
}
ORDER = {
    "customer": {"email": "ada@example.com", "phone": None},
    "items": [{"productId": "sku-wait", "quantity": 1}],
    "paymentMethodId": "pm_card_visa",
    "currency": "usd",
}


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool("of_wait", MIGRATIONS) as pool:
        yield pool


async def test_a_wait_is_a_durable_timer_that_the_loop_fires(pool: asyncpg.Pool) -> None:
    runner = Runner(definition.parse(WORKFLOW))
    order_id = f"ORDER#wait-{uuid.uuid4().hex[:8]}"
    async with pool.acquire() as conn, conn.transaction():
        await runner.start(conn, {**ORDER, "orderId": order_id, "pauseSeconds": 1}, causation_id=None)
    timer = await pool.fetchrow("SELECT kind, due_at - armed_at AS wait FROM saga_timer WHERE order_id = $1", order_id)
    assert timer["kind"] == "wait" and timer["wait"].total_seconds() == pytest.approx(1, abs=0.5)
    loop = TimerLoop(pool, runner)
    assert await loop.fire_due() == 0, "not due yet"

    async def fired() -> bool:
        await loop.fire_due()
        return bool(
            await pool.fetchval(
                "SELECT 1 FROM saga_history WHERE order_id = $1 AND event = 'TaskScheduled' AND state = $2",
                order_id,
                "CheckInventory",
            )
        )

    await eventually(fired, timeout=10, what="the Wait's timer to fire and the saga to go on")
    events = await pool.fetch("SELECT event FROM saga_history WHERE order_id = $1 ORDER BY id", order_id)
    names = [r["event"] for r in events]
    assert names.index("WaitStateEntered") < names.index("WaitStateExited") < names.index("TaskScheduled")
    assert await pool.fetchval("SELECT kind FROM saga_timer WHERE order_id = $1", order_id) == "timeout"
