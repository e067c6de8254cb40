"""Helpers of the poison, outage and shutdown tests: what to throw at each consumer queue, taps that see
where each message ended, a private stack for tests that stop servers or processes, and server control.

Nothing here stands in for our code: messages go through the real broker to the real processes, and
outcomes are read where the processes put them (dead-letter exchange, replies, events, inbox rows).
"""

import asyncio
import contextlib
import http.client
import json
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from harness import (
    ADMIN_DSN,
    Stack,
    create_api_token,
    create_databases,
    db,
    drop_databases,
    eventually,
    fresh_vhost,
    http_json,
    order_body,
    rabbitmqctl,
    settings_for,
    stack_children,
    wait_ready,
)

from contracts.asyncapi import consumer_queues
from orderctl.config import SERVICES
from orderctl.supervisor import Supervisor
from plumbing.settings import ProcessSettings

DEAD_LETTER_EXCHANGE = "orderflow.dlx"
#: DELIVERY_LIMIT as harness.stack_children sets it for every process.
DELIVERY_LIMIT = 5
#: The processes' defaults, which the test stacks keep.
MAX_MESSAGE_BYTES: int = ProcessSettings.model_fields["max_message_bytes"].default
PREFETCH: int = ProcessSettings.model_fields["prefetch"].default


# -- what each consumer queue accepts --------------------------------------------------------------
def _priced(sku: str) -> dict[str, Any]:
    return {"productId": sku, "name": "Poison mug", "quantity": 1, "unitPrice": 2.5, "lineTotal": 2.5}


CUSTOMER = {"email": "ada@example.com", "phone": None}


@dataclass(frozen=True)
class QueueTarget:
    """A consumer queue, a routing key its binding matches, and a valid message of a type it handles."""

    queue: str
    exchange: str
    routing_key: str
    message_type: str
    #: Whether the payload carries items or lines that must not be empty (min_length=1).
    non_empty_list: str | None
    #: Where a quantity lives (every "quantity" key), or else the money field a negative value breaks.
    has_quantity: bool

    @property
    def service(self) -> str:
        """The process consuming this queue (the queue name's first part)."""
        return self.queue.split(".", 1)[0]

    @property
    def is_command(self) -> bool:
        return self.exchange == "orderflow.commands"

    def payload(self, order_id: str, sku: str = "sku-poison-absent") -> dict[str, Any]:
        """A payload valid for ``message_type``: what the poison cases then break one way each."""
        money = {"amount": 2.5, "currency": "usd"}
        return {
            "OrderRequested": lambda: {**order_body(order_id, [(sku, 1)]), "currency": "usd"},
            "InventoryChecked": lambda: {"lines": [_priced(sku)], **money},
            "CheckInventory": lambda: {"orderId": order_id, "items": [{"productId": sku, "quantity": 1}]},
            "ProcessPayment": lambda: {
                "orderId": order_id,
                **money,
                "paymentMethodId": "pm_card_visa",
                "idempotencyKey": f"{order_id}-payment",
            },
            "CreateOrderRecord": lambda: {
                "orderId": order_id,
                "customer": CUSTOMER,
                "lines": [_priced(sku)],
                **money,
                "paymentIntentId": "pi_poison",
            },
            "NotifyCustomer": lambda: {"orderId": order_id, "customer": CUSTOMER, "lines": [_priced(sku)], **money},
            "OrderOutcome": lambda: {"orderId": order_id, "status": "CONFIRMED", "lines": [_priced(sku)], **money},
            # No amount: "amount -1" is then an unknown field, a schema error naming it all the same.
            "CancelOrder": lambda: {"orderId": order_id, "reason": "poison test"},
        }[self.message_type]()


TARGETS: dict[str, QueueTarget] = {
    t.queue: t
    for t in [
        QueueTarget("orchestrator.order-requests", "orders", "order.requested", "OrderRequested", "items", True),
        QueueTarget("orchestrator.replies", "orderflow.replies", "orchestrator", "InventoryChecked", None, True),
        QueueTarget("orchestrator.cancel-requests", "orders", "order.cancel.requested", "CancelOrder", None, False),
        QueueTarget(
            "inventory.commands", "orderflow.commands", "inventory.CheckInventory", "CheckInventory", "items", True
        ),
        QueueTarget("payment.commands", "orderflow.commands", "payment.ProcessPayment", "ProcessPayment", None, False),
        QueueTarget(
            "orders.commands", "orderflow.commands", "orders.CreateOrderRecord", "CreateOrderRecord", "lines", True
        ),
        QueueTarget("notify.commands", "orderflow.commands", "notify.NotifyCustomer", "NotifyCustomer", None, True),
        QueueTarget("inventory.order-events", "orders", "order.confirmed", "OrderOutcome", None, True),
    ]
}


