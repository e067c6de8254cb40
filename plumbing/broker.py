"""One robust AMQP connection per process, with a confirmed publishing channel.

aio-pika's robust connection reconnects with backoff and restores channels,
exchanges, queues and consumers; publishing waits for the broker's confirm,
and a mandatory message the broker cannot route raises instead of vanishing.

RabbitMQ may also *block* a connection that is open: when a memory or disk alarm fires it sends
connection.blocked and stops reading from publishing connections until connection.unblocked. Nothing
closes, so a connection check alone would call the broker up while no command can leave. aiormq handles
both frames itself (pausing its writer) and offers no callback; the broker hooks its handlers on every
connection it opens, so ``blocked`` and ``available`` say what aiormq knows, with when the block began.

Every message this process publishes carries its AMQP user in the ``user_id`` property. RabbitMQ refuses a
user-id that is not the publishing connection's own user (PRECONDITION_FAILED), so a receiver can tell who
sent it: the orchestrator checks that a reply comes from the service that may send it (contracts.permissions).
"""

import asyncio
import logging
import time
from urllib.parse import unquote, urlsplit

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from pamqp import commands

from plumbing import frames, metrics, topology
from plumbing.backoff import BROKER_CONNECT

log = logging.getLogger(__name__)

_PUBLISH_TIMEOUT = 10.0
# aiormq.Connection's private dispatch targets for the two frames, and the event it clears while blocked.
_ON_BLOCKED = "_Connection__handle_connection_blocked"
_ON_UNBLOCKED = "_Connection__handle_connection_unblocked"
_UNBLOCKED_EVENT = "_Connection__connection_unblocked"


class Broker:
    def __init__(self, url: str, *, name: str) -> None:
        self.url = url
        self.name = name
        #: The user this process logs in as, stamped on everything it publishes.
        self.user = unquote(urlsplit(url).username or "guest")
        self.connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._lock = asyncio.Lock()
        #: time.monotonic() when RabbitMQ blocked the connection (connection.blocked); None while not blocked.
        self.blocked_since: float | None = None
        self.blocked_reason: str | None = None
        self._watched: object | None = None  # the aiormq connection whose frames reach on_blocked / on_unblocked
        metrics.BROKER_BLOCKED.labels(name).set(0)

    async def connect(self) -> None:
        """Connect, retrying with backoff until the broker answers."""
        frames.install()  # one socket write for the frames queued together (plumbing/frames.py)
        failures = 0
        while True:
            try:
                self.connection = await aio_pika.connect_robust(
                    self.url, client_properties={"connection_name": self.name}, reconnect_interval=2
                )
                break
            except (OSError, aio_pika.exceptions.AMQPError) as exc:
                log.warning("broker not reachable, retrying", extra={"fields": {"error": str(exc)}})
                failures += 1
                await asyncio.sleep(BROKER_CONNECT.delay(failures))
        self._watch_blocking()
        self.connection.reconnect_callbacks.add(lambda *_: self._watch_blocking())
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

    @property
    def blocked(self) -> bool:
        """True while RabbitMQ blocks this connection (a memory or disk alarm): publishes would wait."""
        return self.blocked_since is not None

    @property
    def available(self) -> bool:
        """Connected and not blocked: what the saga clock and readiness need from the broker."""
        return self.connected and not self.blocked

    def on_blocked(self, frame: commands.Connection.Blocked) -> None:
        """connection.blocked: note when and why; readiness and the saga clock now count the broker as away."""
        if self.blocked_since is None:
            self.blocked_since = time.monotonic()
        self.blocked_reason = frame.reason
        metrics.BROKER_BLOCKED.labels(self.name).set(1)
        log.warning("broker blocked this connection", extra={"fields": {"reason": frame.reason}})

    def on_unblocked(self, _: commands.Connection.Unblocked | None = None) -> None:
        """connection.unblocked (or a new connection, which starts unblocked)."""
        if self.blocked_since is None:
            return
        seconds = time.monotonic() - self.blocked_since
        self.blocked_since = self.blocked_reason = None
        metrics.BROKER_BLOCKED.labels(self.name).set(0)
        log.warning("broker unblocked this connection", extra={"fields": {"blocked_seconds": round(seconds, 3)}})

    def _watch_blocking(self) -> None:
        """Have the current aiormq connection call on_blocked / on_unblocked after its own handlers."""
        transport = self.connection.transport if self.connection is not None else None
        if transport is None:
            return
        amqp = transport.connection
        own_blocked, own_unblocked = getattr(amqp, _ON_BLOCKED), getattr(amqp, _ON_UNBLOCKED)

        async def blocked(frame: commands.Connection.Blocked) -> None:
            await own_blocked(frame)
            self.on_blocked(frame)

        async def unblocked(frame: commands.Connection.Unblocked) -> None:
            await own_unblocked(frame)
            self.on_unblocked(frame)

        setattr(amqp, _ON_BLOCKED, blocked)
        setattr(amqp, _ON_UNBLOCKED, unblocked)
        self._watched = amqp

        def closed(_: object) -> None:
            # A connection that closes while blocked never hears connection.unblocked, and aiormq's waiters on it
            # (a channel reopening during the reconnect) would wait for ever: wake them; they find it closed.
            getattr(amqp, _UNBLOCKED_EVENT).set()
            if self._watched is amqp:
                self.on_unblocked()

        amqp.closing.add_done_callback(closed)
        # A reconnect restores channels before its callbacks run: a block that came meanwhile is in aiormq's state.
        if getattr(amqp, _UNBLOCKED_EVENT).is_set():
            self.on_unblocked()
        else:
            self.on_blocked(commands.Connection.Blocked(reason=self.blocked_reason or "blocked before watched"))

    async def channel(self, *, prefetch: int) -> AbstractChannel:
        assert self.connection is not None, "connect() first"
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        return channel

    async def publish(
        self, exchange: str, routing_key: str, message: aio_pika.Message, *, mandatory: bool | None = None
    ) -> None:
        """Publish and wait for the broker's confirm; raises if it is not confirmed. The message goes out with this
        process's user as its user-id, which the broker validates."""
        assert self._publish_channel is not None, "connect() first"
        if mandatory is None:
            mandatory = exchange in topology.MANDATORY_EXCHANGES
        target = await self._publish_channel.get_exchange(exchange, ensure=False)
        message.user_id = self.user
        await target.publish(message, routing_key, mandatory=mandatory, timeout=_PUBLISH_TIMEOUT)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
