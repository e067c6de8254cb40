"""Transactional outbox, the writing side: messages are written with the state change, in its transaction.

``enqueue`` runs inside the caller's transaction. A writer that wraps its transaction in ``collecting()``
(the consumer does, for every delivery) gets back the messages it wrote and publishes them through its
process's relay (plumbing/relay.py) right after the commit. Such rows are written *held*: for
``HOLD_SECONDS`` the relay's sweep leaves them to their writer, so they are not published twice; if the
writer dies first, or the broker refuses them, the sweep publishes them once the hold has passed. Other
writers nudge their process's relay after the commit; a writer in another process (``orderctl redrive``)
calls ``announce`` in its transaction, whose commit sends the NOTIFY the relays listen for.
"""

import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from pydantic import BaseModel

from plumbing import tracing
from plumbing.envelope import Envelope

NOTIFY_CHANNEL = "orderflow_outbox"
#: How long the sweep leaves a collected row to its writer. Longer than a publish may take (the broker's
#: confirm timeout is 10 s) would avoid every second copy; shorter brings a dead writer's rows out sooner.
HOLD_SECONDS = 10.0


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
    #: A batch's messages, written in one INSERT by ``flush`` before its commit (each with its trace context).
    deferred: list[tuple[Outgoing, dict[str, str]]] | None = None
    _rows: dict[str, Pending] = field(default_factory=dict)  # every row offered to an INSERT, in order
    _inserted: set[str] = field(default_factory=set)  # the ids the INSERTs reported written

    def messages(self) -> list[Pending]:
        """The rows the transaction inserted (not those an INSERT skipped), in the order it wrote them."""
        return [row for message_id, row in self._rows.items() if message_id in self._inserted]


_collecting: ContextVar[Written | None] = ContextVar("orderflow_outbox_written", default=None)


@contextlib.contextmanager
def collecting(hold_seconds: float = HOLD_SECONDS, *, defer: bool = False) -> Iterator[Written]:
    """Collect the outbox rows written in this task until the block ends, and write them held: the caller
    publishes them itself after its commit (``OutboxRelay.publish_committed``). A transaction that rolls back
    must drop its ``Written``: start a new block for the next attempt. ``defer``: ``enqueue`` only notes its
    messages, and the writer inserts them all with ``flush`` before it commits (a batch's replies)."""
    written = Written(hold_seconds, deferred=[] if defer else None)
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


def columns(messages: Sequence[Outgoing], traces: Sequence[dict[str, str]] | None = None) -> list[Any]:
    """The parameters of ``insert_sql``: one array per column, in the messages' order (the relay's order), and
    the hold (NULL, no hold, unless the rows are being collected). Each row stores the trace context its
    message was written in: ``traces``, or the current one."""
    if traces is None:
        traces = [tracing.current_context()] * len(messages)
    envelopes = [m.envelope.model_copy(update={"trace": t}) for m, t in zip(messages, traces, strict=True)]
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
    """Add messages to the outbox inside the caller's open transaction, in one statement (noted, when the
    writer defers them, for its ``flush``)."""
    written = _collecting.get()
    if written is not None and written.deferred is not None:
        trace = tracing.current_context()
        written.deferred.extend((message, trace) for message in messages)
    elif messages:
        inserted([row[0] for row in await conn.fetch(insert_sql(), *columns(messages))])


async def flush(conn: asyncpg.Connection, written: Written) -> None:
    """Insert the messages ``written`` deferred so far, in one statement, in the writer's transaction (inside its
    ``collecting`` block, which notes the rows for the writer to publish)."""
    if not written.deferred:
        return
    deferred, written.deferred = written.deferred, []
    messages = [message for message, _ in deferred]
    traces = [trace for _, trace in deferred]
    rows = await conn.fetch(insert_sql(), *columns(messages, traces))
    written._inserted.update(row[0] for row in rows)


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


__all__ = [
    "HOLD_SECONDS",
    "NOTIFY_CHANNEL",
    "Outgoing",
    "Pending",
    "Written",
    "announce",
    "collecting",
    "columns",
    "enqueue",
    "enqueue_many",
    "flush",
    "insert_sql",
    "inserted",
]