def check_targets_cover_contract() -> None:
    """Every consumer queue of the contract has a target whose routing key its binding matches."""
    queues = consumer_queues()
    assert set(queues) == set(TARGETS), f"consumer queues changed: {sorted(queues)} vs {sorted(TARGETS)}"
    for queue, bindings in queues.items():
        target = TARGETS[queue]
        patterns = [
            (exchange, "^" + re.escape(binding).replace(r"\#", ".*").replace(r"\*", "[^.]+") + "$")
            for exchange, binding in bindings
        ]
        assert any(target.exchange == e and re.match(p, target.routing_key) for e, p in patterns), (queue, bindings)


@dataclass(frozen=True, repr=False)
class Throw:
    """One message to publish at a queue; ``message_id`` is how its fate is traced."""

    target: QueueTarget
    body: bytes
    message_type: str | None
    headers: dict[str, Any] = field(default_factory=dict)
    message_id: str = field(default_factory=lambda: f"thrown-{uuid.uuid4().hex}")
    correlation_id: str = ""
    reply_to: str | None = None

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 300 else self.body[:300] + b"...(%d bytes)" % len(self.body)
        return (
            f"Throw({self.target.queue}, type={self.message_type!r}, headers={self.headers!r}, "
            f"reply_to={self.reply_to!r}, id={self.message_id}, body={body!r})"
        )


async def throw(channel: AbstractChannel, item: Throw) -> None:
    """Publish as a misbehaving client or service would, with the broker's confirm."""
    exchange = await channel.get_exchange(item.target.exchange, ensure=False)
    message = aio_pika.Message(
        body=item.body,
        message_id=item.message_id,
        correlation_id=item.correlation_id or None,
        type=item.message_type,
        reply_to=item.reply_to,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers=item.headers or None,
    )
    await exchange.publish(message, item.target.routing_key)


# -- where messages end --------------------------------------------------------------------------
@dataclass(frozen=True)
class Seen:
    routing_key: str
    headers: dict[str, Any]
    body: bytes
    message_type: str | None


def _decoded(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    if isinstance(value, dict):
        return {k: _decoded(v) for k, v in value.items()}
    return value


class Tap:
    """An exclusive queue bound to an exchange: sees copies of what it routes, without taking anything from the
    queues the processes read (a direct exchange gives every queue bound with the key a copy)."""

    def __init__(self, key_header: str | None = None) -> None:
        #: Seen messages by message id (or by the value of ``key_header`` when given).
        self.seen: dict[str, list[Seen]] = {}
        self.key_header = key_header
        self._changed = asyncio.Condition()

    async def start(self, channel: AbstractChannel, exchange: str, routing_keys: list[str]) -> "Tap":
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        for key in routing_keys:
            await queue.bind(exchange, key)
        await queue.consume(self._on_message, no_ack=True)
        return self

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        headers = _decoded(dict(message.headers or {}))
        key = headers.get(self.key_header) if self.key_header else message.message_id
        seen = Seen(message.routing_key or "", headers, message.body, message.type)
        async with self._changed:
            self.seen.setdefault(str(key), []).append(seen)
            self._changed.notify_all()

    async def wait_for(self, keys: list[str], timeout: float = 30.0) -> dict[str, Seen]:
        """The first sighting of each key; fails naming the keys never seen."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: all(k in self.seen for k in keys))
        missing = [k for k in keys if k not in self.seen]
        assert not missing, f"never seen within {timeout}s: {missing}"
        return {k: self.seen[k][0] for k in keys}


async def dead_letter_tap(channel: AbstractChannel) -> Tap:
    """Sees every dead letter of every consumer queue: the consumers' own and the broker's (delivery limit)."""
    return await Tap().start(channel, DEAD_LETTER_EXCHANGE, list(TARGETS))


async def rejection_tap(channel: AbstractChannel) -> Tap:
    """order.rejected events by the message id of the request that caused them (x-causation-id)."""
    return await Tap(key_header="x-causation-id").start(channel, "orders", ["order.rejected"])


async def reply_tap(channel: AbstractChannel, reply_key: str) -> Tap:
    """Replies to commands sent with ``reply_to=reply_key``, by the command's message id (x-causation-id)."""
    return await Tap(key_header="x-causation-id").start(channel, "orderflow.replies", [reply_key])


async def dlq_depth(channel: AbstractChannel, queue: str) -> int:
    """Messages waiting in ``<queue>.dlq`` (a passive declaration changes nothing)."""
    declared = await channel.declare_queue(f"{queue}.dlq", passive=True)
    # A robust channel hands back the queue it declared before: declare again for today's count.
    result = await declared.declare()
    return result.message_count or 0


async def handled_ids(stack: Stack, service: str, message_ids: list[str]) -> set[str]:
    """The message ids ``service`` handled: its inbox rows, committed with the handler's effects."""
    conn = await db(stack.settings, service)
    try:
        rows = await conn.fetch(
            "SELECT message_id FROM inbox WHERE consumer = $1 AND message_id = ANY($2::text[])", service, message_ids
        )
    finally:
        await conn.close()
    return {r["message_id"] for r in rows}


# -- a stack of its own --------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def private_stack(
    tmp: Path, extra_env: dict[str, dict[str, str]] | None = None, *, request: pytest.FixtureRequest | None = None
) -> AsyncIterator[Stack]:
    """Every process on a vhost and databases of its own, for tests that stop servers or processes and so
    must not share the session's stack. Given the fixture's ``request``, a test that failed while the stack
    ran gets the processes' last log lines printed."""
    with fresh_vhost() as amqp_url:
        settings = settings_for(amqp_url, tmp=tmp)
        await create_databases(settings)
        supervisor = Supervisor(stack_children(settings, extra_env), log_dir=str(tmp / "log"))
        token = await create_api_token(settings, "viewer", "tests")
        stack = Stack(settings=settings, supervisor=supervisor, log_dir=tmp / "log", api_token=token)
        try:
            await supervisor.start()
            await wait_ready(stack)
            await consuming(stack)
            failed = request.session.testsfailed if request is not None else 0
            yield stack
            if request is not None and request.session.testsfailed > failed:
                print_logs(stack)
        finally:
            await supervisor.stop()
            await drop_databases(settings)


