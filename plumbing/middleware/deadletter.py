"""Poison to the dead-letter queue, with the reason; and the last resort for a delivery nothing settled.

A ``PoisonMessage`` raised anywhere inside (the decoding, or a handler) has its delivery copied to the
queue's dead-letter queue with the reason in its headers, then acknowledged; the queue's reject hook may
answer it (the orchestrator's order.rejected). When even that fails (the broker is away), or any other error
got this far, the delivery is handed back to the broker.
"""

import logging
from collections.abc import Awaitable, Callable

import asyncpg
from aio_pika.abc import AbstractIncomingMessage

from plumbing import metrics, outbox
from plumbing.broker import Broker
from plumbing.envelope import copy_of, escaped
from plumbing.errors import PoisonMessage
from plumbing.middleware.base import HANDLED, RAISE, Middleware, Verdict
from plumbing.middleware.delivery import Delivery
from plumbing.middleware.settle import CommitHook, settle
from plumbing.topology import DEAD_LETTER_EXCHANGE

log = logging.getLogger(__name__)

HEADER_DEATH_REASON = "x-death-reason"
HEADER_DEATH_KIND = "x-death-kind"
HEADER_ORIGINAL_USER = "x-original-user-id"

RejectHook = Callable[[asyncpg.Connection, AbstractIncomingMessage, str], Awaitable[None]]


class DeadLetter(Middleware[Delivery]):
    def __init__(
        self,
        *,
        queue: str,
        broker: Broker,
        pool: asyncpg.Pool,
        on_reject: RejectHook | None,
        on_committed: CommitHook | None,
    ) -> None:
        self.queue = queue
        self.broker = broker
        self.pool = pool
        self.on_reject = on_reject
        self.on_committed = on_committed

    async def on_error(self, delivery: Delivery, error: BaseException) -> Verdict:
        if not isinstance(error, Exception):
            return RAISE
        if isinstance(error, PoisonMessage):
            try:
                await self.dead_letter(delivery.message, error.reason)
                delivery.outcome = "dead_lettered"
                return HANDLED
            except Exception as failure:
                error = failure
        # Even dead-lettering failed (the broker is away), or nothing inside settled the delivery: hand it back.
        log.error("could not settle delivery; requeueing", exc_info=error)
        await settle(delivery.message.nack(requeue=True))
        delivery.outcome = "requeued"
        return HANDLED

    async def dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        """Copy the delivery to this queue's dead-letter queue with the reason, then ack it."""
        reason = escaped(reason)  # it may quote the sender's text (a field's name): it goes into a header
        kind = reason.split(":", 1)[0]
        log.error("dead-lettering message", extra={"fields": {"reason": reason, "queue": self.queue}})
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
        await self.broker.publish(DEAD_LETTER_EXCHANGE, self.queue, copy_of(message, headers))
        if self.on_reject is not None:
            try:
                with outbox.collecting() as written:
                    async with self.pool.acquire() as conn, conn.transaction():
                        await self.on_reject(conn, message, reason)
                messages = written.messages()  # the hook's outbox rows (order.rejected) go out now
                if self.on_committed is not None and messages:
                    await self.on_committed(messages)
            except Exception:
                log.exception("reject hook failed")
        metrics.DEAD_LETTERED.labels(self.queue, kind).inc()
        await message.ack()
