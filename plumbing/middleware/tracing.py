"""The span of one handled message, around its transaction: the queries are its children, and the trace
context the outbox rows store is its own, so the relay publishes them inside the same trace.

A batch's deliveries came in traces of their own: each gets its span around its handler alone, under the
context it was received in (``TraceInBatch``, in the handle segment, installed only when tracing is on), so
what it writes carries its own trace; the batch's claims and commit belong to no delivery's span."""

from typing import Any

from plumbing import tracing
from plumbing.middleware.base import RAISE, Middleware, Verdict
from plumbing.middleware.delivery import Delivery, Unit


def _attributes(delivery: Delivery) -> dict[str, Any]:
    envelope = delivery.envelope
    return {
        "orderflow.order_id": envelope.correlationId,
        "orderflow.attempt": envelope.attempt,
        "messaging.message.id": envelope.messageId,
    }


class Trace(Middleware[Unit]):
    """One span per unit of one delivery, named after its message's type; a batch's are ``TraceInBatch``'s."""

    def before(self, unit: Unit) -> None:
        if len(unit.deliveries) != 1:
            return
        (delivery,) = unit.deliveries
        span = tracing.handling(delivery.envelope.type, _attributes(delivery))
        span.__enter__()
        unit.held[self] = span

    def after(self, unit: Unit) -> None:
        if (span := unit.held.pop(self, None)) is not None:
            span.__exit__(None, None, None)

    async def on_error(self, unit: Unit, error: BaseException) -> Verdict:
        if (span := unit.held.pop(self, None)) is not None:
            span.__exit__(type(error), error, error.__traceback__)
        return RAISE


class TraceInBatch(Middleware[Delivery]):
    """A batched delivery's span, around its handler, in the trace it was received in."""

    def __init__(self) -> None:
        self._spans: dict[Delivery, Any] = {}

    def before(self, delivery: Delivery) -> None:
        if delivery.batched:
            span = tracing.handling(delivery.envelope.type, _attributes(delivery), parent=delivery.trace_context)
            span.__enter__()
            self._spans[delivery] = span

    def after(self, delivery: Delivery) -> None:
        if (span := self._spans.pop(delivery, None)) is not None:
            span.__exit__(None, None, None)

    async def on_error(self, delivery: Delivery, error: BaseException) -> Verdict:
        if (span := self._spans.pop(delivery, None)) is not None:
            span.__exit__(type(error), error, error.__traceback__)
        return RAISE
