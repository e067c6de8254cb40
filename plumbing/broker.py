"""One robust AMQP connection per process, with a confirmed publishing channel.

aio-pika's robust connection reconnects with backoff and restores channels,
exchanges, queues and consumers; publishing waits for the broker's confirm,
and a mandatory message the broker cannot route raises instead of vanishing.
"""

import asyncio
import logging

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from plumbing import topology

log = logging.getLogger(__name__)

_PUBLISH_TIMEOUT = 10.0


class Broker:
    def __init__(self, url: str, *, name: str) -> None:
        self.url = url
        self.name = name
        self.connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        """Connect, retrying with backoff until the broker answers."""
        delay = 0.5
        while True:
            try:
                self.connection = await aio_pika.connect_robust(
                    self.url, client_properties={"connection_name": self.name}, reconnect_interval=2
                )
                break
            except (OSError, aio_pika.exceptions.AMQPError) as exc:
                log.warning("broker not reachable, retrying", extra={"fields": {"error": str(exc)}})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self._publish_channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        await topology.declare_exchanges(self._publish_channel)

    @property
    def connected(self) -> bool:
        return (
            self.connection is not None
            and not self.connection.is_closed
            and self._publish_channel is not None
            and not self._publish_channel.is_closed
        )

    async def channel(self, *, prefetch: int) -> AbstractChannel:
        assert self.connection is not None, "connect() first"
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        return channel

    async def publish(
        self, exchange: str, routing_key: str, message: aio_pika.Message, *, mandatory: bool | None = None
    ) -> None:
        """Publish and wait for the broker's confirm; raises if it is not confirmed."""
        assert self._publish_channel is not None, "connect() first"
        if mandatory is None:
            mandatory = exchange in topology.MANDATORY_EXCHANGES
        target = await self._publish_channel.get_exchange(exchange, ensure=False)
        await target.publish(message, routing_key, mandatory=mandatory, timeout=_PUBLISH_TIMEOUT)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
