"""Transactional outbox: write messages with the state change, publish them after commit.

``enqueue`` runs inside the caller's transaction. A writer that wraps its transaction in ``collecting()``
(the consumer does, for every delivery) gets back the messages it wrote and publishes them through its
process's ``OutboxRelay`` right after the commit, waiting for the confirms; the relay deletes their rows
afterwards, in batches. Such rows are written *held*: for ``HOLD_SECONDS`` the relay's sweep leaves them
to their writer, so they are not published twice; if the writer dies first, or the broker refuses them, the
sweep publishes them once the hold has passed.

Other writers nudge the relay after the commit (the timer loop and the webhook handler do); a writer in
another process (``orderctl redrive``) calls ``announce`` in its transaction, whose commit sends the NOTIFY
the relays listen for. A sweep deletes a batch of rows that are not held, publishes them in id order with
pipelined publisher confirms, and commits the deletion once the broker confirmed them all. Rows are locked
with SKIP LOCKED, so relays of several replicas share the work without publishing a row twice.
"""

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
#: How long the sweep leaves a collected row to its writer. Longer than a publish may take (the broker's
#: confirm timeout is 10 s) would avoid every second copy; shorter brings a dead writer's rows out sooner.
HOLD_SECONDS = 10.0
#: Rows published after their commit are deleted this long after the first of them was confirmed: one
#: DELETE, and one commit, for every row confirmed meanwhile, instead of one per message.
_TIDY_SECONDS = 0.1
_END_OF_TIME = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Outgoing:
    """One message for the outbox."""

    exchange: str
    routing_key: str
    envelope: Envelope
    payload: BaseModel


@dataclass(frozen=True)
class Pending:
    """One outbox row as the relay publishes it: the envelope carries the writer's trace context."""

    exchange: str
    routing_key: str
    envelope: Envelope
    body: bytes


@dataclass
class Written:
    """The rows a transaction wrote under ``collecting()``, for its writer to publish after the commit."""

    hold_seconds: float
    _rows: dict[str, Pending] = field(default_factory=dict)  # every row offered to an INSERT, in order
    _inserted: set[str] = field(default_factory=set)  # the ids the INSERTs reported written

    def messages(self) -> list[Pending]:
        """The rows the transaction inserted (not those an INSERT skipped), in the order it wrote them."""
        return [row for message_id, row in self._rows.items() if message_id in self._inserted]


_collecting: ContextVar[Written | None] = ContextVar("orderflow_outbox_written", default=None)


@contextlib.contextmanager
def collecting(hold_seconds: float = HOLD_SECONDS) -> Iterator[Written]:
    """Collect the outbox rows written in this task until the block ends, and write them held: the caller
    publishes them itself after its commit (``OutboxRelay.publish_committed``). A transaction that rolls back
    must drop its ``Written``: start a new block for the next attempt."""
    written = Written(hold_seconds)
    token = _collecting.set(written)
    try:
        yield written
    finally:
        _collecting.reset(token)


def insert_sql(first: int = 1, *, only_if: str = "true") -> str:
    """The outbox INSERT, reading its rows from five column arrays and a hold at parameters ``$first`` to
    ``$first + 5`` (``columns`` makes them), when the SQL condition ``only_if`` holds; it returns the message
    id of each row it wrote, which the writer passes to ``inserted``. A caller that writes its state change in
    one statement puts this in a data-modifying WITH clause of that statement, so the state and its messages
    cost one round trip."""
    p = [f"${first + i}" for i in range(6)]
    return f"""INSERT INTO outbox (message_id, exchange, routing_key, envelope, body, held_until)
           SELECT *, now() + make_interval(secs => {p[5]}::float8)
           FROM unnest({p[0]}::text[], {p[1]}::text[], {p[2]}::text[], {p[3]}::jsonb[], {p[4]}::bytea[])
           WHERE {only_if}
           ON CONFLICT (message_id) DO NOTHING
           RETURNING message_id"""


def columns(messages: Sequence[Outgoing]) -> list[Any]:
    """The parameters of ``insert_sql``: one array per column, in the messages' order (the relay's order), and
    the hold (NULL, no hold, unless the rows are being collected)."""
    trace = tracing.current_context()
    envelopes = [m.envelope.model_copy(update={"trace": trace}) for m in messages]
    bodies = [m.payload.model_dump_json(by_alias=True).encode() for m in messages]
    written = _collecting.get()
    if written is not None:
        for message, envelope, body in zip(messages, envelopes, bodies, strict=True):
            written._rows[envelope.messageId] = Pending(message.exchange, message.routing_key, envelope, body)
    return [
        [e.messageId for e in envelopes],
        [m.exchange for m in messages],
        [m.routing_key for m in messages],
        [e.model_dump(mode="json") for e in envelopes],
        bodies,
        written.hold_seconds if written is not None else None,
    ]


def inserted(message_ids: Sequence[str]) -> None:
    """Report the ids an ``insert_sql`` statement returned, so the collecting writer publishes those rows."""
    written = _collecting.get()
    if written is not None:
        written._inserted.update(message_ids)


