"""The chaos suite's customers and customer service: what happens to an order after it is CONFIRMED, sent while
every fault of the suite goes on.

A share of the happy orders is given one of these (``AFTERWARDS``, drawn in the plan):

- ``cancel``: a CancelOrder (``order.cancel.requested`` on the ``orders`` exchange, a bare JSON body as an
  outside client sends it) once the order is CONFIRMED: the cancellation workflow refunds
  (``{orderId}-cancel-refund``), restocks, voids the record and tells the customer;
- ``cancel twice``: the same, sent twice: the second is answered ``CancellationAlreadyRequested``;
- ``cancel early``: a CancelOrder sent right after the order, before it can be CONFIRMED: answered
  ``OrderNotFound`` or ``OrderNotConfirmed`` with nothing changed, or a cancellation if the order confirmed
  first; whichever it is, never half of one;
- ``refund``: one or two partial manual refunds through the API (``POST /api/v1/sagas/{orderId}/refund``, an
  operator's bearer token, an Idempotency-Key each), one after the other;
- ``refund same key``: one refund sent twice with the same Idempotency-Key, one after the other or both at
  once: it refunds once, the other answer is the first one's (``replayed``);
- ``refunds at once``: two partial refunds with two keys, sent at the same moment;
- ``refund then cancel``: one or two partial refunds, then a CancelOrder: the cancellation refunds what remains.

A request the faults cut (the orchestrator killed, its connections dropped) is sent again as a client would:
a refund with its own Idempotency-Key, until the API answers it. The suite's wire faults arm a fault on Stripe's
refunds only now and then, for any refund; so that these refunds meet them too, one request in
``REFUND_FAULT_EVERY`` first arms one (answer dropped after Stripe refunded, held 9 to 12 s, or the request
reset) on the next refund Stripe is asked for. ``figures`` counts what was sent and answered.
"""

import asyncio
import contextlib
import json
import os
import random
import urllib.parse
from collections import Counter
from decimal import Decimal
from typing import Any

import aio_pika
import aiohttp
import asyncpg
from harness import ADMIN_DSN, create_api_token
from proxies import REFUND, ProxiedStack

from devservers.fault_proxy import Fault
from plumbing.db import database_name

#: What may happen to a happy order after it is CONFIRMED, with the share of happy orders it happens to.
AFTERWARDS: dict[str, float] = {
    "cancel": 0.08,
    "cancel twice": 0.04,
    "cancel early": 0.04,
    "refund": 0.05,
    "refund same key": 0.03,
    "refunds at once": 0.03,
    "refund then cancel": 0.05,
}
#: Those that wait for the order to be CONFIRMED (an early cancel is sent with the order).
AFTER_CONFIRMED = frozenset(AFTERWARDS) - {"cancel early"}
CANCELLING = frozenset({"cancel", "cancel twice", "refund then cancel"})
CANCEL_KEY = "order.cancel.requested"
ANSWER_KEYS = ("order.cancellation_completed", "order.cancellation_failed", "order.cancellation_rejected")
#: How long a refund request is sent again while the faults cut it, before it counts as unanswered.
REQUEST_PATIENCE_SECONDS = 180.0
#: One manual refund or cancellation in this many arms a wire fault on Stripe's next refund first.
REFUND_FAULT_EVERY = 4


def afterwards(rng: random.Random) -> str | None:
    """What happens to a happy order after it is placed, drawn with AFTERWARDS' shares; None: nothing."""
    draw = rng.random()
    for what, share in AFTERWARDS.items():
        if draw < share:
            return what
        draw -= share
    return None


