"""Exchange and queue names and their declaration, in one place.

Every consumer queue is a durable quorum queue with its own dead-letter queue:
the broker dead-letters a message after ``delivery_limit`` failed deliveries,
and consumers dead-letter unreadable messages themselves with the reason.
"""

from typing import Literal, TypedDict

from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue, ExchangeType

#: Public events: OrderRequested in, outcomes out.
EVENTS_EXCHANGE = "orders"
#: Commands from the orchestrator, routed by "<service>.<CommandType>".
COMMANDS_EXCHANGE = "orderflow.commands"
#: Replies to commands, routed by the requester's reply-to key.
REPLIES_EXCHANGE = "orderflow.replies"
#: Where every dead letter goes, routed by the name of the queue it came from.
DEAD_LETTER_EXCHANGE = "orderflow.dlx"
#: Exchanges whose messages must reach a queue: a command or reply nobody can
#: receive stays in the outbox instead of vanishing. Public events may have no
#: listener, so they are not mandatory.
MANDATORY_EXCHANGES = frozenset({COMMANDS_EXCHANGE, REPLIES_EXCHANGE, DEAD_LETTER_EXCHANGE})


def q_name(consumer: str, purpose: str) -> str:
    """Name of a consumer's queue: ``inventory.commands``, ``orchestrator.replies``."""
    return f"{consumer}.{purpose}"


def dq_name(queue: str) -> str:
    """Name of the dead-letter queue of ``queue``."""
    return f"{queue}.dlq"


class QueueArguments(TypedDict, total=False):
    """The x-arguments we set; typed so a misspelt key fails type-checking."""

    x_queue_type: Literal["quorum"]
    x_dead_letter_exchange: str
    x_dead_letter_routing_key: str
    x_delivery_limit: int
    x_dead_letter_strategy: Literal["at-least-once", "at-most-once"]
    x_overflow: Literal["reject-publish", "drop-head"]


def _amqp_args(args: QueueArguments) -> dict[str, object]:
    return {"-".join(k.split("_")): v for k, v in args.items()}


async def declare_exchanges(channel: AbstractChannel) -> dict[str, AbstractExchange]:
    return {
        EVENTS_EXCHANGE: await channel.declare_exchange(EVENTS_EXCHANGE, ExchangeType.TOPIC, durable=True),
        COMMANDS_EXCHANGE: await channel.declare_exchange(COMMANDS_EXCHANGE, ExchangeType.TOPIC, durable=True),
        REPLIES_EXCHANGE: await channel.declare_exchange(REPLIES_EXCHANGE, ExchangeType.DIRECT, durable=True),
        DEAD_LETTER_EXCHANGE: await channel.declare_exchange(DEAD_LETTER_EXCHANGE, ExchangeType.DIRECT, durable=True),
    }


async def declare_consumer_queue(
    channel: AbstractChannel,
    queue: str,
    bindings: list[tuple[str, str]],
    *,
    delivery_limit: int,
) -> AbstractQueue:
    """Declare ``queue`` and its dead-letter queue, and bind it (exchange, routing key)."""
    await declare_exchanges(channel)
    dlq = await channel.declare_queue(dq_name(queue), durable=True, arguments=_amqp_args({"x_queue_type": "quorum"}))
    await dlq.bind(DEAD_LETTER_EXCHANGE, routing_key=queue)
    declared = await channel.declare_queue(
        queue,
        durable=True,
        arguments=_amqp_args(
            {
                "x_queue_type": "quorum",
                "x_dead_letter_exchange": DEAD_LETTER_EXCHANGE,
                "x_dead_letter_routing_key": queue,
                "x_delivery_limit": delivery_limit,
            }
        ),
    )
    for exchange, routing_key in bindings:
        await declared.bind(exchange, routing_key=routing_key)
    return declared