async def enqueue_many(conn: asyncpg.Connection, messages: Sequence[Outgoing]) -> None:
    """Add messages to the outbox inside the caller's open transaction, in one statement."""
    if messages:
        inserted([row[0] for row in await conn.fetch(insert_sql(), *columns(messages))])


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
    """Publishes the outbox of one database: the rows its process hands over right after their commit, and,
    in sweeps, every row nobody holds."""

    def __init__(self, pool: asyncpg.Pool, broker: Broker, *, service: str, duplicate: bool = False) -> None:
        self.pool = pool
        self.broker = broker
        self.service = service
        self.copies = 2 if duplicate else 1
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._published: list[str] = []  # confirmed, their rows not yet deleted
        self._tidy = asyncio.Event()
        self._started_at: datetime | None = None

    async def mark_started(self) -> None:
        """Note the database's time before this process writes anything: the first sweep then takes the rows
        held before it, which no live writer of this process will publish."""
        self._started_at = await self.pool.fetchval("SELECT now()")

    def nudge(self) -> None:
        """Sweep soon: a transaction that did not collect its rows committed some."""
        self._wake.set()

    async def publish_committed(self, messages: Sequence[Pending]) -> None:
        """Publish rows their writer collected and committed, in their order, and wait for the confirms; the
        rows are deleted soon after. If the broker refuses them, they stay, and a sweep publishes them after
        the hold: the failure is logged, not raised, since the writer's transaction is committed."""
        try:
            await self._publish(messages)
        except Exception:
            log.warning("publishing after commit failed; the relay sweeps the rows after the hold", exc_info=True)
            return
        metrics.OUTBOX_PUBLISHED.labels(self.service, "after_commit").inc(len(messages))
        self._published.extend(m.envelope.messageId for m in messages)
        self._tidy.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._sweep_loop())
            tasks.create_task(self._tidy_loop())

    async def _sweep_loop(self) -> None:
        # The first sweep also takes rows held since before this process started: a crashed run's are
        # published at once instead of after their hold (a live replica's are published twice, and absorbed).
        held_before = self._started_at
        while True:
            try:
                await self._listen()
                while True:
                    # Clear before reading: a commit nudging while this batch is out sets it again, so no row
                    # waits for the safety wake, and a batch that was not full needs no second, empty read.
                    self._wake.clear()
                    if await self.publish_pending(held_before=held_before) == _BATCH:
                        continue
                    held_before = None
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), _SAFETY_WAKE_SECONDS)
                    await self._check_listener()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("outbox relay interrupted; retrying", exc_info=True)
                await self._close_listener()
                await asyncio.sleep(1.0)

    async def _tidy_loop(self) -> None:
        """Delete the rows published after their commit, gathered over ``_TIDY_SECONDS`` into one statement."""
        while True:
            await self._tidy.wait()
            if len(self._published) < _BATCH:
                await asyncio.sleep(_TIDY_SECONDS)
            try:
                await self.tidy()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("deleting published outbox rows failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)
                self._tidy.set()

    async def tidy(self) -> None:
        """Delete the rows confirmed so far (autocommit: a row deleted twice, or never, only costs a copy)."""
        self._tidy.clear()
        done, self._published = self._published, []
        if not done:
            return
        try:
            await self.pool.execute("DELETE FROM outbox WHERE message_id = ANY($1::text[])", done)
        except BaseException:
            self._published[:0] = done
            raise

    async def publish_pending(self, *, held_before: datetime | None = None) -> int:
        """Publish one batch of rows nobody holds, and of rows written before ``held_before`` even if held;
        returns how many."""
        async with self.pool.acquire() as conn, conn.transaction():
            # The batch is deleted as it is read, and the deletion commits only once the broker confirmed every
            # row: the rows stay locked meanwhile (other relays skip them), and a failure rolls the deletion back.
            rows = await conn.fetch(
                """DELETE FROM outbox WHERE id IN (
                       SELECT id FROM outbox WHERE held_until IS NULL OR held_until < now() OR created_at < $2
                       ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
                   RETURNING id, exchange, routing_key, envelope, body""",
                _BATCH,
                held_before,
            )
            if not rows:
                await self.observe_backlog(conn)
                return 0
            rows.sort(key=lambda row: row["id"])  # RETURNING keeps no order; the outbox's order is the ids'
            await self._publish(
                [
                    Pending(row["exchange"], row["routing_key"], Envelope.model_validate(row["envelope"]), row["body"])
                    for row in rows
                ]
            )
        metrics.OUTBOX_PUBLISHED.labels(self.service, "sweep").inc(len(rows))
        # The backlog gauges are read when the outbox is found empty and at every scrape, not per batch.
        return len(rows)

    async def _publish(self, messages: Sequence[Pending]) -> None:
        """Publish in order and wait for every confirm; raises the first failure."""
        # Confirms are pipelined: every message is published before the first confirm is awaited (the channel
        # keeps their order). If one fails, the caller's rows stay and are published again: the inboxes absorb
        # the copies that had been confirmed.
        confirms = []
        for pending in messages:
            with tracing.restored(pending.envelope.trace):
                for _ in range(self.copies):
                    message = pending.envelope.to_amqp(bytes(pending.body))
                    confirms.append(
                        asyncio.ensure_future(self.broker.publish(pending.exchange, pending.routing_key, message))
                    )
        results = await asyncio.gather(*confirms, return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed

    async def flush(self) -> None:
        """At shutdown, once the consumers stopped: delete the rows published after their commit, then publish
        every row left, held ones included (a row still held is this process's own, or a copy the inboxes
        absorb)."""
        await self.tidy()
        while await self.publish_pending(held_before=_END_OF_TIME):
            pass

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


__all__ = [
    "HOLD_SECONDS",
    "OutboxRelay",
    "Outgoing",
    "Pending",
    "Written",
    "announce",
    "collecting",
    "columns",
    "enqueue",
    "enqueue_many",
    "insert_sql",
    "inserted",
]
