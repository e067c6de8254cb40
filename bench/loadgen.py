"""Generate orders and drive them: which path each order takes, publishing OrderRequested, hearing outcomes.

Two drivers: an open loop (orders are *scheduled* at a fixed rate and each latency is counted from its
scheduled time, so falling behind shows up as queueing instead of being hidden: no coordinated omission)
and a closed loop (a fixed number of orders in flight, the next one sent when one finishes).
"""

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_args

import aio_pika

from contracts.base import Customer, OrderItem
from contracts.orders import OrderRequested, OrderStatus
from plumbing.envelope import Envelope
from plumbing.topology import EVENTS_EXCHANGE

#: The status each path ends in (docs/workflow.md, "The flows").
EXPECTED_STATUS: dict[str, str] = {
    "happy": "CONFIRMED",
    "declined": "FAILED",
    "nostock": "CANCELLED",
    "record_error": "FAILED_COMPENSATED",
}
#: The order-id suffix the orders process's FAULTS rule answers with OrderRecordError.
RECORD_ERROR_SUFFIX = "-record"
RECORD_ERROR_FAULT = {
    "messageType": "CreateOrderRecord",
    "error": "OrderRecordError",
    "cause": "injected by bench.load",
    "correlationIdPattern": f"{RECORD_ERROR_SUFFIX}$",
}
#: The local Stripe server declines this test payment method with card_declined (devservers/stripe_server/cards.py).
DECLINING_PAYMENT_METHOD = "pm_card_chargeDeclined"
PAYING_PAYMENT_METHOD = "pm_card_visa"
#: Products the benchmark seeds: a catalog with stock to spare (spread over rows so reservations do not all
#: queue on one row lock) and one product with too little stock for the nostock path.
CATALOG_SIZE = 50
CATALOG_STOCK = 1_000_000_000
SCARCE_PRODUCT = "bench-scarce"
SCARCE_STOCK = 1
PRICE = "9.50"
#: Outcomes the orchestrator publishes on the orders exchange, plus order.rejected for a request that cannot start.
OUTCOME_KEYS = [f"order.{status.lower()}" for status in get_args(OrderStatus)] + ["order.rejected"]
CUSTOMER = Customer(email="bench@example.com", phone="+15550001111")


def catalog() -> dict[str, tuple[int, str]]:
    """What to seed: product id -> (stock, price)."""
    products = {catalog_product(i): (CATALOG_STOCK, PRICE) for i in range(CATALOG_SIZE)}
    products[SCARCE_PRODUCT] = (SCARCE_STOCK, PRICE)
    return products


def catalog_product(i: int) -> str:
    return f"bench-sku-{i % CATALOG_SIZE:03d}"


def parse_mix(text: str) -> dict[str, int]:
    """``happy=90,declined=4`` -> weights by path; unknown paths and a zero total are errors."""
    weights: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name not in EXPECTED_STATUS or not value.isdigit():
            raise ValueError(f"bad mix entry {part!r}: use path=weight with path in {', '.join(EXPECTED_STATUS)}")
        weights[name] = int(value)
    if sum(weights.values()) <= 0:
        raise ValueError("the mix's weights add up to zero")
    return weights


class PathPicker:
    """Smooth weighted round robin: deterministic, and every window of orders holds the mix's proportions, so a
    run of 24 orders still exercises a 10 % path."""

    def __init__(self, weights: dict[str, int]) -> None:
        self.weights = {path: w for path, w in weights.items() if w > 0}
        self.total = sum(self.weights.values())
        self.current = dict.fromkeys(self.weights, 0)

    def next(self) -> str:
        for path, weight in self.weights.items():
            self.current[path] += weight
        chosen = max(self.current, key=lambda p: self.current[p])
        self.current[chosen] -= self.total
        return chosen


@dataclass(frozen=True)
class PlannedOrder:
    order_id: str
    path: str
    body: bytes

    @property
    def expected(self) -> str:
        return EXPECTED_STATUS[self.path]


class OrderFactory:
    """Orders with ids unique to this run (``ORDER#bench-<run>-<phase>-<n>``), so a shared installation's other
    orders are never counted."""

    def __init__(self, run_id: str, weights: dict[str, int], phase: str = "m") -> None:
        self.prefix = f"ORDER#bench-{run_id}-{phase}-"
        self.picker = PathPicker(weights)
        self.issued = 0

    def next(self) -> PlannedOrder:
        n, self.issued = self.issued, self.issued + 1
        path = self.picker.next()
        order_id = f"{self.prefix}{n:07d}" + (RECORD_ERROR_SUFFIX if path == "record_error" else "")
        items = [OrderItem(productId=catalog_product(n), quantity=1)]
        if path == "nostock":
            items = [OrderItem(productId=SCARCE_PRODUCT, quantity=SCARCE_STOCK + 1)]
        pm = DECLINING_PAYMENT_METHOD if path == "declined" else PAYING_PAYMENT_METHOD
        request = OrderRequested(orderId=order_id, customer=CUSTOMER, items=items, paymentMethodId=pm)
        return PlannedOrder(order_id, path, request.model_dump_json().encode())


