"""A blocked broker is an outage: readiness turns false, the saga clock stops and the timer loop fires nothing,
and after the block the pending timers are pushed back as after a closed connection.

RabbitMQ sends connection.blocked when a memory or disk alarm fires. Raising a real alarm would block every
publisher of the shared test broker, so the frames are delivered to a real connection of a real Broker by the
very method aiormq's frame reader calls for them, with pamqp's frame objects: everything from the frame on is
what production runs."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
from harness import eventually, migrated_pool
from pamqp import commands
from prometheus_client import REGISTRY

from orchestrator import definition, saga_clock
from orchestrator.main import MIGRATIONS
from orchestrator.runner import Runner
from orchestrator.timers import TimerLoop
from plumbing.broker import Broker
from plumbing.process import Process
from plumbing.settings import ProcessSettings

pytestmark = pytest.mark.integration

ORDER = {
    "customer": {"email": "ada@example.com", "phone": None},
    "items": [{"productId": "sku-blocked", "quantity": 1}],
    "paymentMethodId": "pm_card_visa",
    "currency": "usd",
}


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool("of_blocked", MIGRATIONS) as pool:
        yield pool


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[Broker]:
    broker = Broker(amqp_url, name=f"blocked-test-{uuid.uuid4().hex[:6]}")
    await broker.connect()
    yield broker
    await broker.close()


async def rabbitmq_sends(broker: Broker, frame: commands.Connection.Blocked | commands.Connection.Unblocked) -> None:
    """Hand ``frame`` to the connection as its frame reader does (aiormq's Connection.__reader, channel 0)."""
    amqp = broker.connection.transport.connection
    if isinstance(frame, commands.Connection.Blocked):
        await amqp._Connection__handle_connection_blocked(frame)
    else:
        await amqp._Connection__handle_connection_unblocked(frame)


def blocked_gauge(broker: Broker) -> float | None:
    return REGISTRY.get_sample_value("orderflow_broker_blocked", {"service": broker.name})


async def test_blocked_and_unblocked_frames_set_the_flag_readiness_and_gauge(broker: Broker, pool) -> None:
    amqp = broker.connection.transport.connection
    process = Process(name=broker.name, settings=ProcessSettings(), broker=broker, pool=pool, started=True)
    assert (await process.ready())[0] and blocked_gauge(broker) == 0

    await rabbitmq_sends(broker, commands.Connection.Blocked(reason="low on memory"))

    assert broker.blocked and broker.connected and not broker.available
    assert broker.blocked_reason == "low on memory" and broker.blocked_since is not None
    assert not amqp._Connection__connection_unblocked.is_set(), "aiormq's own handler ran too (its writer waits)"
    ok, checks = await process.ready()
    assert not ok and checks["broker_blocked"] and checks["broker"]
    assert blocked_gauge(broker) == 1

    await rabbitmq_sends(broker, commands.Connection.Unblocked())

    assert not broker.blocked and broker.available and broker.blocked_since is None
    assert (await process.ready())[0]
    assert blocked_gauge(broker) == 0


async def test_a_connection_lost_while_blocked_reconnects_watched_and_unblocked(broker: Broker) -> None:
    """A connection closed while blocked never hears connection.unblocked: the reconnect must not wait on it
    (aio-pika's channel restore waits for the connection's ready(), which waits for the unblock)."""
    await rabbitmq_sends(broker, commands.Connection.Blocked(reason="low on disk"))
    first = broker.connection.transport.connection
    # What the robust connection does when its connection is lost: close it, open another, run the callbacks.
    async with asyncio.timeout(30):
        await broker.connection.reconnect()
    assert broker.connection.transport.connection is not first
    await eventually(lambda: asyncio.sleep(0, broker.connected), timeout=20, what="the channels restored")
    assert not broker.blocked, "a new connection starts unblocked"
    await rabbitmq_sends(broker, commands.Connection.Blocked(reason="low on memory"))
    assert broker.blocked and broker.blocked_reason == "low on memory"
    await rabbitmq_sends(broker, commands.Connection.Unblocked())
    assert broker.available


async def timed_out(pool: asyncpg.Pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM saga_history WHERE event = 'TaskTimedOut'")


async def test_no_timer_fires_while_blocked_and_pending_ones_are_pushed_back_after(broker: Broker, pool) -> None:
    runner = Runner(definition.load())
    order_id = f"ORDER#blocked-{uuid.uuid4().hex[:6]}"
    async with pool.acquire() as conn, conn.transaction():
        assert await runner.start(conn, {**ORDER, "orderId": order_id}, causation_id=None) == "started"
    asked = 0

    def broker_up() -> bool:  # what orchestrator/main.py gives the loop, counted
        nonlocal asked
        asked += 1
        return broker.available

    loop = asyncio.create_task(TimerLoop(pool, runner, broker_up=broker_up).run())
    try:
        started = await pool.fetchval("SELECT now()")

        async def ticking() -> bool:
            return await pool.fetchval("SELECT heartbeat_at > $1 FROM saga_clock", started)

        await eventually(ticking, timeout=10, what="the clock's heartbeat with the broker up")

        await rabbitmq_sends(broker, commands.Connection.Blocked(reason="low on memory"))
        # The step's timer, armed before the block, falls due 3 s into it.
        due = await pool.fetchval(
            "UPDATE saga_timer SET due_at = now() + interval '3 seconds' WHERE order_id = $1 RETURNING due_at",
            order_id,
        )
        blocked_at_asked = asked

        async def overdue_and_paused() -> bool:
            return await pool.fetchval(
                """SELECT now() > $1::timestamptz + interval '1 second'
                          AND now() - heartbeat_at > make_interval(secs => $2)
                   FROM saga_clock""",
                due,
                saga_clock.PAUSE_AFTER_SECONDS + 1,
            )

        await eventually(overdue_and_paused, timeout=15, what="the timer overdue while the broker is blocked")
        assert asked >= blocked_at_asked + 3, "the loop kept waking up while blocked"
        assert await timed_out(pool) == 0, "no timer fires while the broker is blocked"
        assert await pool.fetchval("SELECT due_at FROM saga_timer WHERE order_id = $1", order_id) == due

        await rabbitmq_sends(broker, commands.Connection.Unblocked())

        async def paused() -> float:
            return await pool.fetchval("SELECT paused_seconds FROM saga_clock")

        pause = await eventually(paused, timeout=10, what="the clock's pause after the block")
        assert pause > saga_clock.PAUSE_AFTER_SECONDS
        pushed = await pool.fetchval("SELECT due_at FROM saga_timer WHERE order_id = $1", order_id)
        assert pushed is not None and await timed_out(pool) == 0, "the block's time did not count against the step"
        assert (pushed - due).total_seconds() == pytest.approx(pause, abs=0.05)
        assert pushed - await pool.fetchval("SELECT now()") > timedelta(seconds=1)

        async def fired() -> bool:
            return await timed_out(pool) == 1

        await eventually(fired, timeout=15, what="the pushed-back timer firing once the clock runs")
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
