"""Commands carry a deadline: a service refuses one handled after it (Command.Expired), with no effect, the
failure reply committed with the inbox row; one within its deadline, or with none, is handled as before."""

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from harness import migrated_pool
from prometheus_client import REGISTRY
from pydantic import BaseModel

from plumbing.commands import command_route
from plumbing.consumer import MessageContext
from plumbing.envelope import HEADER_DEADLINE, Envelope
from plumbing.errors import COMMAND_EXPIRED
from plumbing.middleware.deadline import Deadline
from plumbing.middleware.delivery import Delivery, Unit
from plumbing.middleware.inbox import Transaction
from plumbing.middleware.replies import Replies
from plumbing.middleware.stack import Stack
from plumbing.migrations import PLUMBING_MIGRATIONS, MigrationSet

pytestmark = pytest.mark.integration

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
QUEUE = "svc.commands"


class Ping(BaseModel):
    orderId: str


class Pong(BaseModel):
    orderId: str


@dataclass
class Message:
    """What aio_pika's IncomingMessage offers the envelope: the same attribute names."""

    body: bytes
    headers: dict[str, Any]
    message_id: str | None = "m-1"
    correlation_id: str | None = "ORDER#1"
    type: str | None = "Ping"
    timestamp: datetime | None = None
    reply_to: str | None = "orchestrator"


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool("of_deadline", [MigrationSet("plumbing", PLUMBING_MIGRATIONS)]) as pool:
        yield pool


def expired_count() -> float:
    return REGISTRY.get_sample_value("orderflow_commands_expired_total", {"queue": QUEUE, "type": "Ping"}) or 0.0


async def handle(pool: asyncpg.Pool, deadline: datetime | None) -> tuple[list[str], list[tuple[str, dict]]]:
    """Handle one Ping through a consumer's unit of work (its transaction with the inbox claim, then the
    deadline and the replies) at NOW; returns the handler's calls and the replies written to the outbox, as
    (type, body)."""
    calls: list[str] = []

    async def pong(ctx: MessageContext, ping: Ping) -> Pong:
        calls.append(ping.orderId)
        return Pong(orderId=ping.orderId)

    stack = Stack(
        receive=[],
        unit=[Transaction(pool=pool, consumer="svc", queue=QUEUE)],
        handle=[Deadline(clock=lambda: NOW), Replies()],
    )
    envelope = Envelope(type="Ping", correlationId="ORDER#1", replyTo="orchestrator", deadline=deadline)
    delivery = Delivery(message=Message(body=b"{}", headers=envelope.headers()))  # read by no middleware here
    delivery.envelope, delivery.route, delivery.payload = envelope, command_route(Ping, pong), Ping(orderId="ORDER#1")
    await stack.unit.run(Unit([delivery]))
    assert delivery.outcome == "ok"
    rows = await pool.fetch(
        "SELECT envelope, body FROM outbox WHERE envelope->>'causationId' = $1 ORDER BY id", envelope.messageId
    )
    assert await pool.fetchval("SELECT count(*) FROM inbox WHERE message_id = $1", envelope.messageId) == 1
    return calls, [(row["envelope"]["type"], json.loads(row["body"])) for row in rows]


async def test_a_command_past_its_deadline_is_refused_unhandled(pool: asyncpg.Pool) -> None:
    before = expired_count()
    calls, replies = await handle(pool, NOW - timedelta(seconds=5))
    assert calls == []
    assert len(replies) == 1
    reply_type, body = replies[0]
    assert reply_type == "CommandFailed" and body["Error"] == COMMAND_EXPIRED == "Command.Expired"
    assert "passed 5.000 s ago" in body["Cause"]
    assert expired_count() == before + 1


@pytest.mark.parametrize("deadline", [NOW + timedelta(seconds=1), None], ids=["within", "none"])
async def test_a_command_within_its_deadline_or_without_one_is_handled(
    pool: asyncpg.Pool, deadline: datetime | None
) -> None:
    before = expired_count()
    calls, replies = await handle(pool, deadline)
    assert calls == ["ORDER#1"]
    assert replies == [("Pong", {"orderId": "ORDER#1"})]
    assert expired_count() == before


def test_the_deadline_rides_in_the_x_deadline_header_and_is_utc() -> None:
    deadline = datetime(2024, 5, 1, 12, 0, 30, 250000, tzinfo=UTC)
    envelope = Envelope(type="Ping", correlationId="ORDER#1", replyTo="orchestrator", deadline=deadline)
    message = envelope.to_amqp(b"{}")
    assert message.headers[HEADER_DEADLINE] == "2024-05-01T12:00:30.250000+00:00"
    back = Envelope.from_amqp(Message(body=b"{}", headers=dict(message.headers), message_id=envelope.messageId))
    assert back.deadline == deadline
    # From an outside client: bytes, and no zone (read as UTC).
    naive = Envelope.from_amqp(Message(body=b"{}", headers={HEADER_DEADLINE: b"2024-05-01T12:00:30"}))
    assert naive.deadline == datetime(2024, 5, 1, 12, 0, 30, tzinfo=UTC)
    assert HEADER_DEADLINE not in Envelope(type="Ping", correlationId=str(uuid.uuid4())).headers()
