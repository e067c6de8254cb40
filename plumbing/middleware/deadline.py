"""A command handled after its deadline (the envelope's ``x-deadline``) is refused before its handler runs:
``CommandFailed(Command.Expired)``, committed with the inbox row, with no effect. Its requester has stopped
waiting for it (it timed out, retried or compensated), so acting on it now could undo a decision already
taken; a paused requester that still waits sends it afresh."""

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from plumbing import metrics
from plumbing.errors import COMMAND_EXPIRED, NamedError
from plumbing.middleware.base import Middleware
from plumbing.middleware.delivery import Delivery
from plumbing.middleware.replies import fail

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Deadline(Middleware[Delivery]):
    def __init__(self, *, clock: Clock = utcnow) -> None:
        self.clock = clock

    def before(self, delivery: Delivery) -> Awaitable[None] | None:
        deadline = delivery.envelope.deadline
        if not delivery.route.needs_reply or deadline is None:
            return None
        now = self.clock()
        return self._refuse(delivery, deadline, now) if now > deadline else None

    @staticmethod
    async def _refuse(delivery: Delivery, deadline: datetime, now: datetime) -> None:
        ctx = delivery.context
        metrics.COMMANDS_EXPIRED.labels(ctx.queue, ctx.envelope.type).inc()
        cause = f"deadline {deadline.isoformat()} passed {(now - deadline).total_seconds():.3f} s ago"
        await fail(ctx, error=NamedError(cause, name=COMMAND_EXPIRED))
        delivery.stopped = True
