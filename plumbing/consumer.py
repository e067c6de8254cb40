"""Consume a queue: validate at the edge, handle once, commit, then acknowledge.

For each delivery the consumer reads the envelope, checks the size, the type,
the schema version and the payload's schema; anything unreadable is a poison
message, dead-lettered at once with the reason in its headers. A readable
message is handled in one PostgreSQL transaction that also claims its id in
the inbox and writes every outgoing message to the outbox; right after that
commit the consumer publishes those messages through its process's outbox
relay, and acknowledges the delivery once the broker confirmed them (so a
slow broker slows the consumer down instead of piling publishes up in
memory). A database that is unreachable holds the delivery and retries with
backoff; a handler that crashes has its delivery requeued, and after the
queue's delivery limit the broker dead-letters it.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from pydantic import BaseModel, ValidationError

from plumbing import inbox, metrics, outbox, tracing
from plumbing.broker import Broker
from plumbing.envelope import SCHEMA_VERSION, Envelope, copy_of, escaped
from plumbing.errors import DB_CONNECTION, PoisonMessage, classify_transient
from plumbing.faults import FaultPlan
from plumbing.logs import bind, log_context
from plumbing.topology import DEAD_LETTER_EXCHANGE, REPLIES_EXCHANGE

log = logging.getLogger(__name__)

HEADER_DEATH_REASON = "x-death-reason"
HEADER_DEATH_KIND = "x-death-kind"
HEADER_ORIGINAL_USER = "x-original-user-id"


@dataclass
class MessageContext:
    """What a handler gets besides its payload: the envelope and the open transaction."""

    envelope: Envelope
    conn: asyncpg.Connection
    consumer: str
    faults: FaultPlan | None = None
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


Handler = Callable[[MessageContext, Any], Awaitable[None]]


class Rollback(Exception):
    """Raised by a handler to undo everything the delivery's transaction wrote and still answer: the consumer
    rolls the transaction back, then claims the message in a new transaction and runs ``then`` in it (a
    command's failure reply). Cheaper than a savepoint around every handler, which costs two round trips
    on every message to spare a second transaction on the few that fail."""

    def __init__(self, then: Callable[["MessageContext"], Awaitable[None]]) -> None:
        super().__init__("handler rolled back")
        self.then = then


RejectHook = Callable[[asyncpg.Connection, AbstractIncomingMessage, str], Awaitable[None]]
CommitHook = Callable[[Sequence[outbox.Pending]], Awaitable[None]]


@dataclass(frozen=True)
class Route:
    model: type[BaseModel]
    handler: Handler
    needs_reply: bool = False  # a command: without a reply-to it is poison, refused before any effect
    #: (type, AMQP user-id) -> why this sender may not send it, or None: a refused message is dead-lettered as
    #: forged before any effect (the orchestrator's replies, contracts.permissions.sender_refusal).
    sender_check: Callable[[str, str | None], str | None] | None = None


class Consumer:
    """Consumes one queue, dispatching on the message type to typed handlers."""

    def __init__(
        self,
        *,
        name: str,
        queue: str,
        routes: dict[str, Route],
        pool: asyncpg.Pool,
        broker: Broker,
        max_message_bytes: int,
        default_type: str | None = None,
        on_reject: RejectHook | None = None,
        on_committed: CommitHook | None = None,
        faults: FaultPlan | None = None,
    ) -> None:
        self.name = name
        self.queue_name = queue
        self.routes = routes
        self.pool = pool
        self.broker = broker
        self.max_message_bytes = max_message_bytes
        self.default_type = default_type
        self.on_reject = on_reject
        self.on_committed = on_committed
        self.faults = faults
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False

    async def start(self, queue: AbstractQueue) -> None:
        self._queue = queue
        self._tag = await queue.consume(self._on_message)

    async def stop(self, timeout: float) -> None:
        """Stop taking deliveries and wait up to ``timeout`` for those in hand."""
        self._stopping = True
        if self._queue is not None and self._tag is not None:
            try:
                await self._queue.cancel(self._tag)
            except Exception:  # the channel may already be gone
                log.debug("cancel failed", exc_info=True)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("in-flight deliveries not finished before drain timeout; they will be redelivered")

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        self._idle.clear()
        log_context.set({})
        started = time.monotonic()
        message_type = message.type or self.default_type or "unknown"
        try:
            outcome = await self._handle(message)
        except Exception:  # even dead-lettering failed (broker away): hand the delivery back
            log.exception("could not settle delivery; requeueing")
            await _settle(message.nack(requeue=True))
            outcome = "requeued"
        finally:
            self._in_flight.discard(task)
            if not self._in_flight:
                self._idle.set()
        metrics.MESSAGES_HANDLED.labels(self.queue_name, _bounded(message_type, self.routes), outcome).inc()
        metrics.HANDLER_DURATION.labels(self.queue_name, _bounded(message_type, self.routes)).observe(
            time.monotonic() - started
        )

    async def _handle(self, message: AbstractIncomingMessage) -> str:
        try:
            envelope, route, payload = self._decode(message)
        except PoisonMessage as poison:
            await self.dead_letter(message, poison.reason)
            return "dead_lettered"
        except Exception as exc:  # whatever else makes a delivery unreadable must not hold it for ever
            await self.dead_letter(message, f"bad_envelope: {type(exc).__name__}: {str(exc)[:300]}")
            return "dead_lettered"
        bind(
            orderId=envelope.correlationId,
            step=envelope.type,
            attempt=envelope.attempt,
            correlationId=envelope.correlationId,
            messageId=envelope.messageId,
        )
        if route.needs_reply:
            # A command's wait from its sending (outbox and broker included) to now; its step's timeout counts
            # from the sending, so a long wait here is time the service never had (OrderflowCommandQueueWaitHigh).
            sent = envelope.occurredAt
            waited = (datetime.now(UTC) - (sent if sent.tzinfo else sent.replace(tzinfo=UTC))).total_seconds()
            metrics.COMMAND_QUEUE_WAIT.labels(self.queue_name).observe(max(0.0, waited))
        delay = 0.2
        while True:
            try:
                handled, written = await self._handle_once(envelope, route, payload)
                await self._committed(written)
                await message.ack()
                return "ok" if handled else "duplicate"
            except PoisonMessage as poison:
                await self.dead_letter(message, poison.reason)
                return "dead_lettered"
            except Exception as exc:
                transient = classify_transient(exc)
                if transient is not None and transient.error_name == DB_CONNECTION and not self._stopping:
                    # The database is away: hold the delivery rather than burn its delivery limit.
                    log.warning("database unreachable; holding delivery", extra={"fields": {"error": str(exc)}})
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                log.exception("handler failed; requeueing")
                await _settle(message.nack(requeue=True))
                return "requeued"

    def _decode(self, message: AbstractIncomingMessage) -> tuple[Envelope, Route, BaseModel]:
        if len(message.body) > self.max_message_bytes:
            raise PoisonMessage(f"too_large: body of {len(message.body)} bytes exceeds {self.max_message_bytes}")
        try:
            envelope = Envelope.from_amqp(message, default_type=self.default_type)
        except (ValueError, TypeError, OverflowError, ValidationError) as exc:
            raise PoisonMessage(f"bad_envelope: {_short(exc)}") from exc
        route = self.routes.get(envelope.type)
        if route is None:
            raise PoisonMessage(f"unknown_type: no handler for message type {envelope.type!r}")
        if envelope.schemaVersion != SCHEMA_VERSION:
            raise PoisonMessage(f"schema_version: version {envelope.schemaVersion} is not supported")
        if route.needs_reply and not envelope.replyTo:
            raise PoisonMessage("bad_envelope: command has no reply-to")
        try:
            payload = route.model.model_validate_json(message.body)
        except ValidationError as exc:
            kind = "invalid_json" if any(e["type"] == "json_invalid" for e in exc.errors()) else "schema"
            raise PoisonMessage(f"{kind}: {_short(exc)}") from exc
        # Last, so a malformed message is dead-lettered for what is wrong with it, whoever sent it.
        if route.sender_check is not None and (refusal := route.sender_check(envelope.type, message.user_id)):
            raise PoisonMessage(refusal)
        return envelope, route, payload

    async def _handle_once(
        self, envelope: Envelope, route: Route, payload: BaseModel
    ) -> tuple[bool, list[outbox.Pending]]:
        attributes = {
            "orderflow.order_id": envelope.correlationId,
            "orderflow.attempt": envelope.attempt,
            "messaging.message.id": envelope.messageId,
        }
        with tracing.handling(envelope.type, attributes):
            return await self._transaction(envelope, route, payload)

    async def _transaction(
        self, envelope: Envelope, route: Route, payload: BaseModel
    ) -> tuple[bool, list[outbox.Pending]]:
        async with self.pool.acquire() as conn:
            try:
                return await self._claimed(conn, envelope, lambda ctx: route.handler(ctx, payload))
            except Rollback as rollback:
                # Claimed afresh: if a copy of the message was handled meanwhile, nothing more is written.
                return await self._claimed(conn, envelope, rollback.then)

    async def _claimed(
        self, conn: asyncpg.Connection, envelope: Envelope, work: Callable[[MessageContext], Awaitable[None]]
    ) -> tuple[bool, list[outbox.Pending]]:
        """In one transaction, claim the message in the inbox and run ``work``. Returns False when it was handled
        before, and the messages ``work`` wrote to the outbox, for the caller to publish after the commit."""
        with outbox.collecting() as written:
            async with conn.transaction():
                if not await inbox.claim(conn, self.name, envelope.messageId):
                    return False, []
                ctx = MessageContext(
                    envelope=envelope, conn=conn, consumer=self.name, faults=self.faults, queue=self.queue_name
                )
                await work(ctx)
        return True, written.messages()

    async def _committed(self, messages: Sequence[outbox.Pending]) -> None:
        if self.on_committed is not None and messages:
            await self.on_committed(messages)

    async def dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        """Copy the delivery to this queue's dead-letter queue with the reason, then ack it."""
        reason = escaped(reason)  # it may quote the sender's text (a field's name): it goes into a header
        kind = reason.split(":", 1)[0]
        log.error("dead-lettering message", extra={"fields": {"reason": reason, "queue": self.queue_name}})
        headers = dict(message.headers or {})
        headers.update(
            {
                HEADER_DEATH_REASON: reason[:1000],
                HEADER_DEATH_KIND: kind,
                "x-original-exchange": message.exchange or "",
                "x-original-routing-key": message.routing_key or "",
                # The copy goes out with this process's user-id: a replay restores the sender from here.
                HEADER_ORIGINAL_USER: message.user_id or "",
            }
        )
        await self.broker.publish(DEAD_LETTER_EXCHANGE, self.queue_name, copy_of(message, headers))
        if self.on_reject is not None:
            try:
                with outbox.collecting() as written:
                    async with self.pool.acquire() as conn, conn.transaction():
                        await self.on_reject(conn, message, reason)
                await self._committed(written.messages())  # the hook's outbox rows (order.rejected) go out now
            except Exception:
                log.exception("reject hook failed")
        metrics.DEAD_LETTERED.labels(self.queue_name, kind).inc()
        await message.ack()


async def _settle(action: Awaitable[None]) -> None:
    try:
        await action
    except Exception:  # channel gone: the broker requeues it anyway
        log.debug("could not settle delivery", exc_info=True)


def _bounded(message_type: str, routes: dict[str, Route]) -> str:
    return message_type if message_type in routes else "unknown"


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()[:10])
    return str(exc)[:500]