@dataclass(frozen=True)
class Outcome:
    status: str
    received_at: float
    """time.monotonic() when our listener got the event."""


@dataclass
class Flight:
    """One order from its send time to its outcome."""

    order: PlannedOrder
    sent_at: float
    """time.monotonic(): the scheduled send time (open loop) or when publishing began (closed loop)."""
    done: asyncio.Future[Outcome]
    publish_error: str | None = None

    @property
    def outcome(self) -> Outcome | None:
        return self.done.result() if self.done.done() and not self.done.cancelled() else None

    @property
    def latency(self) -> float | None:
        return None if self.outcome is None else self.outcome.received_at - self.sent_at


@dataclass
class OutcomeTap:
    """A private exclusive, auto-delete queue bound to the outcome keys of the orders exchange."""

    on_outcome: Callable[[], None] = lambda: None
    flights: dict[str, Flight] = field(default_factory=dict)
    events: int = 0
    """Outcome events of this run's orders received (a second one for the same order counts too)."""

    async def start(self, channel: aio_pika.abc.AbstractChannel) -> None:
        exchange = await channel.declare_exchange(EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        for key in OUTCOME_KEYS:
            await queue.bind(exchange, key)
        await queue.consume(self._on_message, no_ack=True)

    def expect(self, order: PlannedOrder, sent_at: float) -> Flight:
        """Register an order *before* publishing it, so an outcome faster than the publish confirm is not lost."""
        flight = Flight(order, sent_at, asyncio.get_running_loop().create_future())
        self.flights[order.order_id] = flight
        return flight

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        received = time.monotonic()
        with contextlib.suppress(ValueError, AttributeError):
            body: dict[str, Any] = json.loads(message.body)
            flight = self.flights.get(body.get("orderId") or "")
            if flight is None:
                return
            self.events += 1
            if not flight.done.done():
                flight.done.set_result(Outcome(body.get("status") or "REJECTED", received))
                self.on_outcome()


class Publisher:
    """Publishes OrderRequested as ``orderctl submit`` does (the same envelope properties), on a channel with
    publisher confirms; the exchange is declared once, not per message."""

    def __init__(self) -> None:
        self.exchange: aio_pika.abc.AbstractExchange | None = None

    async def start(self, channel: aio_pika.abc.AbstractChannel) -> None:
        self.exchange = await channel.declare_exchange(EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)

    async def publish(self, flight: Flight) -> None:
        assert self.exchange is not None
        envelope = Envelope(type="OrderRequested", correlationId=flight.order.order_id)
        try:
            await self.exchange.publish(envelope.to_amqp(flight.order.body), "order.requested")
        except Exception as exc:  # recorded on the order, which is then reported as never published
            flight.publish_error = repr(exc)
            if not flight.done.done():
                flight.done.cancel()


@dataclass
class Driver:
    tap: OutcomeTap
    publisher: Publisher
    factory: OrderFactory

    async def open_loop(self, *, rate: float, duration: float | None, count: int | None) -> list[Flight]:
        """Send at ``rate`` per second until ``duration`` seconds or ``count`` orders, whichever comes first."""
        flights: list[Flight] = []
        publishing: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        while count is None or len(flights) < count:
            due = start + len(flights) / rate
            if duration is not None and due >= start + duration:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            flight = self.tap.expect(self.factory.next(), sent_at=due)
            flights.append(flight)
            # Not awaited here: a slow confirm must not delay the next scheduled send.
            task = asyncio.create_task(self.publisher.publish(flight))
            publishing.add(task)
            task.add_done_callback(publishing.discard)
        await asyncio.gather(*publishing)
        return flights

    async def closed_loop(
        self, *, in_flight: int, duration: float | None, count: int | None, deadline: float
    ) -> list[Flight]:
        """Keep ``in_flight`` orders going; each worker waits for its order's outcome (at most ``deadline``
        seconds) before sending the next."""
        flights: list[Flight] = []
        stop_at = None if duration is None else time.monotonic() + duration

        async def worker() -> None:
            while (count is None or len(flights) < count) and (stop_at is None or time.monotonic() < stop_at):
                flight = self.tap.expect(self.factory.next(), sent_at=time.monotonic())
                flights.append(flight)
                await self.publisher.publish(flight)
                if flight.publish_error is not None:
                    await asyncio.sleep(1.0)  # the broker is away: do not spin through the remaining orders
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(flight.done), deadline)

        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return flights


async def settle(flights: list[Flight], deadline: float) -> None:
    """Wait until every flight has its outcome (or failed to publish), at most ``deadline`` seconds."""
    pending = [f.done for f in flights if not f.done.done()]
    if pending:
        await asyncio.wait(pending, timeout=deadline)