class Customers:
    """Sends each planned order's cancellation and refunds once it is CONFIRMED, and counts the answers."""

    def __init__(self, proxied: ProxiedStack, rng: random.Random, planned: dict[str, str]) -> None:
        self.proxied, self.stack, self.rng = proxied, proxied.stack, rng
        self.planned = planned
        self.waiting = {o for o, what in planned.items() if what in AFTER_CONFIRMED}
        self.figures: Counter[str] = Counter()
        #: Orders whose CancelOrder was sent after they were CONFIRMED: each must have a cancellation saga.
        self.cancelled_confirmed: set[str] = set()
        #: Idempotency-Keys the API answered (202 asked, 200 replayed), by order.
        self.keys_answered: dict[str, set[str]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None
        self._token = ""
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._token = await create_api_token(self.stack.settings, "operator", f"chaos-service-{os.getpid()}")
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        self._connection = await aio_pika.connect_robust(self.stack.settings.amqp_url)
        channel = await self._connection.channel()
        queue = await channel.declare_queue(f"chaos-cancellation-answers-{os.getpid()}", durable=True)
        for key in ANSWER_KEYS:
            await queue.bind("orders", key)
        await queue.consume(self._answered, no_ack=True)
        self._poller = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        tasks = [*self.tasks, *([self._poller] if self._poller is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        if self._connection is not None:
            await self._connection.close()

    async def settled(self) -> bool:
        """Every planned order was acted on (or ended otherwise than CONFIRMED) and every request answered."""
        return not self.waiting and not self.tasks

    # -- the orders' answers ---------------------------------------------------------------------------------
    async def _answered(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        key = (message.routing_key or "").rsplit(".", 1)[-1]
        with contextlib.suppress(ValueError):
            reason = json.loads(message.body).get("reason") if key == "cancellation_rejected" else None
            self.figures[f"CancelOrder answered {key}" + (f" ({reason})" if reason else "")] += 1

    # -- what is sent, when ----------------------------------------------------------------------------------
    async def placed(self, order_ids: list[str]) -> None:
        """Right after these orders were published: the early cancellations."""
        early = [o for o in order_ids if self.planned.get(o) == "cancel early"]
        for order_id in early:
            await self.cancel(order_id)
            self.figures["cancels sent early"] += 1

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if not self.waiting:
                continue
            try:
                statuses = await self._statuses(sorted(self.waiting))
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                continue  # a terminated probe connection: ask again
            for order_id, status in statuses.items():
                if status == "RUNNING":
                    continue
                self.waiting.discard(order_id)
                if status != "CONFIRMED":
                    self.figures[f"not acted on: ended {status}"] += 1
                    continue
                task = asyncio.create_task(self._act(order_id, self.planned[order_id]))
                self.tasks.add(task)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            print(f"chaos customers: {task.exception()!r}")
            self.figures["errors:customers"] += 1

    async def _statuses(self, order_ids: list[str]) -> dict[str, str]:
        name = database_name(self.stack.settings.database_url("orchestrator"))
        conn = await asyncpg.connect(ADMIN_DSN.rsplit("/", 1)[0] + "/" + name, timeout=10)
        try:
            rows = await conn.fetch("SELECT order_id, status FROM saga WHERE order_id = ANY($1::text[])", order_ids)
        finally:
            await conn.close()
        return {r["order_id"]: r["status"] for r in rows}

    async def _act(self, order_id: str, what: str) -> None:
        await asyncio.sleep(self.rng.uniform(0.0, 3.0))  # spread over the faults' schedules
        self.figures[f"orders: {what}"] += 1
        if what in ("refund", "refund then cancel"):
            for n in range(self.rng.choice((1, 2))):
                await self.refund(order_id, f"chaos-{n}", self._amount(n))
        elif what == "refund same key":
            key, amount = "chaos-same", self._amount(0)
            if self.rng.random() < 0.5:
                await self.refund(order_id, key, amount)
                await self.refund(order_id, key, amount)
                self.figures["refunds sent twice with one key, one after the other"] += 1
            else:
                await asyncio.gather(self.refund(order_id, key, amount), self.refund(order_id, key, amount))
                self.figures["refunds sent twice with one key, at once"] += 1
        elif what == "refunds at once":
            await asyncio.gather(
                self.refund(order_id, "chaos-a", self._amount(0)), self.refund(order_id, "chaos-b", self._amount(1))
            )
            self.figures["refund pairs sent at once"] += 1
        if what in CANCELLING:
            self.cancelled_confirmed.add(order_id)
            await self.cancel(order_id)
            if what == "cancel twice":
                await self.cancel(order_id)
                self.figures["cancels sent twice"] += 1
            self.figures["cancels sent after CONFIRMED"] += 1

    def _maybe_fault_the_refund(self, what: str) -> None:
        """Now and then, a wire fault on the next refund Stripe is asked for (this one's, most likely)."""
        if self.rng.randrange(REFUND_FAULT_EVERY):
            return
        kind = self.rng.choice(["drop_answer", "drop_answer", "delay", "reset_before"])
        delay = self.rng.uniform(9.0, 12.0) if kind == "delay" else 0.0
        self.proxied.stripe.add(Fault(kind, match=REFUND, times=1, delay_seconds=delay))
        self.figures[f"refund {kind} armed before a {what}"] += 1

    def _amount(self, n: int) -> Decimal:
        """A partial refund: the cheapest order is 3.00 USD, two refunds give back at most 1.75."""
        cents = self.rng.randint(50, 100) if n == 0 else self.rng.randint(25, 75)
        return Decimal(cents) / 100

    # -- the two ways in -------------------------------------------------------------------------------------
    async def cancel(self, order_id: str) -> None:
        """Publish a CancelOrder as an outside client does, until the broker confirms it."""
        body = json.dumps({"orderId": order_id, "reason": "chaos: changed my mind"}).encode()
        self._maybe_fault_the_refund("cancellation")
        while True:
            try:
                connection = await aio_pika.connect(self.stack.settings.amqp_url, timeout=10)
                async with connection:
                    channel = await connection.channel(publisher_confirms=True)
                    exchange = await channel.get_exchange("orders", ensure=False)
                    message = aio_pika.Message(body=body, content_type="application/json")
                    await exchange.publish(message, CANCEL_KEY, timeout=10)
                self.figures["CancelOrder published"] += 1
                return
            except (aio_pika.exceptions.AMQPError, aio_pika.exceptions.ChannelInvalidStateError, OSError, TimeoutError):
                await asyncio.sleep(0.2)  # the connection was closed under us: publish again

    async def refund(self, order_id: str, key: str, amount: Decimal) -> None:
        """POST a manual refund with ``key`` until the API answers it (the faults cut some requests)."""
        assert self._http is not None
        url = f"{self.stack.api_url}/api/v1/sagas/{urllib.parse.quote(order_id, safe='')}/refund"
        headers = {"Authorization": f"Bearer {self._token}", "Idempotency-Key": key}
        body = {"amount": float(amount), "reason": "chaos: goodwill"}
        self.figures["manual refund requests"] += 1
        self._maybe_fault_the_refund("manual refund")
        deadline = asyncio.get_running_loop().time() + REQUEST_PATIENCE_SECONDS
        while asyncio.get_running_loop().time() < deadline:
            try:
                async with self._http.post(url, json=body, headers=headers) as response:
                    status, answer = response.status, await _json(response)
            except (aiohttp.ClientError, TimeoutError, OSError):
                self.figures["manual refund requests cut and sent again"] += 1
                await asyncio.sleep(0.5)
                continue
            if status >= 500:
                self.figures["manual refund requests answered 5xx and sent again"] += 1
                await asyncio.sleep(0.5)
                continue
            replayed = status == 200 and answer.get("replayed")
            self.figures[f"manual refund answers {status}" + (" replayed" if replayed else "")] += 1
            if status in (200, 202):
                self.keys_answered.setdefault(order_id, set()).add(key)
            else:
                print(f"chaos customers: refund {order_id} {key}: {status} {answer}")
            return
        self.figures["manual refund requests never answered"] += 1


async def _json(response: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        answer = await response.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        return {}
    return answer if isinstance(answer, dict) else {}
