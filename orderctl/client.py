"""A client of the public contract: publish OrderRequested, hear the order.* outcomes."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika

from contracts.orders import OrderRequested
from orderctl.reach import reaching_broker
from plumbing.envelope import Envelope
from plumbing.topology import EVENTS_EXCHANGE


async def publish_order(channel: aio_pika.abc.AbstractChannel, order: OrderRequested) -> None:
    exchange = await channel.declare_exchange(EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    envelope = Envelope(type="OrderRequested", correlationId=order.orderId)
    await exchange.publish(envelope.to_amqp(order.model_dump_json().encode()), "order.requested")


class OutcomeListener:
    """An exclusive queue bound to order.* that collects outcomes by orderId."""

    def __init__(self) -> None:
        self.outcomes: dict[str, dict[str, Any]] = {}
        self._changed = asyncio.Condition()

    async def start(self, channel: aio_pika.abc.AbstractChannel) -> None:
        exchange = await channel.declare_exchange(EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        await queue.bind(exchange, "order.*")
        await queue.consume(self._on_message, no_ack=True)

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if message.routing_key == "order.requested":
            return
        with contextlib.suppress(ValueError):
            body = json.loads(message.body)
            body["_routingKey"] = message.routing_key
            key = body.get("orderId") or ""
            async with self._changed:
                self.outcomes[key] = body
                self._changed.notify_all()

    async def wait_for(
        self,
        order_ids: list[str],
        timeout: float,
        on_outcome: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Wait until every order has an outcome, or the deadline passes; return what arrived.

        ``on_outcome`` hears each order's first outcome as it arrives (a progress display)."""
        heard: set[str] = set()
        wanted = set(order_ids)

        def all_heard() -> bool:
            for order_id in wanted - heard:
                if order_id in self.outcomes:
                    heard.add(order_id)
                    if on_outcome is not None:
                        on_outcome(order_id, self.outcomes[order_id])
            return heard == wanted

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(all_heard)
        return {o: self.outcomes[o] for o in order_ids if o in self.outcomes}


@contextlib.asynccontextmanager
async def connect(amqp_url: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    with reaching_broker(amqp_url):
        connection = await aio_pika.connect_robust(amqp_url)
    try:
        yield await connection.channel()
    finally:
        await connection.close()
