"""Outbox rows that cannot be published: why a publish failed, and setting such a row aside.

A row whose message cannot be built or encoded (an AMQP short string holds 255 bytes: a longer correlation
id makes pamqp raise before anything is sent), that the broker refuses for good (it closes the channel with
PRECONDITION_FAILED over that message), or whose publish failed ``max_attempts`` times in a row (unroutable,
nacked) would be retried for ever. The relay parks it instead: in the sweep's transaction the row moves to
``outbox_parked`` with its reason, and the rest of the batch is published. The broker being away (a lost
connection, a channel being reopened, a confirm timing out) says nothing about a row: it is never counted.
``orderctl outbox`` lists, retries or drops parked rows.
"""

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import aiormq
import asyncpg

from plumbing.backoff import OUTBOX_ROW_RETRY

#: outage: the broker is away, the row is not to blame (retried, not counted). unpublishable: the message
#: cannot be built or encoded. refused: the broker closed the channel over it. failed: anything else, counted.
Verdict = Literal["outage", "unpublishable", "refused", "failed"]

#: Encoding errors pamqp raises on a field it cannot encode (a short string over 255 bytes, a header value of
#: no AMQP type, a number out of range); raised before the frame is written, so the channel is unharmed.
_ENCODING_ERRORS = (TypeError, ValueError, struct.error, OverflowError)
#: The broker away or not connected yet: says nothing of the row (a lost connection, a channel being
#: reopened or closed with the connection, a confirm timing out, ``Broker.publish`` before ``connect``).
#: OSError covers AMQPConnectionError and TimeoutError.
_OUTAGE_ERRORS = (
    OSError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,  # its 403/404/405/406 subclasses are matched first
    AssertionError,
)
#: The broker answered this message, or closed the channel over its exchange: a failure to count.
_COUNTED_ERRORS = (
    aiormq.exceptions.DeliveryError,  # nacked, or returned unroutable (mandatory)
    aiormq.exceptions.ChannelAccessRefused,
    aiormq.exceptions.ChannelNotFoundEntity,
    aiormq.exceptions.ChannelLockedResource,
)
# How long a row whose publish failed waits before the next try is backoff.OUTBOX_ROW_RETRY: doubling from 2 s,
# at most a minute, so the default five tries span about half a minute before the row is parked.


class Unreadable(ValueError):
    """An outbox row that cannot become an AMQP message: its envelope does not parse, or aio-pika refuses it."""


def classify(exc: BaseException) -> Verdict:
    """What a publish's failure says about its row."""
    if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
        return "refused"
    if isinstance(exc, _COUNTED_ERRORS):
        return "failed"
    if isinstance(exc, _OUTAGE_ERRORS):
        return "outage"
    if isinstance(exc, _ENCODING_ERRORS):
        return "unpublishable"
    return "failed"


def retry_delay(attempts: int) -> float:
    """Seconds before the next publish of a row that has failed ``attempts`` times."""
    return OUTBOX_ROW_RETRY.delay(attempts)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"


@dataclass(frozen=True)
class Setback:
    """A row of a failed batch going back to the outbox: ``counted`` adds a failed attempt and delays it."""

    row: asyncpg.Record
    counted: bool


@dataclass(frozen=True)
class Parking:
    """A row being moved to ``outbox_parked``."""

    row: asyncpg.Record
    reason: str


_ROW = (
    "$1::bigint[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::bytea[], $7::timestamptz[], "
    "$8::timestamptz[], $9::int[], $10::timestamptz[]"
)
_COLUMNS = "id, message_id, exchange, routing_key, envelope, body, created_at, held_until, attempts, first_failed_at"
#: What the sweep's DELETE returns: every column, so a row can go back or be parked as it was.
RETURNING = f"RETURNING {_COLUMNS}"


def _arrays(rows: Sequence[asyncpg.Record]) -> list[list[object]]:
    return [[row[name] for row in rows] for name in _COLUMNS.split(", ")]


async def put_back(conn: asyncpg.Connection, setbacks: Sequence[Setback]) -> None:
    """Return rows the sweep deleted but could not publish, with their ids (the outbox's order); a counted
    failure adds an attempt, notes the first failure's time and holds the row for ``retry_delay``."""
    if not setbacks:
        return
    await conn.execute(
        f"""INSERT INTO outbox ({_COLUMNS})
            SELECT id, message_id, exchange, routing_key, envelope, body, created_at,
                   CASE WHEN counted THEN now() + make_interval(secs => delay) ELSE held_until END,
                   attempts + counted::int,
                   CASE WHEN counted THEN coalesce(first_failed_at, now()) ELSE first_failed_at END
            FROM unnest({_ROW}, $11::bool[], $12::float8[])
                AS r(id, message_id, exchange, routing_key, envelope, body, created_at, held_until, attempts,
                     first_failed_at, counted, delay)""",
        *_arrays([s.row for s in setbacks]),
        [s.counted for s in setbacks],
        [retry_delay(s.row["attempts"] + 1) for s in setbacks],
    )


async def park(conn: asyncpg.Connection, parkings: Sequence[Parking]) -> int:
    """Move rows the sweep deleted into ``outbox_parked``, the failure that parked them counted; returns how
    many rows are parked now."""
    await conn.execute(
        f"""INSERT INTO outbox_parked ({_COLUMNS}, reason)
            SELECT id, message_id, exchange, routing_key, envelope, body, created_at, held_until, attempts + 1,
                   coalesce(first_failed_at, now()), reason
            FROM unnest({_ROW}, $11::text[])
                AS r(id, message_id, exchange, routing_key, envelope, body, created_at, held_until, attempts,
                     first_failed_at, reason)""",
        *_arrays([p.row for p in parkings]),
        [p.reason for p in parkings],
    )
    return await parked_count(conn)


async def parked_count(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    return await conn.fetchval("SELECT count(*) FROM outbox_parked")


def exhausted_reason(row: asyncpg.Record, exc: BaseException) -> str:
    """Why a row is parked after ``max_attempts`` failed publishes."""
    since = f" since {row['first_failed_at'].isoformat()}" if row["first_failed_at"] else ""
    return f"failed: {row['attempts'] + 1} publishes in a row failed{since}; the last {describe(exc)}"
