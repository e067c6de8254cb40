"""Metrics of the consumer: each delivery by outcome and its time, and how long a command waited for it."""

import time
from datetime import UTC, datetime

from plumbing import metrics
from plumbing.middleware.base import Middleware
from plumbing.middleware.delivery import Delivery, Route


class CountOutcomes(Middleware[Delivery]):
    """Outermost: counts every delivery under its outcome, and times it, commit and acknowledgement included."""

    def __init__(self, *, queue: str, routes: dict[str, Route], default_type: str | None) -> None:
        self.queue = queue
        self.routes = routes
        self.default_type = default_type

    async def before(self, delivery: Delivery) -> None:
        delivery.started = time.monotonic()

    async def after(self, delivery: Delivery) -> None:
        message_type = delivery.message.type or self.default_type or "unknown"
        label = message_type if message_type in self.routes else "unknown"  # a label takes bounded values only
        metrics.MESSAGES_HANDLED.labels(self.queue, label, delivery.outcome).inc()
        metrics.HANDLER_DURATION.labels(self.queue, label).observe(time.monotonic() - delivery.started)


class CommandQueueWait(Middleware[Delivery]):
    """A command's wait from its sending (outbox and broker included) to now; its step's timeout counts from
    the sending, so a long wait here is time the service never had (OrderflowCommandQueueWaitHigh)."""

    def __init__(self, *, queue: str) -> None:
        self.queue = queue

    async def before(self, delivery: Delivery) -> None:
        if delivery.route.needs_reply:
            sent = delivery.envelope.occurredAt
            waited = (datetime.now(UTC) - (sent if sent.tzinfo else sent.replace(tzinfo=UTC))).total_seconds()
            metrics.COMMAND_QUEUE_WAIT.labels(self.queue).observe(max(0.0, waited))
