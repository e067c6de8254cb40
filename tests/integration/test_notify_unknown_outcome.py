"""An email whose server took the whole message and then dropped the connection without its final answer: the
mail may be delivered, so it must never be sent again. On a real aiosmtpd server (test_smtp_pool's, whose DATA
fault "close" takes the message and drops the connection), a real notify database, and, for the last test, the
real consumer on the real broker: the channel's row stays 'sending', the command's redelivery reports the email
"skipped" and answers CustomerNotified, and the server holds the message exactly once. (test_smtp_pool has
email.send raising EmailOutcomeUnknown there, and a refusing answer to DATA named as before.)"""

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import aio_pika
import asyncpg
import pytest
from harness import eventually, migrated_pool
from prometheus_client import REGISTRY
from test_smtp_pool import Sink, server, start_sink

from contracts.notify import NotifyCustomer
from plumbing.broker import Broker
from plumbing.commands import command_route
from plumbing.consumer import Consumer, MessageContext
from plumbing.envelope import Envelope
from plumbing.relay import OutboxRelay
from plumbing.topology import COMMANDS_EXCHANGE, REPLIES_EXCHANGE, declare_consumer_queue, dq_name
from services.notify.email import EmailOutcomeUnknown
from services.notify.handlers import NotifyHandlers
from services.notify.main import MIGRATIONS
from services.notify.sms import LoggingSmsProvider
from services.notify.smtp_pool import SmtpPool

pytestmark = pytest.mark.integration

DEADLINE = 15.0


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    started = start_sink()
    yield started
    started.controller.stop()


@pytest.fixture
async def db() -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool("of_notify_unknown", MIGRATIONS, size=4) as pool:
        yield pool


@pytest.fixture
async def handlers(sink: Sink, db: asyncpg.Pool) -> AsyncIterator[NotifyHandlers]:
    smtp = SmtpPool(server(sink.port), size=2)
    yield NotifyHandlers(pool=db, sms=LoggingSmsProvider(), smtp={"pool": smtp}, sender="orders@orderflow.local")
    await smtp.close()


def command(order_id: str) -> NotifyCustomer:
    return NotifyCustomer.model_validate(
        {
            "orderId": order_id,
            "customer": {"email": "ada@example.com", "phone": "+15550002222"},
            "lines": [{"productId": "sku-1", "name": "One", "quantity": 1, "unitPrice": 5.0, "lineTotal": 5.0}],
            "amount": 5.0,
            "currency": "usd",
        }
    )


def received(sink: Sink, order_id: str) -> int:
    return sum(order_id in subject for subject in sink.subjects())


async def statuses(db: asyncpg.Pool, order_id: str) -> dict[str, str]:
    rows = await db.fetch("SELECT channel, status FROM notification WHERE order_id = $1", order_id)
    return {row["channel"]: row["status"] for row in rows}


async def test_the_row_stays_sending_and_the_email_is_not_sent_again(
    sink: Sink, db: asyncpg.Pool, handlers: NotifyHandlers
) -> None:
    order_id = f"ORDER#{uuid.uuid4().hex[:8]}"
    ctx = cast(MessageContext, None)  # the handler does not use its context
    sink.recorder.faults["DATA"] = ["close"]
    with pytest.raises(EmailOutcomeUnknown):
        await handlers.notify_customer(ctx, command(order_id))
    assert received(sink, order_id) == 1
    # The SMS went and is recorded; the email's outcome is unknown: its claim is left as it was.
    assert await statuses(db, order_id) == {"email": "sending", "sms": "sent"}

    again = await handlers.notify_customer(ctx, command(order_id))
    assert {(r.channel, r.status, r.detail) for r in again.results} == {
        ("email", "skipped", "already sending"),
        ("sms", "skipped", "already sent"),
    }
    assert received(sink, order_id) == 1
    assert await statuses(db, order_id) == {"email": "sending", "sms": "sent"}


def handled(queue: str, outcome: str) -> float:
    labels = {"queue": queue, "type": "NotifyCustomer", "outcome": outcome}
    return REGISTRY.get_sample_value("orderflow_messages_handled_total", labels) or 0.0


async def test_through_the_consumer_the_redelivery_answers_with_the_email_skipped(
    sink: Sink, db: asyncpg.Pool, handlers: NotifyHandlers, amqp_url: str
) -> None:
    """The handler's crash is no named error: no failure reply, the delivery is rolled back and requeued (not
    dead-lettered), and its redelivery finds both channels claimed and answers CustomerNotified, which the
    saga takes as NotifyCustomer's success. One requeue, one answer, one email."""
    broker = Broker(amqp_url, name="notify-unknown-test")
    await broker.connect()
    queue = f"notify-unknown-{uuid.uuid4().hex[:8]}.commands"
    reply_key = f"notify-unknown-{uuid.uuid4().hex[:8]}.replies"
    channel = await broker.channel(prefetch=1)
    declared = await declare_consumer_queue(channel, queue, [(COMMANDS_EXCHANGE, f"{queue}.#")], delivery_limit=3)
    replies_queue = await channel.declare_queue(exclusive=True)
    await replies_queue.bind(REPLIES_EXCHANGE, routing_key=reply_key)
    replies: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        replies.append(message)
        await message.ack()

    await replies_queue.consume(on_reply)
    consumer = Consumer(
        name="notify-unknown-test",
        queue=queue,
        routes={"NotifyCustomer": command_route(NotifyCustomer, handlers.notify_customer)},
        pool=db,
        broker=broker,
        max_message_bytes=100_000,
        on_committed=OutboxRelay(db, broker, service="notify-unknown-test").publish_committed,
    )
    await consumer.start(declared)
    try:
        order_id = f"ORDER#{uuid.uuid4().hex[:8]}"
        sink.recorder.faults["DATA"] = ["close"]
        envelope = Envelope(type="NotifyCustomer", correlationId=order_id, replyTo=reply_key)
        await broker.publish(
            COMMANDS_EXCHANGE,
            f"{queue}.NotifyCustomer",
            envelope.to_amqp(command(order_id).model_dump_json().encode()),
        )

        async def answered() -> bool:
            return handled(queue, "ok") == 1 and len(replies) == 1

        await eventually(answered, timeout=DEADLINE, what="the redelivery answered")
        reply = replies[0]
        body: dict[str, Any] = json.loads(reply.body)
        assert reply.type == "CustomerNotified"
        assert reply.headers.get("x-causation-id") == envelope.messageId
        assert {(r["channel"], r["status"]) for r in body["results"]} == {("email", "skipped"), ("sms", "skipped")}
        assert handled(queue, "requeued") == 1 and handled(queue, "dead_lettered") == 0
        assert received(sink, order_id) == 1
        assert await statuses(db, order_id) == {"email": "sending", "sms": "sent"}
        assert await db.fetchval("SELECT count(*) FROM inbox WHERE message_id = $1", envelope.messageId) == 1
        dead = await channel.declare_queue(dq_name(queue), passive=True)
        assert dead.declaration_result.message_count == 0
        left = await channel.declare_queue(queue, passive=True)
        assert left.declaration_result.message_count == 0
    finally:
        await consumer.stop(5)
        await channel.queue_delete(queue)
        await channel.queue_delete(dq_name(queue))
        await channel.close()
        await broker.close()
