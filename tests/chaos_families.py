"""The chaos suite's fault families beyond kills, dropped connections and duplicates (issue 14):

- ``wire``: answers from Stripe, the SMTP sink and the SMS server lost after the server acted, held past the
  step's timeout, or requests reset before they arrive (the fault proxies of tests/proxies.py);
- ``pauses``: a service SIGSTOPped past its step's timeout and resumed, so its queued commands land after the
  saga timed out and compensated them;
- ``late commands``: commands captured as they were sent and published again, under a new message id, once
  their deadline has passed, as a dead letter replayed days later would be;
- ``unpublishable``: an outbox row no broker can carry, written into a service's outbox (the relay must park it
  and go on), and OrderRequested messages whose orderId cannot travel (each must be answered order.rejected);
- ``confirmed unbound``: windows in which order.confirmed reaches nobody, as if it were dead-lettered.

Each family counts what it did; the suite prints the counts and the checker must still find nothing wrong.
"""

import asyncio
import contextlib
import json
import os
import random
import signal
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

import aio_pika
import asyncpg
from harness import ADMIN_DSN, Stack
from proxies import CREATE_PAYMENT_INTENT, REFUND, SEND_SMS, SMTP_END_OF_DATA, ProxiedStack

from contracts.orders import OrderRejected
from devservers.fault_proxy import Fault
from plumbing import outbox
from plumbing.db import connect, database_name
from plumbing.envelope import HEADER_DEADLINE, Envelope

CONFIRM = b"/confirm "
CANCEL = b"/cancel "
#: Services a pause may stop, with how long: past ProcessPayment's 8 s and the chaos CreateOrderRecord's 10 s.
PAUSABLE = ("inventory", "payment", "orders", "notify")
PAUSE_SECONDS = (9.0, 14.0)


