"""Each process's RabbitMQ user, as orderctl broker-users creates it from contracts/permissions.py, on the real
broker: notify's user can neither pass for payment, nor read payment's commands, nor delete a queue; every
process's user declares and binds its own queues and publishes where it must."""

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import aiormq.exceptions
import pytest
from harness import fresh_vhost

from contracts import permissions
from contracts.asyncapi import consumer_queues
from orderctl.broker_users import Target, create_users, delete_users
from plumbing.topology import COMMANDS_EXCHANGE, REPLIES_EXCHANGE, declare_consumer_queue, declare_exchanges, q_name

pytestmark = pytest.mark.integration

REFUSED = (aiormq.exceptions.ChannelAccessRefused, aio_pika.exceptions.ChannelClosed)


@pytest.fixture(scope="module")
def vhost_url(servers: None) -> Iterator[str]:
    with fresh_vhost("orderflow-perm") as url:
        yield url


@pytest.fixture(scope="module")
async def users(vhost_url: str) -> AsyncIterator[dict[str, str]]:
    """Every process's user (a prefix unique to this test: user names are global to the broker) -> its URL."""
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    secrets = {p: f"pw {uuid.uuid4().hex} :/@%" for p in permissions.PROCESSES}
    target = Target.of(vhost_url)
    await create_users(target, secrets, prefix=prefix)
    try:
        yield {p: url_as(vhost_url, permissions.user_name(p, prefix), secrets[p]) for p in permissions.PROCESSES}
    finally:
        await delete_users(target, prefix=prefix)


def url_as(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.hostname}:5672"))


async def ack(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    await message.ack()


@contextlib.asynccontextmanager
async def channel_of(url: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(url)
    try:
        yield await connection.channel(publisher_confirms=True)
    finally:
        await connection.close()


@pytest.fixture(scope="module")
async def declared(users: dict[str, str]) -> dict[str, str]:
    """Every process declares its own queues with its own user, as plumbing.process does at start."""
    queues = consumer_queues()
    for queue, bindings in queues.items():
        async with channel_of(users[queue.split(".", 1)[0]]) as channel:
            await declare_consumer_queue(channel, queue, bindings, delivery_limit=5)
    return users


async def test_every_process_declares_its_queues_and_publishes_where_it_must(declared: dict[str, str]) -> None:
    # The orchestrator re-declares every command queue (orchestrator.main) and sends commands and events.
    async with channel_of(declared["orchestrator"]) as channel:
        for service in permissions.SERVICES:
            await declare_consumer_queue(
                channel, q_name(service, "commands"), [(COMMANDS_EXCHANGE, f"{service}.#")], delivery_limit=5
            )
        exchanges = await declare_exchanges(channel)
        await exchanges[COMMANDS_EXCHANGE].publish(aio_pika.Message(b"{}"), "payment.ProcessPayment", mandatory=True)
        await exchanges["orders"].publish(aio_pika.Message(b"{}"), "order.confirmed")
    for service in permissions.SERVICES:
        user = permissions.amqp_user(declared[service])
        async with channel_of(declared[service]) as channel:
            exchanges = await declare_exchanges(channel)
            # A reply, with the service's own user-id (plumbing.broker stamps it), and a dead letter.
            await exchanges[REPLIES_EXCHANGE].publish(
                aio_pika.Message(b"{}", user_id=user), "orchestrator", mandatory=True
            )
            await exchanges["orderflow.dlx"].publish(aio_pika.Message(b"{}", user_id=user), q_name(service, "commands"))
            queue = await channel.get_queue(q_name(service, "commands"), ensure=False)
            await queue.consume(ack)


async def test_notify_cannot_pass_for_payment(declared: dict[str, str]) -> None:
    payment = permissions.amqp_user(declared["payment"])
    async with channel_of(declared["notify"]) as channel:
        replies = await channel.get_exchange(REPLIES_EXCHANGE, ensure=False)
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed, match="user_id property set to"):
            message = aio_pika.Message(b"{}", type="PaymentProcessed", user_id=payment)
            await replies.publish(message, "orchestrator")


async def test_notify_cannot_read_payments_commands(declared: dict[str, str]) -> None:
    async with channel_of(declared["notify"]) as channel:
        queue = await channel.get_queue(q_name("payment", "commands"), ensure=False)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused, match="payment.commands"):
            await queue.consume(ack)
    # Nor bind its own queue to payment's commands: the topic read pattern admits only notify's binding key.
    async with channel_of(declared["notify"]) as channel:
        own = await channel.get_queue(q_name("notify", "commands"), ensure=False)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused, match="payment"):
            await own.bind(COMMANDS_EXCHANGE, "payment.#")


async def test_notify_cannot_delete_a_queue_or_send_a_command(declared: dict[str, str]) -> None:
    async with channel_of(declared["notify"]) as channel:
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused, match="payment.commands"):
            await channel.queue_delete(q_name("payment", "commands"))
    async with channel_of(declared["notify"]) as channel:
        commands = await channel.get_exchange(COMMANDS_EXCHANGE, ensure=False)
        with pytest.raises(REFUSED):
            await commands.publish(aio_pika.Message(b"{}"), "payment.RefundPayment")
    # The queue is still there, for payment's user.
    async with channel_of(declared["payment"]) as channel:
        await channel.declare_queue(q_name("payment", "commands"), passive=True)
