"""Settle a unit with the broker: after the commit, publish what it wrote, then acknowledge its deliveries.

The acknowledgement waits for the broker's confirms of the messages the commit wrote, so a slow broker slows
the consumer down instead of piling publishes up in memory; a delivery is never acknowledged before what it
caused is committed and confirmed. A unit that failed is handed back to the broker (requeued); after the
queue's delivery limit the broker dead-letters it. Poison is not settled here: the dead-lettering outside does.
A batch's deliveries are acknowledged with one frame where that is safe (plumbing/middleware/acks.py); a batch
that failed before its commit is left to the stage, which runs its deliveries again one at a time.
"""

import logging
from collections.abc import Awaitable, Callable, Sequence

from plumbing import outbox
from plumbing.errors import PoisonMessage
from plumbing.middleware import acks
from plumbing.middleware.base import HANDLED, RAISE, Middleware, Verdict
from plumbing.middleware.delivery import Unit

log = logging.getLogger(__name__)

#: Publishes the rows a commit wrote, and waits for the broker's confirms (the relay's publish_committed).
CommitHook = Callable[[Sequence[outbox.Pending]], Awaitable[None]]


class Settle(Middleware[Unit]):
    def __init__(self, *, on_committed: CommitHook | None) -> None:
        self.on_committed = on_committed

    async def after(self, unit: Unit) -> None:
        if unit.committed is not None:
            unit.committed()  # the database's part is done: the stage's place goes on to the next unit
        try:
            if self.on_committed is not None and unit.written:
                await self.on_committed(unit.written)
            if len(unit.deliveries) == 1:
                await unit.deliveries[0].message.ack()
            else:
                await acks.ack_all([delivery.message for delivery in unit.deliveries])
        except Exception as error:
            await self._requeue(unit, error)

    async def on_error(self, unit: Unit, error: BaseException) -> Verdict:
        # A batch that failed before its commit is not settled here: the stage runs each delivery again alone.
        if not isinstance(error, Exception) or isinstance(error, PoisonMessage) or len(unit.deliveries) > 1:
            return RAISE
        await self._requeue(unit, error)
        return HANDLED

    async def _requeue(self, unit: Unit, error: Exception) -> None:
        log.error("handler failed; requeueing", exc_info=error)
        for delivery in unit.deliveries:
            await settle(delivery.message.nack(requeue=True))
            delivery.outcome = "requeued"


async def settle(action: Awaitable[None]) -> None:
    """Await an ack or nack whose failure changes nothing: with the channel gone, the broker requeues anyway."""
    try:
        await action
    except Exception:
        log.debug("could not settle delivery", exc_info=True)
