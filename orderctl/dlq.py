"""Dead letters: list, show, replay and purge the ``<queue>.dlq`` queues (``orderctl dlq``).

AMQP has no peek. To read a dead letter without losing it, every message of the
dead-letter queue is taken unacknowledged with basic.get, and those not replayed
or purged are handed back with basic.nack(requeue=True) in the order they were
taken. A quorum queue serves returned messages before any other, in the order
they were returned; since every message was taken, none is left ahead of them,
so the queue's order is kept. Only an operator's concurrent ``dlq`` command
could interleave; consumers never read a dead-letter queue. basic.nack, not
basic.reject: RabbitMQ 4.3 counts a rejected return as a failed delivery.

A replay republishes a dead letter where it was first published, with
publisher confirms and as mandatory, keeping its message id so the consumer's
inbox still deduplicates it, and acknowledges the dead letter only after the
broker confirmed the copy: a crash in between leaves both, and the inbox
absorbs the duplicate. Before that, a ``check`` (orderctl/dlq_check.py: the
saga's state) may hold dead letters back: those stay in the dead-letter queue,
or are deleted with ``drop_skipped``.
"""

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from contracts.asyncapi import consumer_queues
from contracts.permissions import SENDER_CHECKED_EXCHANGES
from orderctl import output
from orderctl.errors import CtlError
from orderctl.output import Col
from orderctl.reach import broker
from plumbing.consumer import HEADER_DEATH_KIND, HEADER_DEATH_REASON, HEADER_ORIGINAL_USER
from plumbing.envelope import HEADER_CAUSATION, copy_of
from plumbing.topology import dq_name

DLQ_SUFFIX = dq_name("")
_ORIGINAL_EXCHANGE = "x-original-exchange"
_ORIGINAL_ROUTING_KEY = "x-original-routing-key"
#: Headers a dead-lettering added; a replayed message travels without them.
_DEATH_HEADERS = frozenset(
    {
        HEADER_DEATH_REASON,
        HEADER_DEATH_KIND,
        _ORIGINAL_EXCHANGE,
        _ORIGINAL_ROUTING_KEY,
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "x-delivery-count",
    }
)
_PUBLISH_TIMEOUT = 10.0


class DlqError(CtlError):
    """A dead-letter queue that does not exist, or a dead letter that cannot be replayed."""


@dataclass(frozen=True)
class DeadLetter:
    message_id: str | None
    type: str | None
    correlation_id: str | None
    reason: str
    kind: str
    #: Where the message was published before it died: (exchange, routing key); None if unknown.
    origin: tuple[str, str] | None
    body: bytes
    #: The message it answers or follows (a reply's command), from its x-causation-id header.
    causation_id: str | None = None

    def excerpt(self, size: int = 200) -> str:
        text = " ".join(self.body.decode("utf-8", errors="replace").split())
        return text if len(text) <= size else text[: size - 3] + "..."


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def read(message: AbstractIncomingMessage) -> DeadLetter:
    """A dead letter's metadata: our consumers' x-death-reason headers, or the broker's x-death."""
    headers = message.headers or {}
    deaths = headers.get("x-death") or []
    death = deaths[0] if deaths and isinstance(deaths[0], dict) else {}
    if HEADER_DEATH_REASON in headers:
        reason = _text(headers[HEADER_DEATH_REASON])
        kind = _text(headers.get(HEADER_DEATH_KIND) or reason.split(":", 1)[0])
    elif death:
        kind = _text(death.get("reason", "unknown"))
        reason = f"broker dead-lettered it from {_text(death.get('queue', '?'))} ({kind}, count {death.get('count')})"
    else:
        reason, kind = "unknown", "unknown"
    origin = None
    if _ORIGINAL_EXCHANGE in headers and headers.get(_ORIGINAL_ROUTING_KEY) is not None:
        origin = (_text(headers[_ORIGINAL_EXCHANGE]), _text(headers[_ORIGINAL_ROUTING_KEY]))
    elif death.get("routing-keys"):
        origin = (_text(death.get("exchange", "")), _text(death["routing-keys"][0]))
    return DeadLetter(
        message_id=message.message_id,
        type=message.type,
        correlation_id=message.correlation_id,
        reason=reason,
        kind=kind,
        origin=origin,
        body=message.body,
        causation_id=_text(headers[HEADER_CAUSATION]) if headers.get(HEADER_CAUSATION) else None,
    )


def queue_names() -> list[str]:
    """Every dead-letter queue Orderflow declares: one per consumer queue."""
    return [dq_name(queue) for queue in sorted(consumer_queues())]


def resolve(queue: str) -> str:
    """Accept a consumer queue's name or its dead-letter queue's."""
    return queue if queue.endswith(DLQ_SUFFIX) else dq_name(queue)


async def counts(url: str) -> dict[str, int | None]:
    """Ready messages per dead-letter queue (a passive declare); None for a queue not declared yet."""
    found: dict[str, int | None] = {}
    async with await broker(url, name="orderctl dlq") as connection:
        for name in queue_names():
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(name, passive=True)
                found[name] = queue.declaration_result.message_count
            except aio_pika.exceptions.ChannelNotFoundEntity:
                found[name] = None  # the 404 closed the channel
                continue
            await channel.close()
    return found


@contextlib.asynccontextmanager
async def _taken(url: str, queue: str) -> AsyncIterator[tuple[AbstractConnection, list[AbstractIncomingMessage]]]:
    """Every message of ``queue``, unacknowledged; those left unsettled are handed back in order."""
    async with await broker(url, name="orderctl dlq") as connection:
        channel = await connection.channel()
        try:
            source = await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity as exc:
            raise DlqError(f"no queue named {queue!r}") from exc
        messages: list[AbstractIncomingMessage] = []
        try:
            while (message := await source.get(no_ack=False, fail=False)) is not None:
                messages.append(message)
            yield connection, messages
        finally:
            for message in messages:
                if not message.processed:
                    await message.nack(requeue=True)
            await channel.close()


