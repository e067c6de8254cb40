"""The span of one handled message, around its transaction: the queries are its children, and the trace
context the outbox rows store is its own, so the relay publishes them inside the same trace."""

from typing import Any

from plumbing import tracing
from plumbing.middleware.base import RAISE, Middleware, Verdict
from plumbing.middleware.delivery import Unit


class Trace(Middleware[Unit]):
    """One span per unit, named after its message's type. A unit of several deliveries (issue 16 item 1)
    chooses its span there: one per batch, linking each delivery's context."""

    async def before(self, unit: Unit) -> None:
        (delivery,) = unit.deliveries
        envelope = delivery.envelope
        attributes: dict[str, Any] = {
            "orderflow.order_id": envelope.correlationId,
            "orderflow.attempt": envelope.attempt,
            "messaging.message.id": envelope.messageId,
        }
        span = tracing.handling(envelope.type, attributes)
        span.__enter__()
        unit.held[self] = span

    async def after(self, unit: Unit) -> None:
        unit.held.pop(self).__exit__(None, None, None)

    async def on_error(self, unit: Unit, error: BaseException) -> Verdict:
        unit.held.pop(self).__exit__(type(error), error, error.__traceback__)
        return RAISE
