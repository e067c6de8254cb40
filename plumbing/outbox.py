"""Transactional outbox: write messages with the state change, publish them after commit.

``enqueue`` runs inside the caller's transaction. The ``OutboxRelay`` of the
writing process is nudged after the commit (the consumer, the timer loop and the
webhook handler do it); a writer in another process (``orderctl redrive``) calls
``announce`` in its transaction, whose commit sends the NOTIFY the relays listen
for. The relay deletes a batch of pending rows, publishes them in id order
with pipelined publisher confirms, and commits the deletion once the broker
confirmed them all. Rows are locked with SKIP LOCKED, so relays of several
replicas share the work without publishing a row twice.
"""

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from pydantic import BaseModel

from plumbing import metrics, tracing
from plumbing.broker import Broker
from plumbing.envelope import Envelope

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "orderflow_outbox"
_BATCH = 200
# A missed NOTIFY (connection lost between commit and LISTEN) is caught up within this.
_SAFETY_WAKE_SECONDS = 5.0


@dataclass(frozen=True)
class Outgoing:
    """One message for the outbox."""

    exchange: str
    routing_key: str
    envelope: Envelope
    payload: BaseModel


def insert_sql(first: int = 1, *, only_if: str = "true") -> str:
    """The outbox INSERT, reading its rows from five column arrays at parameters ``$first`` to ``$first + 4``
    (``columns`` makes them), when the SQL condition ``only_if`` holds. A caller that writes its state change
    in one statement puts this in a data-modifying WITH clause of that statement, so the state and its
    messages cost one round trip."""
    p = [f"${first + i}" for i in range(5)]
    return f"""INSERT INTO outbox (message_id, exchange, routing_key, envelope, body)
           SELECT * FROM unnest({p[0]}::text[], {p[1]}::text[], {p[2]}::text[], {p[3]}::jsonb[], {p[4]}::bytea[])
           WHERE {only_if}
           ON CONFLICT (message_id) DO NOTHING"""


def columns(messages: Sequence[Outgoing]) -> list[list[Any]]:
    """The parameters of ``insert_sql``: one array per column, in the messages' order (the relay's order)."""
    trace = tracing.current_context()
    envelopes = [m.envelope.model_copy(update={"trace": trace}) for m in messages]
    return [
        [e.messageId for e in envelopes],
        [m.exchange for m in messages],
        [m.routing_key for m in messages],
        [e.model_dump(mode="json") for e in envelopes],
        [m.payload.model_dump_json(by_alias=True).encode() for m in messages],
    ]


async def enqueue_many(conn: asyncpg.Connection, messages: Sequence[Outgoing]) -> None:
    """Add messages to the outbox inside the caller's open transaction, in one statement."""
    if messages:
        await conn.execute(insert_sql(), *columns(messages))


async def enqueue(
    conn: asyncpg.Connection,
    *,
    exchange: str,
    routing_key: str,
    envelope: Envelope,
    payload: BaseModel,
) -> None:
    """Add one message to the outbox inside the caller's open transaction."""
    await enqueue_many(conn, [Outgoing(exchange, routing_key, envelope, payload)])


async def announce(conn: asyncpg.Connection) -> None:
    """Wake the relays when this transaction commits: for a writer whose own process runs no relay to nudge.
    (A NOTIFY per message would serialize every commit on PostgreSQL's notification queue lock.)"""
    await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)


class OutboxRelay:
    """Publishes the outbox of one database."""

    def __init__(self, pool: asyncpg.Pool, broker: Broker, *, service: str, duplicate: bool = False) -> None:
        self.pool = pool
        self.broker = broker
        self.service = service
        self.copies = 2 if duplicate else 1
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None

    def nudge(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self._listen()
                while True:
                    # Clear before reading: a commit nudging while this batch is out sets it again, so no row
                    # waits for the safety wake, and a batch that was not full needs no second, empty read.
                    self._wake.clear()
                    if await self.publish_pending() == _BATCH:
                        continue
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), _SAFETY_WAKE_SECONDS)
                    await self._check_listener()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("outbox relay interrupted; retrying", exc_info=True)
                await self._close_listener()
                await asyncio.sleep(1.0)

    async def publish_pending(self) -> int:
        """Publish one batch; returns how many rows were published."""
        async with self.pool.acquire() as conn, conn.transaction():
            # The batch is deleted as it is read, and the deletion commits only once the broker confirmed every
            # row: the rows stay locked meanwhile (other relays skip them), and a failure rolls the deletion back.
            rows = await conn.fetch(
                """DELETE FROM outbox WHERE id IN (
                       SELECT id FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
                   RETURNING id, exchange, routing_key, envelope, body""",
                _BATCH,
            )
            if not rows:
                await self.observe_backlog(conn)
                return 0
            rows.sort(key=lambda row: row["id"])  # RETURNING keeps no order; the outbox's order is the ids'
            # Confirms are pipelined: every row of the batch is published before the first confirm is awaited
            # (the channel keeps their order). If one fails, the transaction rolls back and the batch is
            # published again: the inboxes absorb the copies that had been confirmed.
            confirms = []
            for row in rows:
                envelope = Envelope.model_validate(row["envelope"])
                with tracing.restored(envelope.trace):
                    for _ in range(self.copies):
                        message = envelope.to_amqp(bytes(row["body"]))
                        confirms.append(
                            asyncio.ensure_future(self.broker.publish(row["exchange"], row["routing_key"], message))
                        )
            results = await asyncio.gather(*confirms, return_exceptions=True)
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if failed is not None:
                raise failed
        # The backlog gauges are read when the outbox is found empty and at every scrape, not per batch.
        return len(rows)

    async def observe_backlog(self, conn: asyncpg.Connection) -> None:
        count, age = await conn.fetchrow(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM outbox"
        )
        metrics.OUTBOX_BACKLOG.labels(self.service).set(count)
        metrics.OUTBOX_AGE.labels(self.service).set(float(age))

    async def _listen(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        conn = await self.pool.acquire()
        await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        self._listener = conn

    async def _check_listener(self) -> None:
        if self._listener is None or self._listener.is_closed():
            await self._close_listener()
            await self._listen()

    async def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.remove_listener(NOTIFY_CHANNEL, self._on_notify)
            with contextlib.suppress(Exception):
                await self.pool.release(self._listener)
            self._listener = None

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def close(self) -> None:
        await self._close_listener()


__all__ = ["OutboxRelay", "Outgoing", "announce", "columns", "enqueue", "enqueue_many", "insert_sql"]
