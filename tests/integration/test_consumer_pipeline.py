"""The consumer's middleware pipeline as a whole, on the real broker and a real database: a command answered
and acknowledged, its copy absorbed by the inbox, a named error answered with what the handler wrote rolled
back, poison dead-lettered with its reason, a configured fault answered instead of the handler, and the
middlewares in the order docs/architecture.md gives."""

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import aio_pika
import asyncpg
import pytest
from harness import eventually, migrated_pool
from prometheus_client import REGISTRY
from pydantic import BaseModel

from plumbing.broker import Broker
from plumbing.commands import command_route
from plumbing.consumer import HEADER_DEATH_KIND, HEADER_DEATH_REASON, Consumer, MessageContext
from plumbing.envelope import Envelope
from plumbing.errors import BusinessError
from plumbing.faults import FaultPlan, FaultRule
from plumbing.migrations import PLUMBING_MIGRATIONS, MigrationSet
from plumbing.relay import OutboxRelay
from plumbing.topology import COMMANDS_EXCHANGE, EVENTS_EXCHANGE, REPLIES_EXCHANGE, declare_consumer_queue, dq_name

pytestmark = pytest.mark.integration

T = TypeVar("T")


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
    consumer: Consumer | None = None
    replies: list[aio_pika.abc.AbstractIncomingMessage] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)


async def ping(ctx: MessageContext, command: Ping) -> Pong:
    """Notes the order in an event (rolled back with the handler's effects when it fails), then answers or fails
    as the order id says."""
    await ctx.publish(EVENTS_EXCHANGE, "test.noted", Noted(orderId=command.orderId))
    if command.orderId.endswith("-declined"):
        raise BusinessError("no stock left", name="InsufficientStockError")
    return Pong(orderId=command.orderId)


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool("of_pipeline", [MigrationSet("plumbing", PLUMBING_MIGRATIONS)]) as pool:
        yield pool


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[Broker]:
    broker = Broker(amqp_url, name="pipeline-test")
    await broker.connect()
    yield broker
    await broker.close()


@contextlib.asynccontextmanager
async def consuming(pool: asyncpg.Pool, broker: Broker, faults: FaultPlan | None = None) -> AsyncIterator[Harness]:
    """A consumer of a queue of its own, with the process's relay publishing what it commits, and a queue that
    collects the replies."""
    queue = f"pipeline-{uuid.uuid4().hex[:8]}.commands"
    reply_key = f"pipeline-{uuid.uuid4().hex[:8]}.replies"
    channel = await broker.channel(prefetch=4)
    declared = await declare_consumer_queue(channel, queue, [(COMMANDS_EXCHANGE, f"{queue}.#")], delivery_limit=3)
    replies_queue = await channel.declare_queue(exclusive=True)
    await replies_queue.bind(REPLIES_EXCHANGE, routing_key=reply_key)
    relay = OutboxRelay(pool, broker, service="pipeline-test")
    harness = Harness(broker, channel, pool, queue, reply_key)

    async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        harness.replies.append(message)
        await message.ack()

    async def counted(ctx: MessageContext, command: Ping) -> Pong:
        harness.calls.append(command.orderId)
        return await ping(ctx, command)

    await replies_queue.consume(on_reply)
    consumer = Consumer(
        name="pipeline-test",
        queue=queue,
        routes={"Ping": command_route(Ping, counted)},
        pool=pool,
        broker=broker,
        max_message_bytes=10_000,
        on_committed=relay.publish_committed,
        faults=faults,
    )
    await consumer.start(declared)
    harness.consumer = consumer
    try:
        yield harness
    finally:
        await consumer.stop(5)
        await channel.queue_delete(queue)
        await channel.queue_delete(dq_name(queue))
        await channel.close()


async def send(harness: Harness, order_id: str, *, message_id: str | None = None, body: bytes | None = None) -> str:
    envelope = Envelope(type="Ping", correlationId=order_id, replyTo=harness.reply_key)
    if message_id is not None:
        envelope = envelope.model_copy(update={"messageId": message_id})
    message = envelope.to_amqp(body if body is not None else Ping(orderId=order_id).model_dump_json().encode())
    await harness.broker.publish(COMMANDS_EXCHANGE, f"{harness.queue}.Ping", message)
    return envelope.messageId


