"""The outbox against a real database and broker: a writer that collects its rows publishes them itself right
after the commit, and the relay's sweep leaves them alone while they are held; rows nobody publishes (the
writer died, or they were written without collecting) are swept, held ones once their hold has passed."""

import asyncio
import uuid
from collections.abc import AsyncIterator

import aio_pika
import asyncpg
import pytest
from harness import eventually, migrated_pool

from contracts.orders import OrderRejected
from plumbing import outbox
from plumbing.broker import Broker
from plumbing.envelope import Envelope
from plumbing.migrations import PLUMBING_MIGRATIONS, MigrationSet
from plumbing.relay import OutboxRelay
from plumbing.topology import EVENTS_EXCHANGE

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
