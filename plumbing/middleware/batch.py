"""The stage between receiving and the unit of work, with batching on: the deliveries waiting make one unit.

Each delivery comes here from its own receiving (the broker's callback, one task per delivery) and waits for a
place: a consumer has at most ``units`` units in their transaction at once. A delivery that finds a place free
goes at once, with whatever else is waiting, up to ``batch_max``: alone when it is alone, so a quiet consumer
adds no delay; under load a unit is what arrived while the others were in their transaction (group commit).
When a unit's transaction has committed (``Unit.committed``, called by Settle), or the unit ended without one,
its place goes to the first delivery still waiting, whose task runs the next unit. The place covers the
database's part only: publishing what a unit wrote, waiting for the broker's confirms and acknowledging go on
beside the next unit's transaction, bounded by the channel's prefetch. (Holding the place until the
acknowledgement made every unit wait for the previous units' confirms: with two places and a few milliseconds
per confirm, an open loop of 15 sagas/s backed the orchestrator's queue up, docs/benchmarks.md.)

A unit of several deliveries that fails before its commit (a handler raised, a named error's ``Rollback``, a
lost connection while draining) was rolled back whole; its deliveries are then run again one unit each, so a
failing delivery costs only itself, and each gets what it would have got alone: requeued, dead-lettered, or
answered with its failure reply. A unit that committed is never run again (a failure to publish or acknowledge
after the commit is settled there: requeued, and the inbox absorbs the redelivery). Each delivery's own outcome
goes back to its own task, through its receiving middlewares (dead-lettering, counting).
"""

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from plumbing import metrics
from plumbing.middleware.delivery import Delivery, Unit

log = logging.getLogger(__name__)


class BatchAbandoned(Exception):
    """The task running this delivery's unit was cancelled before the unit ended: the delivery is requeued."""


_TURN = "turn"  # a waiting delivery's task is to run the next unit
_DONE = "done"  # a waiting delivery was handled in another task's unit


@dataclass(eq=False)
class _Waiting:
    delivery: Delivery
    signal: "asyncio.Future[str]"
    error: BaseException | None = None
    #: Given a place: its task runs the next unit, which it heads; no other unit takes it.
    turn: bool = False


class Gather:
    """Gathers the deliveries waiting into units of at most ``batch_max``, at most ``units`` in hand at once."""

    def __init__(self, *, run_unit: Callable[[Unit], Awaitable[None]], batch_max: int, units: int, queue: str) -> None:
        self.run_unit = run_unit
        self.batch_max = batch_max
        self.units = units
        self.queue = queue
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._in_hand = 0

    async def submit(self, delivery: Delivery) -> None:
        """Handle ``delivery`` in a unit, this task's or another's; raises what its own handling raised."""
        waiting = _Waiting(delivery, asyncio.get_running_loop().create_future())
        if self._in_hand < self.units:
            self._in_hand += 1
            waiting.turn = True
        else:
            self._waiting.append(waiting)
            try:
                signal = await waiting.signal
            except asyncio.CancelledError:
                self._leave(waiting)
                raise
            if signal != _TURN:
                if waiting.error is not None:
                    raise waiting.error
                return
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._hand_on()

        try:
            await self._run(self._take(waiting), release)
        finally:
            release()
        if waiting.error is not None:
            raise waiting.error

    def _take(self, head: _Waiting) -> list[_Waiting]:
        """``head`` and the deliveries waiting longest, up to the bound; not those given a place of their own."""
        batch, rest = [head], collections.deque[_Waiting]()
        for waiting in self._waiting:
            if waiting is head or waiting.signal.cancelled():
                continue
            if len(batch) < self.batch_max and not waiting.turn:
                batch.append(waiting)
            else:
                rest.append(waiting)
        self._waiting = rest
        return batch

    def _leave(self, waiting: _Waiting) -> None:
        """A waiting task was cancelled: take it out, and pass on the place if it had just been given one."""
        if waiting in self._waiting:
            self._waiting.remove(waiting)
            if waiting.turn:
                self._hand_on()

    def _hand_on(self) -> None:
        """Give the place of a unit that ended to the delivery waiting longest without one, or free it."""
        for waiting in self._waiting:
            if not waiting.turn and not waiting.signal.done():
                waiting.turn = True
                waiting.signal.set_result(_TURN)
                return
        self._in_hand -= 1

    async def _run(self, batch: list[_Waiting], release: Callable[[], None]) -> None:
        metrics.BATCH_SIZE.labels(self.queue).observe(len(batch))
        try:
            if len(batch) == 1:
                await self._alone(batch[0], release)
                return
            for waiting in batch:
                waiting.delivery.batched = True
            try:
                await self.run_unit(Unit([w.delivery for w in batch], committed=release))
            except Exception as error:
                log.warning(
                    "a batch failed before its commit; its deliveries one at a time",
                    extra={"fields": {"deliveries": len(batch), "error": f"{type(error).__name__}: {error}"[:300]}},
                )
                metrics.BATCH_FALLBACKS.labels(self.queue).inc()
                for waiting in batch:  # one after another, in this unit's place until the last has committed
                    _afresh(waiting.delivery)
                    await self._alone(waiting, release if waiting is batch[-1] else None)
        except BaseException:
            for waiting in batch:
                if waiting.error is None:
                    waiting.error = BatchAbandoned("the unit's task was cancelled")
            raise
        finally:
            for waiting in batch:
                if not waiting.signal.done():
                    waiting.signal.set_result(_DONE)

    async def _alone(self, waiting: _Waiting, release: Callable[[], None] | None) -> None:
        try:
            await self.run_unit(Unit([waiting.delivery], committed=release))
        except Exception as error:
            waiting.error = error


def _afresh(delivery: Delivery) -> None:
    """Forget what a rolled-back batch left on a delivery, before it runs alone."""
    delivery.stopped = False
    delivery.batched = False
    delivery.claimed = False
    delivery.result = None
    delivery.outcome = "ok"
