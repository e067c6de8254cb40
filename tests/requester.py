"""Send commands the way the orchestrator does and collect their replies on a key of one's own: for tests that
put a command in front of a service directly (a duplicate, a late command, a compensation that overtakes)."""

import json
import uuid

import aio_pika
from harness import eventually

from plumbing.envelope import Envelope


class Requester:
    """Sends commands the way the orchestrator does, and collects the replies on its own key."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel) -> None:
        self.channel = channel
        self.key = f"test-{uuid.uuid4().hex[:8]}"
        self.replies: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def start(self) -> None:
        queue = await self.channel.declare_queue("", exclusive=True)
        await queue.bind("orderflow.replies", self.key)

        async def collect(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            self.replies.append(message)

        await queue.consume(collect, no_ack=True)

    async def send(self, resource: str, payload: dict, *, message_id: str, order_id: str) -> None:
        exchange = await self.channel.get_exchange("orderflow.commands")
        envelope = Envelope(messageId=message_id, type=resource.split(".")[1], correlationId=order_id, replyTo=self.key)
        await exchange.publish(envelope.to_amqp(json.dumps(payload).encode()), resource)

    def replies_to(self, message_id: str) -> list[dict]:
        return [
            {"type": m.type, **json.loads(m.body)}
            for m in self.replies
            if (m.headers or {}).get("x-causation-id") == message_id
        ]

    async def reply(self, message_id: str) -> dict:
        async def arrived():
            found = self.replies_to(message_id)
            return found[0] if found else None

        return await eventually(arrived, timeout=30, what=f"reply to {message_id}")