def probe(check: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    async def run() -> T:
        return check()

    return run


def handled(harness: Harness, outcome: str) -> float:
    labels = {"queue": harness.queue, "type": "Ping", "outcome": outcome}
    return REGISTRY.get_sample_value("orderflow_messages_handled_total", labels) or 0.0


async def reply_to(harness: Harness, message_id: str) -> tuple[str, dict]:
    def found() -> aio_pika.abc.AbstractIncomingMessage | None:
        return next((r for r in harness.replies if r.headers.get("x-causation-id") == message_id), None)

    reply = await eventually(probe(found), timeout=15, what=f"the reply to {message_id}")
    return reply.type, json.loads(reply.body)


async def test_a_command_is_answered_once_and_its_copy_absorbed(pool: asyncpg.Pool, broker: Broker) -> None:
    async with consuming(pool, broker) as harness:
        order_id = f"ORDER#{uuid.uuid4().hex[:8]}"
        message_id = await send(harness, order_id)
        assert await reply_to(harness, message_id) == ("Pong", {"orderId": order_id})
        await send(harness, order_id, message_id=message_id)
        await eventually(probe(lambda: handled(harness, "duplicate") == 1), timeout=15, what="the copy, a duplicate")
        assert harness.calls == [order_id]
        assert handled(harness, "ok") == 1
        assert len([r for r in harness.replies if r.headers.get("x-causation-id") == message_id]) == 1
        assert await pool.fetchval("SELECT duplicates FROM inbox WHERE message_id = $1", message_id) == 1


async def test_a_named_error_is_the_reply_and_what_the_handler_wrote_is_rolled_back(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    async with consuming(pool, broker) as harness:
        order_id = f"ORDER#{uuid.uuid4().hex[:8]}-declined"
        message_id = await send(harness, order_id)
        kind, body = await reply_to(harness, message_id)
        assert (kind, body["Error"], body["Cause"]) == ("CommandFailed", "InsufficientStockError", "no stock left")
        assert harness.calls == [order_id]
        # The Noted event the handler wrote went with its rollback: the only row ever written is the reply.
        rows = await pool.fetch("SELECT envelope->>'type' AS type FROM outbox")
        assert [row["type"] for row in rows] == ["CommandFailed"]
        await eventually(probe(lambda: handled(harness, "ok") == 1), timeout=15, what="the delivery counted as handled")


async def test_poison_is_dead_lettered_with_its_reason_and_never_handled(pool: asyncpg.Pool, broker: Broker) -> None:
    async with consuming(pool, broker) as harness:
        await send(harness, "ORDER#poison", body=b"{not json")
        dlq = await harness.channel.declare_queue(dq_name(harness.queue), passive=True)

        async def dead() -> aio_pika.abc.AbstractIncomingMessage | None:
            return await dlq.get(no_ack=True, fail=False)

        message = await eventually(dead, timeout=15, what="the poison in the dead-letter queue")
        assert message.headers[HEADER_DEATH_KIND] == "invalid_json"
        assert str(message.headers[HEADER_DEATH_REASON]).startswith("invalid_json:")
        assert harness.calls == []
        assert handled(harness, "dead_lettered") == 1


async def test_a_configured_fault_answers_in_place_of_the_handler(pool: asyncpg.Pool, broker: Broker) -> None:
    plan = FaultPlan([FaultRule(messageType="Ping", error="OrderRecordError", correlationIdPattern="-record$")])
    async with consuming(pool, broker, faults=plan) as harness:
        faulty, fine = f"ORDER#{uuid.uuid4().hex[:8]}-record", f"ORDER#{uuid.uuid4().hex[:8]}"
        faulty_id, fine_id = await send(harness, faulty), await send(harness, fine)
        kind, body = await reply_to(harness, faulty_id)
        assert (kind, body["Error"]) == ("CommandFailed", "OrderRecordError")
        assert await reply_to(harness, fine_id) == ("Pong", {"orderId": fine})
        assert harness.calls == [fine]


async def test_the_middlewares_run_in_the_documented_order(pool: asyncpg.Pool, broker: Broker) -> None:
    async with consuming(pool, broker) as harness:
        consumer_stack = repr(harness.consumer.stack)
    assert consumer_stack == (
        "Stack(receive=Pipeline(CountOutcomes, DeadLetter, Decode, BindLogContext, CommandQueueWait), "
        # No Trace: this process exports no spans (tests/e2e/test_tracing.py runs processes that do).
        "unit=Pipeline(Settle, HoldWhileDatabaseAway, Transaction), "
        "handle=Pipeline(Deadline, Replies))"
    )
    plan = FaultPlan([FaultRule(messageType="Ping", error="E")])
    async with consuming(pool, broker, faults=plan) as harness:
        assert "handle=Pipeline(Deadline, InjectFaults, Replies)" in repr(harness.consumer.stack)