async def consuming(stack: Stack, timeout: float = 30) -> None:
    """Wait until every consumer queue exists and has its consumer: /readyz answers 200 as soon as the broker
    and the database are connected, before a process has declared its queues, and a message published to an
    exchange whose queue does not exist yet is dropped."""
    connection = await aio_pika.connect(stack.settings.amqp_url)
    async with connection:

        async def all_consumed() -> bool:
            for queue in TARGETS:
                channel = await connection.channel()
                try:
                    declared = await channel.declare_queue(queue, passive=True)
                except aio_pika.exceptions.ChannelClosed:
                    return False  # not declared yet
                if not declared.declaration_result.consumer_count:
                    return False
                await channel.close()
            return True

        await eventually(all_consumed, timeout=timeout, interval=0.2, what="every consumer queue consumed")


def print_logs(stack: Stack, lines: int = 40) -> None:
    for spec in SERVICES:
        print(
            f"\n----- {spec.name} (last {lines} lines) -----\n" + "\n".join(stack.logs(spec.name).splitlines()[-lines:])
        )


Probe = tuple[int | None, dict[str, Any] | None]


def _get(port: int, path: str) -> Probe:
    try:
        return http_json(f"http://127.0.0.1:{port}{path}")
    except (OSError, http.client.HTTPException):
        # Nothing listening (a port in the ephemeral range can even connect to itself and read its own request).
        return None, None


async def probe_all(stack: Stack, path: str) -> dict[str, Probe]:
    """(status, body) of ``path`` on every process; (None, None) when it does not answer at all."""
    names = [s.name for s in SERVICES]
    answers = await asyncio.gather(*(asyncio.to_thread(_get, stack.port(n), path) for n in names))
    return dict(zip(names, answers, strict=True))


async def readyz(stack: Stack, service: str) -> Probe:
    return await asyncio.to_thread(_get, stack.port(service), "/readyz")


async def all_unready(stack: Stack, timeout: float) -> dict[str, Probe]:
    """Wait until every process's /readyz answers 503; returns the answers (their checks say why)."""

    async def probe() -> dict[str, Probe] | None:
        answers = await probe_all(stack, "/readyz")
        return answers if all(status == 503 for status, _ in answers.values()) else None

    return await eventually(probe, timeout=timeout, interval=0.2, what="every process's /readyz to answer 503")


async def all_ready(stack: Stack, timeout: float) -> None:
    async def probe() -> bool:
        return all(status == 200 for status, _ in (await probe_all(stack, "/readyz")).values())

    await eventually(probe, timeout=timeout, interval=0.25, what="every process's /readyz to answer 200 again")


