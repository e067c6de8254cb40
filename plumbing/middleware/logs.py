"""Log binding: every line logged while a delivery is handled carries its order, step, attempt and ids."""

from plumbing.logs import bind
from plumbing.middleware.base import Middleware
from plumbing.middleware.delivery import Delivery


class BindLogContext(Middleware[Delivery]):
    """Binds the envelope's ids into the log context (the consumer starts each delivery with an empty one);
    inside the decoding, so a poison message is logged without the ids it failed to give."""

    def before(self, delivery: Delivery) -> None:
        envelope = delivery.envelope
        bind(
            orderId=envelope.correlationId,
            step=envelope.type,
            attempt=envelope.attempt,
            correlationId=envelope.correlationId,
            messageId=envelope.messageId,
        )
