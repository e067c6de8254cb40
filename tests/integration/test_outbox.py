"""The outbox against a real database and broker: a writer that collects its rows publishes them itself right
after the commit, and the relay's sweep leaves them alone while they are held; rows nobody publishes (the
writer died, or they were written without collecting) are swept, held ones once their hold has passed. A row
that can never be published is parked in outbox_parked, and the rows around it are published; orderctl lists,
retries and drops parked rows."""

import asyncio
import uuid
from collections.abc import AsyncIterator

import aio_pika
import asyncpg
import pytest
from harness import eventually, migrated_pool
from prometheus_client import REGISTRY

from contracts.orders import OrderRejected
from orderctl import outbox as orderctl_outbox
from plumbing import outbox
from plumbing.broker import Broker
from plumbing.envelope import Envelope
from plumbing.migrations import PLUMBING_MIGRATIONS, MigrationSet
from plumbing.relay import BrokerAway, OutboxRelay
from plumbing.topology import COMMANDS_EXCHANGE, EVENTS_EXCHANGE

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool("of_outbox", [MigrationSet("plumbing", PLUMBING_MIGRATIONS)]) as pool:
        yield pool


class Heard:
    """Every message published to a private routing key of the events exchange."""

    def __init__(self) -> None:
        self.key = f"test.outbox.{uuid.uuid4().hex[:8]}"
        self.ids: list[str] = []

    async def start(self, channel: aio_pika.abc.AbstractChannel) -> None:
        queue = await channel.declare_queue("", exclusive=True)
        await queue.bind(EVENTS_EXCHANGE, self.key)

        async def hear(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            self.ids.append(message.message_id or "")

        await queue.consume(hear, no_ack=True)

    async def exactly(self, expected: list[str], *, ordered: bool = True) -> None:
        async def arrived() -> bool:
            return (self.ids if ordered else sorted(self.ids)) == (expected if ordered else sorted(expected))

        await eventually(arrived, timeout=10, what=f"exactly {expected} published")


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[Broker]:
    broker = Broker(amqp_url, name="test-outbox")
    await broker.connect()
    yield broker
    await broker.close()


@pytest.fixture
async def heard(broker: Broker) -> Heard:
    assert broker.connection is not None
    heard = Heard()
    await heard.start(await broker.connection.channel())
    return heard


def message(key: str) -> outbox.Outgoing:
    envelope = Envelope(type="OrderRejected", correlationId="ORDER#outbox")
    return outbox.Outgoing(EVENTS_EXCHANGE, key, envelope, OrderRejected(orderId="ORDER#outbox", reasons=["test"]))


async def write(pool: asyncpg.Pool, messages: list[outbox.Outgoing], *, hold_seconds: float) -> list[outbox.Pending]:
    """One committed transaction writing ``messages`` under ``collecting``; returns what it collected."""
    with outbox.collecting(hold_seconds) as written:
        async with pool.acquire() as conn, conn.transaction():
            await outbox.enqueue_many(conn, messages)
    return written.messages()


async def held(pool: asyncpg.Pool) -> list[str]:
    return [r[0] for r in await pool.fetch("SELECT message_id FROM outbox WHERE held_until > now() ORDER BY id")]


async def test_collected_rows_are_published_after_the_commit_and_then_deleted(
    pool: asyncpg.Pool, broker: Broker, heard: Heard
) -> None:
    relay = OutboxRelay(pool, broker, service="test")
    sent = [message(heard.key) for _ in range(3)]
    collected = await write(pool, sent, hold_seconds=60)
    ids = [m.envelope.messageId for m in sent]
    assert [m.envelope.messageId for m in collected] == ids
    assert await held(pool) == ids

    # A sweep now publishes nothing: the writer holds the rows.
    assert await relay.publish_pending() == 0

    await relay.publish_committed(collected)
    await heard.exactly(ids)
    tidy = asyncio.create_task(relay.run())
    try:
        await eventually(
            lambda: pool.fetchval("SELECT count(*) = 0 FROM outbox"), timeout=10, what="the published rows deleted"
        )
    finally:
        tidy.cancel()
        await asyncio.gather(tidy, return_exceptions=True)
        await relay.close()
    assert heard.ids == ids, "published once each"


async def test_held_rows_nobody_published_are_swept_once_the_hold_has_passed(
    pool: asyncpg.Pool, broker: Broker, heard: Heard
) -> None:
    relay = OutboxRelay(pool, broker, service="test")
    # The writer "dies" after its commit: it never hands its rows over.
    orphan = message(heard.key)
    await write(pool, [orphan], hold_seconds=1.0)
    assert await relay.publish_pending() == 0, "still held"

    async def swept() -> bool:
        return await relay.publish_pending() == 1

    await eventually(swept, timeout=10, what="the orphaned row swept after its hold")
    await heard.exactly([orphan.envelope.messageId])
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_rows_written_without_collecting_are_not_held(pool: asyncpg.Pool, broker: Broker, heard: Heard) -> None:
    relay = OutboxRelay(pool, broker, service="test")
    sent = message(heard.key)
    async with pool.acquire() as conn, conn.transaction():
        await outbox.enqueue_many(conn, [sent])
    assert await pool.fetchval("SELECT held_until FROM outbox") is None
    assert await relay.publish_pending() == 1
    await heard.exactly([sent.envelope.messageId])


async def test_only_rows_the_insert_wrote_are_collected(pool: asyncpg.Pool) -> None:
    first = message("test.outbox.any")
    await write(pool, [first], hold_seconds=60)
    # The same message again (ON CONFLICT DO NOTHING skips it) beside a new one, and a statement whose
    # condition writes nothing: only the new row is handed over.
    again, fresh = first, message("test.outbox.any")
    with outbox.collecting() as written:
        async with pool.acquire() as conn, conn.transaction():
            await outbox.enqueue_many(conn, [again, fresh])
            skipped = message("test.outbox.any")
            rows = await conn.fetch(outbox.insert_sql(only_if="false"), *outbox.columns([skipped]))
            outbox.inserted([r[0] for r in rows])
    assert [m.envelope.messageId for m in written.messages()] == [fresh.envelope.messageId]


async def test_shutdown_flush_publishes_held_rows_too(pool: asyncpg.Pool, broker: Broker, heard: Heard) -> None:
    relay = OutboxRelay(pool, broker, service="test")
    sent = [message(heard.key) for _ in range(2)]
    await write(pool, sent, hold_seconds=60)
    await relay.flush()
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    await heard.exactly([m.envelope.messageId for m in sent], ordered=False)


async def test_a_restarted_process_publishes_at_once_what_its_crashed_run_held(
    pool: asyncpg.Pool, broker: Broker, heard: Heard
) -> None:
    orphan = message(heard.key)
    await write(pool, [orphan], hold_seconds=60)  # committed by a run that died before publishing it
    relay = OutboxRelay(pool, broker, service="test")
    await relay.mark_started()
    mine = message(heard.key)
    await write(pool, [mine], hold_seconds=60)  # this run's own, which its writer is about to publish
    running = asyncio.create_task(relay.run())
    try:

        async def only_mine_left() -> bool:
            return [r[0] for r in await pool.fetch("SELECT message_id FROM outbox")] == [mine.envelope.messageId]

        await eventually(only_mine_left, timeout=10, what="the orphan swept, this run's own row left to its writer")
        await heard.exactly([orphan.envelope.messageId])
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await relay.close()


# -- rows that cannot be published (issue 14) ------------------------------------------------------------------
def unpublishable(key: str) -> outbox.Outgoing:
    """A message whose correlation id is 150 'é': 300 bytes of UTF-8, where an AMQP short string holds 255."""
    order_id = "é" * 150
    envelope = Envelope(type="OrderRejected", correlationId=order_id)
    return outbox.Outgoing(EVENTS_EXCHANGE, key, envelope, OrderRejected(orderId=order_id, reasons=["test"]))


def unroutable() -> outbox.Outgoing:
    """A command to a routing key no queue binds: the broker returns it (mandatory) at every publish."""
    envelope = Envelope(type="OrderRejected", correlationId="ORDER#outbox")
    key = f"test.outbox.nobody-{uuid.uuid4().hex[:8]}"
    return outbox.Outgoing(COMMANDS_EXCHANGE, key, envelope, OrderRejected(orderId="ORDER#outbox", reasons=["test"]))


async def enqueue(pool: asyncpg.Pool, messages: list[outbox.Outgoing]) -> None:
    """Rows written the way a timer or a webhook writes them: committed, not held, left to the relay's sweep."""
    async with pool.acquire() as conn, conn.transaction():
        await outbox.enqueue_many(conn, messages)


def parked_total(service: str) -> float:
    return REGISTRY.get_sample_value("orderflow_outbox_parked_total", {"service": service}) or 0.0


async def test_a_row_that_cannot_be_a_message_is_parked_and_the_rest_of_its_batch_published(
    pool: asyncpg.Pool, broker: Broker, heard: Heard
) -> None:
    service = f"test-{uuid.uuid4().hex[:6]}"
    relay = OutboxRelay(pool, broker, service=service)
    before = [message(heard.key) for _ in range(2)]
    poison = unpublishable(heard.key)
    after = [message(heard.key) for _ in range(2)]
    await enqueue(pool, before)
    await enqueue(pool, [poison])
    await enqueue(pool, after)

    assert await relay.publish_pending() == 5
    await heard.exactly([m.envelope.messageId for m in before + after])
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    parked = await pool.fetch("SELECT * FROM outbox_parked")
    assert [row["message_id"] for row in parked] == [poison.envelope.messageId]
    row = parked[0]
    assert row["reason"].startswith("unpublishable:") and "255 bytes" in row["reason"], row["reason"]
    assert row["attempts"] == 1 and row["first_failed_at"] is not None and row["parked_at"] is not None
    assert row["envelope"]["correlationId"] == "é" * 150 and row["routing_key"] == heard.key
    assert parked_total(service) == 1
    assert REGISTRY.get_sample_value("orderflow_outbox_parked_messages", {"service": service}) == 1

    # The next sweep has nothing left: the parked row no longer holds anything up.
    assert await relay.publish_pending() == 0


async def test_rows_the_writer_could_not_publish_after_its_commit_are_swept_and_the_poison_parked(
    pool: asyncpg.Pool, broker: Broker, heard: Heard
) -> None:
    relay = OutboxRelay(pool, broker, service="test")
    sent = [message(heard.key), unpublishable(heard.key), message(heard.key)]
    collected = await write(pool, sent, hold_seconds=60)
    await relay.publish_committed(collected)
    # The writer's good rows were confirmed (and are deleted soon); the poison stays, held, for the sweep.
    await heard.exactly([sent[0].envelope.messageId, sent[2].envelope.messageId])
    await relay.tidy()
    assert [r[0] for r in await pool.fetch("SELECT message_id FROM outbox")] == [sent[1].envelope.messageId]
    await relay.flush()
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    assert await pool.fetchval("SELECT message_id FROM outbox_parked") == sent[1].envelope.messageId


async def test_a_row_that_keeps_failing_is_parked_after_max_attempts(
    pool: asyncpg.Pool, broker: Broker, heard: Heard
) -> None:
    relay = OutboxRelay(pool, broker, service="test", max_attempts=2)
    returned, good = unroutable(), message(heard.key)
    await enqueue(pool, [returned, good])

    assert await relay.publish_pending() == 2
    await heard.exactly([good.envelope.messageId])
    row = await pool.fetchrow("SELECT attempts, first_failed_at, held_until > now() AS delayed FROM outbox")
    assert (row["attempts"], row["delayed"]) == (1, True), "counted once, and tried again only after a delay"
    assert row["first_failed_at"] is not None
    assert await relay.publish_pending() == 0, "the failed row waits for its delay"

    async def parked() -> str | None:
        await relay.publish_pending()
        return await pool.fetchval("SELECT reason FROM outbox_parked")

    reason = await eventually(parked, timeout=15, what="the row parked at its second failure")
    assert reason.startswith("failed: 2 publishes in a row failed since"), reason
    assert "PublishError" in reason or "NO_ROUTE" in reason, reason
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_the_broker_being_away_is_not_a_reason_to_park(pool: asyncpg.Pool, amqp_url: str) -> None:
    away = Broker(amqp_url, name="test-outbox-away")
    await away.connect()
    await away.close()  # a process whose connection is gone: every publish fails
    relay = OutboxRelay(pool, away, service="test", max_attempts=1)
    sent = message("test.outbox.any")
    await enqueue(pool, [sent])
    for _ in range(3):
        with pytest.raises(BrokerAway):
            await relay.publish_pending()
    row = await pool.fetchrow("SELECT message_id, attempts, held_until FROM outbox")
    assert tuple(row) == (sent.envelope.messageId, 0, None), "not counted, not delayed, not parked"
    assert await pool.fetchval("SELECT count(*) FROM outbox_parked") == 0


async def test_a_parked_row_is_listed_retried_and_dropped_with_orderctl(
    pool: asyncpg.Pool, broker: Broker, heard: Heard
) -> None:
    relay = OutboxRelay(pool, broker, service="test", max_attempts=1)
    returned, poison = unroutable(), unpublishable(heard.key)
    await enqueue(pool, [returned, poison])
    assert await relay.publish_pending() == 2
    async with pool.acquire() as conn:
        rows = await orderctl_outbox.parked(conn, "orders")
    assert [r.message_id for r in rows] == [returned.envelope.messageId, poison.envelope.messageId]
    assert rows[0].reason.startswith("failed: 1 publishes") and rows[1].reason.startswith("unpublishable:")
    assert rows[0].service == "orders" and rows[0].type == "OrderRejected" and rows[0].attempts == 1
    assert "unpublishable" in orderctl_outbox.render(rows)

    # What made the first one fail is repaired (a queue now binds its routing key): retried, it is published.
    assert broker.connection is not None
    channel = await broker.connection.channel()
    queue = await channel.declare_queue("", exclusive=True)
    await queue.bind(COMMANDS_EXCHANGE, returned.routing_key)
    async with pool.acquire() as conn:
        assert await orderctl_outbox.retry(conn, rows[0].id)
        assert not await orderctl_outbox.retry(conn, rows[0].id), "no longer parked"
        assert [r.message_id for r in await orderctl_outbox.parked(conn, "orders")] == [poison.envelope.messageId]
        back = await conn.fetchrow("SELECT message_id, attempts, held_until FROM outbox")
        assert tuple(back) == (returned.envelope.messageId, 0, None)
    assert await relay.publish_pending() == 1

    async def delivered() -> bool:
        message = await queue.get(no_ack=True, fail=False)
        return message is not None and message.message_id == returned.envelope.messageId

    await eventually(delivered, timeout=10, what="the retried row delivered")

    async with pool.acquire() as conn:
        assert await orderctl_outbox.drop(conn, rows[1].id)
        assert not await orderctl_outbox.drop(conn, rows[1].id)
        assert await orderctl_outbox.parked(conn, "orders") == []
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    await relay.publish_pending()  # finds the outbox empty and reads the gauges
    assert REGISTRY.get_sample_value("orderflow_outbox_parked_messages", {"service": "test"}) == 0
    await channel.close()