class Families:
    """The new fault families on their own random schedules; ``figures`` counts each injection."""

    def __init__(self, proxied: ProxiedStack, rng: random.Random) -> None:
        self.proxied = proxied
        self.stack: Stack = proxied.stack
        self.rng = rng
        self.figures: Counter[str] = Counter()
        self.tasks: list[asyncio.Task[None]] = []
        self.captured: list[aio_pika.abc.AbstractIncomingMessage] = []
        self.paused: dict[str, int] = {}
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def start(self) -> None:
        self._connection = await aio_pika.connect_robust(self.stack.settings.amqp_url)
        channel = await self._connection.channel()
        tap = await channel.declare_queue(f"chaos-tap-{uuid.uuid4().hex[:6]}", exclusive=True)
        await tap.bind("orderflow.commands", "#")
        await tap.consume(self._capture, no_ack=True)
        self.tasks = [
            asyncio.create_task(self._every(1.0, 3.0, self.wire_fault)),
            asyncio.create_task(self._every(4.0, 8.0, self.pause)),
            asyncio.create_task(self._every(3.0, 6.0, self.replay_late_commands)),
            asyncio.create_task(self._every(10.0, 20.0, self.unpublishable_row)),
            asyncio.create_task(self._every(15.0, 25.0, self.unbind_confirmed)),
        ]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for name in list(self.paused):
            self._resume(name)
        self.proxied.clear()
        if self._connection is not None:
            await self._connection.close()

    async def _every(self, low: float, high: float, action) -> None:  # noqa: ANN001
        await every(self.rng, self.figures, low, high, action)

    # -- wire ----------------------------------------------------------------------------------------------
    async def wire_fault(self) -> None:
        target = self.rng.choice(["stripe", "stripe", "stripe", "smtp", "sms"])
        kind = self.rng.choice(["drop_answer", "drop_answer", "delay", "reset_before"])
        match = {
            "stripe": self.rng.choice([CREATE_PAYMENT_INTENT, CONFIRM, REFUND, CANCEL, None]),
            "smtp": SMTP_END_OF_DATA,
            "sms": SEND_SMS,
        }[target]
        delay = self.rng.uniform(9.0, 12.0) if kind == "delay" else 0.0
        self.proxied.proxies[target].add(Fault(kind, match=match, times=self.rng.randint(1, 3), delay_seconds=delay))
        self.figures[f"wire {kind} armed"] += 1

    def wire_figures(self) -> dict[str, int]:
        """What the proxies really did (an armed fault fires only if matching traffic came)."""
        found: Counter[str] = Counter()
        for name, proxy in self.proxied.proxies.items():
            for kind in ("drop_answer", "delay", "reset_before"):
                found[f"wire {kind} fired ({name})"] += getattr(proxy.stats, kind)
        return dict(found)

    # -- pauses --------------------------------------------------------------------------------------------
    async def pause(self) -> None:
        name = self.rng.choice([s for s in PAUSABLE if s not in self.paused])
        child = self.stack.supervisor.by_name(name)
        if child.process is None or child.process.returncode is not None:
            return
        pid = child.process.pid
        os.killpg(pid, signal.SIGSTOP)
        self.paused[name] = pid
        self.figures["pauses"] += 1
        self.figures[f"pauses:{name}"] += 1
        try:
            await asyncio.sleep(self.rng.uniform(*PAUSE_SECONDS))
        finally:
            self._resume(name)

    def _resume(self, name: str) -> None:
        pid = self.paused.pop(name, None)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):  # killed meanwhile: the supervisor restarted it
                os.killpg(pid, signal.SIGCONT)

    # -- late commands ---------------------------------------------------------------------------------------
    async def _capture(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if len(self.captured) < 5_000:
            self.captured.append(message)

    async def replay_late_commands(self) -> None:
        """Publish again, under new message ids, up to five captured commands whose deadline has passed."""
        now = datetime.now(UTC)
        stale = [m for m in self.captured if _deadline(m) is not None and _deadline(m) < now]
        if not stale or self._connection is None:
            return
        channel = await self._connection.channel(publisher_confirms=True)
        try:
            exchange = await channel.get_exchange("orderflow.commands", ensure=False)
            for message in self.rng.sample(stale, min(5, len(stale))):
                await exchange.publish(
                    aio_pika.Message(
                        body=message.body,
                        headers=dict(message.headers or {}),
                        message_id=f"late-{uuid.uuid4()}",
                        correlation_id=message.correlation_id,
                        type=message.type,
                        reply_to=message.reply_to,
                        content_type=message.content_type,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    message.routing_key or "",
                )
                self.figures["late commands replayed"] += 1
                self.figures[f"late commands:{message.type}"] += 1
        finally:
            await channel.close()

    # -- unpublishable ---------------------------------------------------------------------------------------
    async def unpublishable_row(self) -> None:
        """An outbox row whose correlation id (300 bytes of UTF-8) no AMQP short string can hold."""
        service = self.rng.choice(["orchestrator", "inventory", "payment", "orders", "notify"])
        name = database_name(self.stack.settings.database_url(service))
        conn = await connect(ADMIN_DSN.rsplit("/", 1)[0] + "/" + name)  # with the services' jsonb codec
        try:
            async with conn.transaction():
                envelope = Envelope(type="OrderRejected", correlationId="é" * 150)
                payload = OrderRejected(orderId=None, reasons=["chaos: a row no broker can carry"])
                await outbox.enqueue(
                    conn, exchange="orders", routing_key="order.rejected", envelope=envelope, payload=payload
                )
                await outbox.announce(conn)
        finally:
            await conn.close()
        self.figures["unpublishable rows written"] += 1

    async def parked(self) -> int:
        total = 0
        for service in ("orchestrator", "inventory", "payment", "orders", "notify"):
            name = database_name(self.stack.settings.database_url(service))
            conn = await asyncpg.connect(ADMIN_DSN.rsplit("/", 1)[0] + "/" + name)
            try:
                total += await conn.fetchval("SELECT count(*) FROM outbox_parked")
            finally:
                await conn.close()
        return total

    # -- order.confirmed reaching nobody ---------------------------------------------------------------------
    async def unbind_confirmed(self) -> None:
        if self._connection is None:
            return
        channel = await self._connection.channel()
        try:
            queue = await channel.get_queue("inventory.order-events", ensure=False)
            await queue.unbind("orders", "order.confirmed")
            self.figures["order.confirmed unbound windows"] += 1
            started = time.monotonic()
            try:
                await asyncio.sleep(self.rng.uniform(5.0, 10.0))
            finally:
                await queue.bind("orders", "order.confirmed")
                self.figures["order.confirmed unbound seconds"] += round(time.monotonic() - started)
        finally:
            await channel.close()


async def every(rng: random.Random, figures: Counter[str], low: float, high: float, action) -> None:  # noqa: ANN001
    """Run ``action`` again and again, a random ``low`` to ``high`` seconds apart, until cancelled."""
    while True:
        await asyncio.sleep(rng.uniform(low, high))
        try:
            await action()
        except Exception as exc:  # a fault that could not be injected this time is reported, not fatal
            print(f"chaos: {action.__name__} failed: {exc!r}")
            figures[f"errors:{action.__name__}"] += 1


def _deadline(message: aio_pika.abc.AbstractIncomingMessage) -> datetime | None:
    value = (message.headers or {}).get(HEADER_DEADLINE)
    if isinstance(value, bytes):
        value = value.decode()
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def untravellable_request(i: int) -> bytes:
    """An OrderRequested whose orderId cannot be an AMQP correlation id: it must be answered order.rejected."""
    order_id = "é" * 150 if i % 2 == 0 else f"ORDER with spaces {i}"
    body = {
        "orderId": order_id,
        "customer": {"email": "ada@example.com", "phone": None},
        "items": [{"productId": "sku-plenty", "quantity": 1}],
        "paymentMethodId": "pm_card_visa",
    }
    return json.dumps(body).encode()
