"""Batched consumption (BATCH_MAX above 1) on the real broker and a real database: the deliveries waiting share
one transaction; a failing handler costs only itself (the batch runs again one delivery at a time, and the
failing one is answered, requeued or dead-lettered as it would be alone); a redelivery after the commit is a
duplicate; one ``multiple=True`` acknowledgement never covers a delivery another unit still holds."""

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import asyncpg
import pytest
from harness import eventually, migrated_pool
from prometheus_client import REGISTRY
from pydantic import BaseModel

from plumbing.broker import Broker
from plumbing.commands import command_route
from plumbing.consumer import Consumer, MessageContext
from plumbing.envelope import Envelope
from plumbing.errors import BusinessError
from plumbing.migrations import PLUMBING_MIGRATIONS, MigrationSet
from plumbing.relay import OutboxRelay
from plumbing.topology import COMMANDS_EXCHANGE, EVENTS_EXCHANGE, REPLIES_EXCHANGE, declare_consumer_queue, dq_name

pytestmark = pytest.mark.integration


class Ping(BaseModel):
    orderId: str


class Pong(BaseModel):
    orderId: str


class Noted(BaseModel):
    orderId: str


@dataclass
class Harness:
    broker: Broker
    channel: aio_pika.abc.AbstractChannel
    pool: asyncpg.Pool
    queue: str
    reply_key: str
    declared: aio_pika.abc.AbstractQueue
    consumer: Consumer | None = None
    replies: list[aio_pika.abc.AbstractIncomingMessage] = field(default_factory=list)
    #: (order id, the transaction it ran in) for every call of the handler.
    calls: list[tuple[str, int]] = field(default_factory=list)


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool("of_batching", [MigrationSet("plumbing", PLUMBING_MIGRATIONS)]) as pool:
        yield pool


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[Broker]:
    broker = Broker(amqp_url, name="batching-test")
    await broker.connect()
    yield broker
    await broker.close()


async def ping(ctx: MessageContext, command: Ping) -> Pong:
    """Notes the order in an event (rolled back with a failing batch), then answers, fails with a named error
    ('-declined') or crashes ('-crash'), as the order id says."""
    await ctx.publish(EVENTS_EXCHANGE, "test.noted", Noted(orderId=command.orderId))
    if command.orderId.endswith("-declined"):
        raise BusinessError("no stock left", name="InsufficientStockError")
    if command.orderId.endswith("-crash"):
        raise RuntimeError("handler crashed")
    return Pong(orderId=command.orderId)


@contextlib.asynccontextmanager
async def queued(pool: asyncpg.Pool, broker: Broker, *, prefetch: int = 16) -> AsyncIterator[Harness]:
    """A queue of its own (delivery limit 3) and a queue collecting the replies; nothing consumes it yet, so
    what is sent waits, and a consumer started on it finds it all waiting."""
    queue = f"batching-{uuid.uuid4().hex[:8]}.commands"
    reply_key = f"batching-{uuid.uuid4().hex[:8]}.replies"
    channel = await broker.channel(prefetch=prefetch)
    declared = await declare_consumer_queue(channel, queue, [(COMMANDS_EXCHANGE, f"{queue}.#")], delivery_limit=3)
    replies_queue = await channel.declare_queue(exclusive=True)
    await replies_queue.bind(REPLIES_EXCHANGE, routing_key=reply_key)
    harness = Harness(broker, channel, pool, queue, reply_key, declared)

    async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        harness.replies.append(message)
        await message.ack()

    await replies_queue.consume(on_reply)
    try:
        yield harness
    finally:
        if harness.consumer is not None:
            await harness.consumer.stop(5)
        await channel.queue_delete(queue)
        await channel.queue_delete(dq_name(queue))
        await channel.close()


async def consume(
    harness: Harness,
    *,
    batch_max: int = 8,
    on_committed: Callable[[Any], Awaitable[None]] | None = None,
    handler: Callable[[MessageContext, Ping], Awaitable[Pong]] = ping,
) -> None:
    relay = OutboxRelay(harness.pool, harness.broker, service="batching-test")

    async def counted(ctx: MessageContext, command: Ping) -> Pong:
        harness.calls.append((command.orderId, await ctx.conn.fetchval("SELECT txid_current()")))
        return await handler(ctx, command)

    harness.consumer = Consumer(
        name="batching-test",
        queue=harness.queue,
        routes={"Ping": command_route(Ping, counted)},
        pool=harness.pool,
        broker=harness.broker,
        max_message_bytes=10_000,
        on_committed=on_committed or relay.publish_committed,
        batch_max=batch_max,
        batch_units=1,
    )
    await harness.consumer.start(harness.declared)