async def show(url: str, queue: str, *, limit: int) -> tuple[int, list[DeadLetter]]:
    """How many dead letters ``queue`` holds, and the first ``limit`` of them; none is removed."""
    async with _taken(url, resolve(queue)) as (_, messages):
        return len(messages), [read(m) for m in messages[:limit]]


#: Which of the chosen dead letters may be replayed: for each, (replay?, why).
Check = Callable[[list[DeadLetter]], Awaitable[list[tuple[bool, str]]]]


@dataclass
class Replay:
    """What a replay did: the dead letters republished, and those held back with the reason."""

    replayed: list[DeadLetter] = field(default_factory=list)
    skipped: list[tuple[DeadLetter, str]] = field(default_factory=list)
    dropped: bool = False  # the skipped ones were deleted, not left in the dead-letter queue


async def replay(
    url: str, queue: str, message_ids: set[str] | None, *, check: Check | None = None, drop_skipped: bool = False
) -> Replay:
    """Republish the chosen dead letters (all when ``message_ids`` is None) to where they came from, those
    ``check`` allows (all without a check); the others stay, or are deleted with ``drop_skipped``.

    Raises DlqError, before anything is replayed, if a dead letter to replay names no origin."""
    name = resolve(queue)
    async with _taken(url, name) as (connection, messages):
        chosen = [m for m in messages if message_ids is None or m.message_id in message_ids]
        letters = [read(m) for m in chosen]
        verdicts = await check(letters) if check is not None and letters else [(True, "")] * len(letters)
        result = Replay(dropped=drop_skipped)
        kept: list[tuple[AbstractIncomingMessage, DeadLetter]] = []
        held: list[AbstractIncomingMessage] = []
        for message, letter, (allowed, why) in zip(chosen, letters, verdicts, strict=True):
            if allowed:
                kept.append((message, letter))
            else:
                held.append(message)
                result.skipped.append((letter, why))
        unknown = [letter.message_id for _, letter in kept if letter.origin is None]
        if unknown:
            raise DlqError(f"no original exchange or routing key on {', '.join(map(str, unknown))}")
        if drop_skipped:
            for message in held:
                await message.ack()
        publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
        for message, letter in kept:
            assert letter.origin is not None
            exchange, routing_key = letter.origin
            target = (
                publisher.default_exchange if exchange == "" else await publisher.get_exchange(exchange, ensure=False)
            )
            headers = {
                k: v for k, v in (message.headers or {}).items() if k not in _DEATH_HEADERS | {HEADER_ORIGINAL_USER}
            }
            headers["x-replayed-from"] = name
            replayed = copy_of(message, headers)
            if exchange in SENDER_CHECKED_EXCHANGES:
                # The receiver checks who sent it: the replay keeps the original sender, which the broker allows
                # only to that user or one with the impersonator tag (docs/security.md, "Broker permissions").
                replayed.user_id = original_sender(message)
            await target.publish(replayed, routing_key, mandatory=True, timeout=_PUBLISH_TIMEOUT)
            await message.ack()
            result.replayed.append(letter)
        await publisher.close()
        return result


def original_sender(message: AbstractIncomingMessage) -> str | None:
    """Who first sent a dead letter: the broker dead-letters a message as it is (its user-id kept); a consumer
    publishes its copy with its own user-id and the sender's in a header."""
    headers = message.headers or {}
    if HEADER_ORIGINAL_USER in headers:
        return _text(headers[HEADER_ORIGINAL_USER]) or None
    return message.user_id


async def purge(url: str, queue: str, message_ids: set[str] | None) -> int:
    """Delete the chosen dead letters (all when ``message_ids`` is None); returns how many."""
    name = resolve(queue)
    if message_ids is None:
        async with await broker(url, name="orderctl dlq") as connection:
            channel = await connection.channel()
            try:
                source = await channel.declare_queue(name, passive=True)
            except aio_pika.exceptions.ChannelNotFoundEntity as exc:
                raise DlqError(f"no queue named {name!r}") from exc
            result = await source.purge()
            return result.message_count or 0
    async with _taken(url, name) as (_, messages):
        chosen = [m for m in messages if m.message_id in message_ids]
        for message in chosen:
            await message.ack()
        return len(chosen)


def print_counts(found: dict[str, int | None]) -> None:
    output.table(
        [Col("QUEUE", key=True), Col("MESSAGES")],
        [[name, "not declared" if n is None else n] for name, n in found.items()],
    )


def as_json(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter for ``dlq show --json``: its metadata and its body as text."""
    return {
        "messageId": letter.message_id,
        "type": letter.type,
        "correlationId": letter.correlation_id,
        "causationId": letter.causation_id,
        "kind": letter.kind,
        "reason": letter.reason,
        "origin": {"exchange": letter.origin[0], "routingKey": letter.origin[1]} if letter.origin else None,
        "body": letter.body.decode("utf-8", errors="replace"),
    }


def render_letters(letters: list[DeadLetter]) -> str:
    lines = []
    for i, letter in enumerate(letters, 1):
        origin = " / ".join(letter.origin) if letter.origin else "unknown"
        lines += [
            f"#{i} message {letter.message_id or '-'}",
            f"   type    {letter.type or '-'}  correlation {letter.correlation_id or '-'}",
            f"   kind    {letter.kind}",
            f"   reason  {letter.reason}",
            f"   origin  {origin}",
            f"   body    {letter.excerpt()}",
        ]
    return "\n".join(lines)
