"""What flows through the pipeline: a ``Delivery`` (one message), a ``Unit`` (the deliveries handled in one
transaction), and what a handler sees of them: its ``MessageContext``, its ``Route``, and ``Rollback``."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aio_pika.abc import AbstractIncomingMessage
from pydantic import BaseModel

from plumbing import outbox
from plumbing.envelope import Envelope
from plumbing.errors import PoisonMessage
from plumbing.topology import REPLIES_EXCHANGE


@dataclass
class MessageContext:
    """What a handler gets besides its payload: the envelope and the open transaction."""

    envelope: Envelope
    conn: asyncpg.Connection
    consumer: str
    queue: str = ""  # the queue it came from, for metrics

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        payload: BaseModel,
        *,
        message_type: str | None = None,
        correlation_id: str | None = None,
        attempt: int | None = None,
        reply_to: str | None = None,
        message_id: str | None = None,
    ) -> Envelope:
        """Write a message caused by this one to the outbox, in this transaction."""
        fields: dict[str, Any] = {
            "type": message_type or type(payload).__name__,
            "correlationId": correlation_id or self.envelope.correlationId,
            "causationId": self.envelope.messageId,
            "attempt": attempt or 1,
            "replyTo": reply_to,
        }
        if message_id:
            fields["messageId"] = message_id
        envelope = Envelope(**fields)
        await outbox.enqueue(self.conn, exchange=exchange, routing_key=routing_key, envelope=envelope, payload=payload)
        return envelope

    async def reply(self, payload: BaseModel) -> Envelope:
        """Answer the command being handled, to its reply-to key, with the same attempt."""
        if not self.envelope.replyTo:
            raise PoisonMessage("bad_envelope: command has no reply-to")
        return await self.publish(REPLIES_EXCHANGE, self.envelope.replyTo, payload, attempt=self.envelope.attempt)


#: A handler runs in the delivery's transaction; a command's handler returns its reply (or None: no reply now).
Handler = Callable[[MessageContext, Any], Awaitable[BaseModel | None]]


class Rollback(Exception):
    """Raised by a handler to undo everything the delivery's transaction wrote and still answer: the transaction
    middleware rolls it back, then claims the message in a new transaction and runs ``then`` in it (a command's
    failure reply). Cheaper than a savepoint around every handler, which costs two round trips on every message
    to spare a second transaction on the few that fail."""

    def __init__(self, then: Callable[["MessageContext"], Awaitable[None]]) -> None:
        super().__init__("handler rolled back")
        self.then = then


@dataclass(frozen=True)
class Route:
    model: type[BaseModel]
    handler: Handler
    #: A command: without a reply-to it is poison, refused before any effect; it is refused after its deadline,
    #: its handler's result is its reply and a named error its failure reply (plumbing/middleware/replies.py).
    needs_reply: bool = False
    #: (type, AMQP user-id) -> why this sender may not send it, or None: a refused message is dead-lettered as
    #: forged before any effect (the orchestrator's replies, contracts.permissions.sender_refusal).
    sender_check: Callable[[str, str | None], str | None] | None = None


@dataclass(eq=False)
class Delivery:
    """One message on its way through the pipeline. The fields after ``message`` are filled in as it goes:
    ``envelope``, ``route`` and ``payload`` by the decoding, ``claimed`` and ``context`` by the transaction."""

    message: AbstractIncomingMessage
    #: ok, duplicate, dead_lettered or requeued: the label it is counted under.
    outcome: str = "ok"
    #: A middleware's ``before`` sets it to end the delivery's way inward: what is inside is skipped.
    stopped: bool = False
    started: float = 0.0
    envelope: Envelope = field(init=False)
    route: Route = field(init=False)
    payload: BaseModel = field(init=False)
    claimed: bool = False
    context: MessageContext = field(init=False)
    #: What the handler returned: a command's reply.
    result: BaseModel | None = None
    #: Handled in a unit of several (plumbing/middleware/batch.py).
    batched: bool = False
    #: The trace context it was received in, when tracing is on: a batch handles it in another task.
    trace_context: Any = None


@dataclass(eq=False)
class Unit:
    """Deliveries handled in one transaction and settled together: one, or a batch (BATCH_MAX)."""

    deliveries: list[Delivery]
    stopped: bool = False
    #: Failed attempts so far of a unit held while its database is away.
    failures: int = 0
    #: The outbox rows its commit wrote, published before the deliveries are acknowledged.
    written: list[outbox.Pending] = field(default_factory=list)
    #: What a middleware holds from its ``before`` to its ``after`` (a span, a connection), under its own key.
    held: dict[object, Any] = field(default_factory=dict)
    #: Called once the unit's transaction committed (plumbing/middleware/batch.py): the stage gives its place to
    #: the next unit while this one publishes, waits for the confirms and acknowledges.
    committed: Callable[[], None] | None = None