async def send(harness: Harness, order_id: str) -> str:
    envelope = Envelope(type="Ping", correlationId=order_id, replyTo=harness.reply_key)
    message = envelope.to_amqp(Ping(orderId=order_id).model_dump_json().encode())
    await harness.broker.publish(COMMANDS_EXCHANGE, f"{harness.queue}.Ping", message)
    return envelope.messageId


def replies_to(harness: Harness, message_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (r.type or "", json.loads(r.body)) for r in harness.replies if r.headers.get("x-causation-id") == message_id
    ]


def handled(harness: Harness, outcome: str) -> float:
    labels = {"queue": harness.queue, "type": "Ping", "outcome": outcome}
    return REGISTRY.get_sample_value("orderflow_messages_handled_total", labels) or 0.0


def probe(check: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    async def run() -> Any:
        return check()

    return run


def batches(harness: Harness) -> list[set[str]]:
    """The orders handled together, transaction by transaction."""
    by_tx: dict[int, set[str]] = {}
    for order_id, tx in harness.calls:
        by_tx.setdefault(tx, set()).add(order_id)
    return list(by_tx.values())


async def test_the_deliveries_waiting_share_one_transaction_and_are_each_answered_once(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    async with queued(pool, broker) as harness:
        orders = [f"ORDER#{uuid.uuid4().hex[:8]}" for _ in range(9)]
        ids = [await send(harness, order_id) for order_id in orders]
        await consume(harness)
        for message_id, order_id in zip(ids, orders, strict=True):
            await eventually(probe(lambda m=message_id: replies_to(harness, m)), timeout=15, what="the reply")
            assert replies_to(harness, message_id) == [("Pong", {"orderId": order_id})]
        assert max(len(b) for b in batches(harness)) > 1, batches(harness)
        assert sorted(order for order, _ in harness.calls) == sorted(orders)  # each handler ran once
        await eventually(probe(lambda: handled(harness, "ok") == 9), timeout=15, what="every delivery counted")
        # Every delivery acknowledged: nothing left on the queue once the consumer let go of it.
        await harness.consumer.stop(5)
        harness.consumer = None
        assert (await harness.channel.declare_queue(harness.queue, passive=True)).declaration_result.message_count == 0
        assert await pool.fetchval("SELECT count(*) FROM inbox") == 9


async def test_a_failing_handler_costs_only_itself(pool: asyncpg.Pool, broker: Broker) -> None:
    async with queued(pool, broker) as harness:
        fine = [f"ORDER#{uuid.uuid4().hex[:8]}" for _ in range(5)]
        declined, crashing = f"ORDER#{uuid.uuid4().hex[:8]}-declined", f"ORDER#{uuid.uuid4().hex[:8]}-crash"
        ids = {order_id: await send(harness, order_id) for order_id in [*fine[:2], declined, crashing, *fine[2:]]}
        await consume(harness)
        for order_id in fine:
            await eventually(probe(lambda o=order_id: replies_to(harness, ids[o])), timeout=15, what="a reply")
            assert replies_to(harness, ids[order_id]) == [("Pong", {"orderId": order_id})]
        # The named error is answered as alone: its failure reply, what its handler wrote rolled back.
        await eventually(probe(lambda: replies_to(harness, ids[declined])), timeout=15, what="the failure reply")
        ((kind, body),) = replies_to(harness, ids[declined])
        assert (kind, body["Error"]) == ("CommandFailed", "InsufficientStockError")
        # The crash is requeued as alone, and after the queue's delivery limit the broker dead-letters it.
        dlq = await harness.channel.declare_queue(dq_name(harness.queue), passive=True)

        async def dead() -> aio_pika.abc.AbstractIncomingMessage | None:
            return await dlq.get(no_ack=True, fail=False)

        message = await eventually(dead, timeout=30, what="the crashing command dead-lettered")
        assert message.message_id == ids[crashing]
        assert replies_to(harness, ids[crashing]) == []
        # Committed once: one inbox row each (the crash never committed), one Noted event each for the fine ones.
        claimed = {r["message_id"] for r in await pool.fetch("SELECT message_id FROM inbox")}
        assert claimed == {ids[o] for o in [*fine, declined]}
        assert await pool.fetchval("SELECT max(duplicates) FROM inbox") == 0
        noted = await pool.fetch("SELECT body FROM outbox WHERE envelope->>'type' = 'Noted'")
        noted_orders = sorted(json.loads(r["body"])["orderId"] for r in noted)
        assert sorted(fine) == [o for o in noted_orders if o in fine] and declined not in noted_orders
        assert REGISTRY.get_sample_value("orderflow_batch_fallbacks_total", {"queue": harness.queue}) >= 1


async def test_a_redelivery_after_the_commit_is_a_duplicate(pool: asyncpg.Pool, broker: Broker) -> None:
    """The broker lost before the acknowledgement: the batch is requeued, and its redelivery has no effect."""
    relay = OutboxRelay(pool, broker, service="batching-test")
    lost = asyncio.Event()

    async def broker_lost_once(messages: Any) -> None:
        if not lost.is_set() and sum(m.envelope.type == "Pong" for m in messages) > 1:  # a batch's replies
            lost.set()
            raise ConnectionError("the broker went away after the commit")
        await relay.publish_committed(messages)

    async with queued(pool, broker) as harness:
        orders = [f"ORDER#{uuid.uuid4().hex[:8]}" for _ in range(6)]
        for order_id in orders:
            await send(harness, order_id)
        await consume(harness, on_committed=broker_lost_once)
        await eventually(probe(lost.is_set), timeout=15, what="a batch committed, then the broker lost")
        await eventually(
            probe(lambda: handled(harness, "ok") + handled(harness, "requeued") == 6), timeout=15, what="all handled"
        )
        requeued = handled(harness, "requeued")
        assert requeued > 1
        await eventually(
            probe(lambda: handled(harness, "duplicate") == requeued), timeout=15, what="the redeliveries, duplicates"
        )
        assert sorted(order for order, _ in harness.calls) == sorted(orders)  # no handler ran twice
        assert await pool.fetchval("SELECT count(*) FROM inbox") == 6
        assert await pool.fetchval("SELECT sum(duplicates) FROM inbox") == requeued
        # What the first commit wrote is in the outbox once, for the relay's sweep after the hold.
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE envelope->>'type' = 'Pong'") == 6


async def test_one_acknowledgement_never_covers_a_delivery_still_in_hand(pool: asyncpg.Pool, broker: Broker) -> None:
    """Two queues on one channel: a delivery of the first is held by its handler while a batch of the second,
    with higher delivery tags, commits. Acknowledging that batch with multiple=True would acknowledge the held
    one too; then its requeue (its handler crashes) would close the channel and it would never come back."""
    release = asyncio.Event()
    calls: list[str] = []

    async def held_then_crash(ctx: MessageContext, command: Ping) -> Pong:
        calls.append(command.orderId)
        if len(calls) == 1:
            await release.wait()
            raise RuntimeError("crashed after the batch was acknowledged")
        return Pong(orderId=command.orderId)

    async with queued(pool, broker) as first, queued(pool, broker) as second:
        second.channel, second.declared = first.channel, await first.channel.declare_queue(second.queue, passive=True)
        await consume(first, handler=held_then_crash)
        held_id = await send(first, f"ORDER#{uuid.uuid4().hex[:8]}")
        await eventually(probe(lambda: calls), timeout=15, what="the held delivery in its handler")
        orders = [f"ORDER#{uuid.uuid4().hex[:8]}" for _ in range(6)]
        ids = [await send(second, order_id) for order_id in orders]
        await consume(second)
        for message_id in ids:
            await eventually(probe(lambda m=message_id: replies_to(second, m)), timeout=15, what="a batch's reply")
        await eventually(probe(lambda: handled(second, "ok") == 6), timeout=15, what="the batch acknowledged")
        release.set()
        await eventually(probe(lambda: replies_to(first, held_id)), timeout=15, what="the held one, requeued")
        assert len(calls) == 2
        assert not first.channel.is_closed
