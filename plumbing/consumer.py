"""Consume a queue: validate at the edge, handle once, commit, then acknowledge.

The consumer takes deliveries and runs each through its middlewares (plumbing/middleware/stack.py holds
them, in order, with why): a delivery is decoded and validated, and anything unreadable is a poison message,
dead-lettered at once with the reason in its headers. A readable message is handled in one PostgreSQL
transaction (with BATCH_MAX above 1, together with the other deliveries waiting: plumbing/middleware/batch.py)
that also claims its id in the inbox and writes every outgoing message to the outbox; right
after that commit the consumer publishes those messages through its process's outbox relay, and
acknowledges the delivery once the broker confirmed them (so a slow broker slows the consumer down instead
of piling publishes up in memory). A database that is unreachable holds the delivery and retries with
backoff; a handler that crashes has its delivery requeued, and after the queue's delivery limit the broker
dead-letters it.

The names handlers and services use (``MessageContext``, ``Route``, ``Rollback``, the dead-letter headers)
live with the middlewares and are handed on from here.
"""

import asyncio
import logging
from collections.abc import Sequence

import asyncpg
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from plumbing import tracing
from plumbing.broker import Broker
from plumbing.faults import FaultPlan
from plumbing.logs import log_context
from plumbing.middleware import acks
from plumbing.middleware.base import Middleware
from plumbing.middleware.deadletter import HEADER_DEATH_KIND, HEADER_DEATH_REASON, HEADER_ORIGINAL_USER, RejectHook
from plumbing.middleware.delivery import Delivery, Handler, MessageContext, Rollback, Route, Unit
from plumbing.middleware.settle import CommitHook
from plumbing.middleware.stack import build_stack

log = logging.getLogger(__name__)

__all__ = [
    "HEADER_DEATH_KIND",
    "HEADER_DEATH_REASON",
    "HEADER_ORIGINAL_USER",
    "CommitHook",
    "Consumer",
    "Handler",
    "MessageContext",
    "RejectHook",
    "Rollback",
    "Route",
    "Unit",
]


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
        batch_max: int = 1,
        batch_units: int = 1,
        in_transaction: Sequence[Middleware[Unit]] = (),
    ) -> None:
        self.name = name
        self.queue_name = queue
        self.routes = routes
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self.stack = build_stack(
            name=name,
            queue=queue,
            routes=routes,
            pool=pool,
            broker=broker,
            max_message_bytes=max_message_bytes,
            default_type=default_type,
            on_reject=on_reject,
            on_committed=on_committed,
            faults=faults,
            stopping=lambda: self._stopping,
            batch_max=batch_max,
            batch_units=batch_units,
            in_transaction=in_transaction,
        )
        self._batching = batch_max > 1
        self._traced = self._batching and tracing.enabled()

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
        delivery = Delivery(message)
        if self._traced:
            delivery.trace_context = tracing.captured()
        try:
            await self.stack.receive.run(delivery)
        finally:
            if self._batching:
                acks.finished(message)
            self._in_flight.discard(task)
            if not self._in_flight:
                self._idle.set()