# -- orders through a stack ---------------------------------------------------------------------
async def publish_orders(channel: AbstractChannel, orders: list[dict[str, Any]]) -> None:
    """Publish OrderRequested bodies with the broker's confirm, each under a message id of its own."""
    exchange = await channel.declare_exchange("orders", aio_pika.ExchangeType.TOPIC, durable=True)
    for order in orders:
        message = aio_pika.Message(
            body=json.dumps(order).encode(),
            message_id=f"request-{order['orderId']}",
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await exchange.publish(message, "order.requested")


async def publish_orders_when_possible(amqp_url: str, orders: list[dict[str, Any]], timeout: float) -> float:
    """A client that keeps its requests until the broker takes them: an AMQP client cannot publish while the
    broker is away, so requests made during an outage wait here and go out once it is back (a retry after a
    lost confirm may publish twice: the message id makes that one request). Returns when they went out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection = await aio_pika.connect(amqp_url, timeout=5)
            async with connection:
                await publish_orders(await connection.channel(), orders)
            return time.monotonic()
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPError, RuntimeError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def terminal_statuses(stack: Stack, order_ids: list[str]) -> dict[str, str]:
    conn = await db(stack.settings, "orchestrator")
    try:
        rows = await conn.fetch(
            "SELECT order_id, status FROM saga WHERE order_id = ANY($1::text[]) AND status <> 'RUNNING'", order_ids
        )
    finally:
        await conn.close()
    return {r["order_id"]: r["status"] for r in rows}


async def wait_terminal(stack: Stack, order_ids: list[str], timeout: float) -> dict[str, str]:
    """Wait until every order's saga has ended; returns the statuses (fails naming the unfinished ones)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = await terminal_statuses(stack, order_ids)
        except (OSError, asyncpg.PostgresError):
            found = {}
        if len(found) == len(order_ids) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    unfinished = sorted(set(order_ids) - set(found))
    assert not unfinished, f"{len(unfinished)} of {len(order_ids)} orders unfinished after {timeout}s: {unfinished}"
    return found


async def slowest_timelines(stack: Stack, order_ids: list[str], count: int = 3) -> str:
    """The steps of the slowest sagas, with each attempt's outcome and its time since the saga began: what a
    slow recovery spent its time on."""
    conn = await db(stack.settings, "orchestrator")
    try:
        sagas = await conn.fetch(
            """SELECT order_id, created_at, updated_at - created_at AS took FROM saga
               WHERE order_id = ANY($1::text[]) ORDER BY took DESC LIMIT $2""",
            order_ids,
            count,
        )
        lines = []
        for saga in sagas:
            history = await conn.fetch(
                """SELECT at, event, state, attempt, error FROM saga_history
                   WHERE order_id = $1 AND event <> 'TaskScheduled' ORDER BY id""",
                saga["order_id"],
            )
            steps = " > ".join(
                f"{h['state'] or ''}#{h['attempt'] or ''}:{h['event']}{'(' + h['error'] + ')' if h['error'] else ''}"
                f"@{(h['at'] - saga['created_at']).total_seconds():.1f}s"
                for h in history
            )
            lines.append(f"{saga['order_id']} took {saga['took'].total_seconds():.1f}s: {steps}")
    finally:
        await conn.close()
    return "\n".join(lines)


async def failed_attempts(stack: Stack, order_ids: list[str]) -> list[str]:
    """Every step attempt that failed or timed out, and every notification error, in these orders' sagas: an
    outage the system rides out leaves none (a timed-out step means a message was lost or held too long)."""
    conn = await db(stack.settings, "orchestrator")
    try:
        rows = await conn.fetch(
            """SELECT order_id, event, state, attempt, error, cause FROM saga_history
               WHERE order_id = ANY($1::text[]) AND event IN ('TaskFailed', 'TaskTimedOut') ORDER BY id""",
            order_ids,
        )
        notified = await conn.fetch(
            """SELECT order_id, state->'main'->'data'->'notificationError' AS error FROM saga
               WHERE order_id = ANY($1::text[]) AND state->'main'->'data'->'notificationError' IS NOT NULL
                 AND state->'main'->'data'->'notificationError' <> 'null'::jsonb""",
            order_ids,
        )
    finally:
        await conn.close()
    return [
        f"{r['order_id']}: {r['state']}#{r['attempt']} {r['event']} {r['error']} {(r['cause'] or '')[:120]}"
        for r in rows
    ] + [f"{r['order_id']}: notificationError {r['error']}" for r in notified]


async def add_stripe_fault(stack: Stack, **fault: Any) -> None:
    """Queue a fault at the local Stripe server (``delay_ms`` alone slows requests down, see its faults.py)."""
    status, body = await asyncio.to_thread(http_json, f"{stack.stripe_url}/_test/faults", method="POST", body=fault)
    assert status == 200, body


async def sagas_started(stack: Stack, order_ids: list[str]) -> int:
    conn = await db(stack.settings, "orchestrator")
    try:
        return await conn.fetchval("SELECT count(*) FROM saga WHERE order_id = ANY($1::text[])", order_ids)
    finally:
        await conn.close()


async def saga_states(stack: Stack, order_ids: list[str]) -> dict[str, int]:
    """How many of these sagas are in each (status, current step): what a wait that timed out was stuck on."""
    conn = await db(stack.settings, "orchestrator")
    try:
        rows = await conn.fetch(
            """SELECT status, coalesce(current_state, '') AS step, count(*) AS n FROM saga
               WHERE order_id = ANY($1::text[]) GROUP BY 1, 2""",
            order_ids,
        )
    finally:
        await conn.close()
    states = {f"{r['status']} {r['step']}".strip(): r["n"] for r in rows}
    started = sum(states.values())
    return {**states, "not started": len(order_ids) - started} if started < len(order_ids) else states


async def wait_for_step(stack: Stack, order_ids: list[str], step: str, timeout: float = 30) -> None:
    """Wait until one of these sagas waits on ``step``; on failure, say where they all are."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await sagas_at(stack, order_ids, step):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no saga reached {step} within {timeout}s: {await saga_states(stack, order_ids)}")


async def sagas_at(stack: Stack, order_ids: list[str], step: str) -> int:
    """How many of these sagas are waiting on ``step``."""
    conn = await db(stack.settings, "orchestrator")
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM saga WHERE order_id = ANY($1::text[]) AND current_state = $2", order_ids, step
        )
    finally:
        await conn.close()


async def charges_per_order(stack: Stack, order_ids: list[str]) -> dict[str, int]:
    """Succeeded charges at the Stripe server per order (by the PaymentIntent's orderId metadata)."""
    _, state = await asyncio.to_thread(http_json, f"{stack.stripe_url}/_test/state")
    intents = {i["id"]: (i.get("metadata") or {}).get("orderId") for i in state.get("payment_intents", [])}
    counts = dict.fromkeys(order_ids, 0)
    for charge in state.get("charges", []):
        order_id = intents.get(charge.get("payment_intent"))
        if order_id in counts and charge.get("status") == "succeeded":
            counts[order_id] += 1
    return counts


async def outbox_rows(stack: Stack, service: str) -> int:
    conn = await db(stack.settings, service)
    try:
        return await conn.fetchval("SELECT count(*) FROM outbox")
    finally:
        await conn.close()


# -- the servers --------------------------------------------------------------------------------
async def amqp_answers(amqp_url: str) -> bool:
    try:
        connection = await aio_pika.connect(amqp_url, timeout=3)
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError):
        return False
    await connection.close()
    return True


async def postgres_answers() -> bool:
    try:
        conn = await asyncpg.connect(ADMIN_DSN, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


def _postgres_cluster() -> tuple[str, str]:
    """The version and name of the local cluster on port 5432 (``ls /etc/postgresql`` names the versions)."""
    listing = subprocess.run(["pg_lsclusters", "--no-header"], check=True, capture_output=True, text=True).stdout
    for line in listing.splitlines():
        version, name, port, *_ = line.split()
        if port == "5432":
            return version, name
    raise RuntimeError(f"no PostgreSQL cluster on port 5432: {listing!r}")


def pg_ctlcluster(action: str) -> None:
    version, name = _postgres_cluster()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, action],
        check=True,
        capture_output=True,
        timeout=120,
    )


@contextlib.asynccontextmanager
async def broker_stopped(amqp_url: str) -> AsyncIterator[None]:
    """RabbitMQ's application stopped (the node stays up); always started again, and answering, on exit."""
    await asyncio.to_thread(rabbitmqctl, "stop_app")
    try:
        yield
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")
        await eventually(lambda: amqp_answers(amqp_url), timeout=90, interval=0.5, what="RabbitMQ to answer again")


@contextlib.asynccontextmanager
async def database_stopped() -> AsyncIterator[None]:
    """PostgreSQL stopped (fast shutdown: sessions are ended); always started again, and answering, on exit."""
    await asyncio.to_thread(pg_ctlcluster, "stop")
    try:
        yield
    finally:
        await asyncio.to_thread(pg_ctlcluster, "start")
        await eventually(postgres_answers, timeout=90, interval=0.5, what="PostgreSQL to answer again")
