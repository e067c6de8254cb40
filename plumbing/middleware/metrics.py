"""Metrics of the consumer: each delivery by outcome and its time, and how long a command waited for it.

Each middleware keeps the labelled series it has used: asking prometheus_client for a series by its labels
takes a lock and a lookup on every delivery, a dictionary of our own one lookup. Their labels are bounded
(the queue's routes and "unknown", four outcomes), so the dictionaries are too.
"""

import time
from datetime import UTC, datetime
from typing import Any

from plumbing import metrics
from plumbing.middleware.base import Middleware
from plumbing.middleware.delivery import Delivery, Route


class CountOutcomes(Middleware[Delivery]):
    """Outermost: counts every delivery under its outcome, and times it, commit and acknowledgement included."""

    def __init__(self, *, queue: str, routes: dict[str, Route], default_type: str | None) -> None:
        self.queue = queue
        self.routes = routes
        self.default_type = default_type
        self._handled: dict[tuple[str, str], Any] = {}
        self._durations: dict[str, Any] = {}

    def before(self, delivery: Delivery) -> None:
        delivery.started = time.monotonic()

    def after(self, delivery: Delivery) -> None:
        message_type = delivery.message.type or self.default_type or "unknown"
        label = message_type if message_type in self.routes else "unknown"  # a label takes bounded values only
        handled = self._handled.get((label, delivery.outcome))
        if handled is None:
            handled = metrics.MESSAGES_HANDLED.labels(self.queue, label, delivery.outcome)
            self._handled[label, delivery.outcome] = handled
        handled.inc()
        duration = self._durations.get(label)
        if duration is None:
            duration = self._durations[label] = metrics.HANDLER_DURATION.labels(self.queue, label)
        duration.observe(time.monotonic() - delivery.started)


class CommandQueueWait(Middleware[Delivery]):
    """A command's wait from its sending (outbox and broker included) to now; its step's timeout counts from
    the sending, so a long wait here is time the service never had (OrderflowCommandQueueWaitHigh)."""

    def __init__(self, *, queue: str) -> None:
        self.queue = queue
        self._waits: Any = None  # made at the first command: a queue of replies exports no such series

    def before(self, delivery: Delivery) -> None:
        if delivery.route.needs_reply:
            sent = delivery.envelope.occurredAt
            waited = (datetime.now(UTC) - (sent if sent.tzinfo else sent.replace(tzinfo=UTC))).total_seconds()
            if self._waits is None:
                self._waits = metrics.COMMAND_QUEUE_WAIT.labels(self.queue)
            self._waits.observe(max(0.0, waited))
