"""The consumer's middlewares, in order, built in one place: three segments, each a list run as a pipeline.

receive, per delivery, outermost first:
  CountOutcomes     counts and times every delivery, whatever became of it: first, so it sees the outcome
  DeadLetter        poison to the dead-letter queue; hands back what nothing else settled
  Decode            envelope, route, payload, sender: what fails is poison for DeadLetter
  BindLogContext    the envelope's ids on every log line from here in
  CommandQueueWait  how long a command waited for this consumer, observed before handling
  -> the stage: with BATCH_MAX 1 one delivery makes one unit; above, the deliveries waiting make one unit
     (Gather, plumbing/middleware/batch.py), and a batch that fails is run again one delivery at a time
unit, per unit of deliveries that share a transaction:
  Settle            after the commit: publish what it wrote, confirmed, then acknowledge; requeue on failure
  HoldWhileDatabaseAway   a lost database connection: wait (backoff) and run the unit again from here in
  Trace             the span, around the transaction (its queries are children), not around the publishing;
                    only when tracing is on (an exporter or TRACE_FILE)
  Transaction       inbox claims, outbox rows and the handlers' effects in one transaction; Rollback answered
  (the queue's own)  inside the transaction, before any handler (the orchestrator locks a batch's sagas in order)
  -> each claimed delivery through the handle segment
handle, per delivery inside the transaction (commands; the others pass through):
  TraceInBatch      a batched delivery's span, in its own trace (only when tracing is on)
  Deadline          refused past its deadline (Command.Expired), before faults, as before the handler
  InjectFaults      only when FAULTS lists a rule
  Replies           innermost, around the handler alone: result -> reply, named error -> Rollback(failure reply)
  -> the route's handler
"""

from collections.abc import Callable, Sequence

import asyncpg

from plumbing import tracing
from plumbing.broker import Broker
from plumbing.faults import FaultPlan
from plumbing.middleware.base import Middleware, Pipeline
from plumbing.middleware.batch import Gather
from plumbing.middleware.deadletter import DeadLetter, RejectHook
from plumbing.middleware.deadline import Deadline
from plumbing.middleware.decode import Decode
from plumbing.middleware.delivery import Delivery, Route, Unit
from plumbing.middleware.faults import InjectFaults
from plumbing.middleware.hold import HoldWhileDatabaseAway
from plumbing.middleware.inbox import Transaction
from plumbing.middleware.logs import BindLogContext
from plumbing.middleware.metrics import CommandQueueWait, CountOutcomes
from plumbing.middleware.replies import Replies
from plumbing.middleware.settle import CommitHook, Settle
from plumbing.middleware.tracing import Trace, TraceInBatch


class Stack:
    """The three segments, each a pipeline of its middlewares (outermost first) around its core: the receiving
    hands each delivery to the stage, the unit runs each claimed delivery through the handle segment, whose
    core is the route's handler."""

    def __init__(
        self,
        *,
        receive: list[Middleware[Delivery]],
        unit: list[Middleware[Unit]],
        handle: list[Middleware[Delivery]],
        batch_max: int = 1,
        batch_units: int = 1,
        queue: str = "",
    ) -> None:
        self.unit = Pipeline(unit, core=self._handle_claimed)
        self.handle = Pipeline(handle, core=_call_handler)
        self.gather: Gather | None = None
        if batch_max > 1:
            self.gather = Gather(run_unit=self.unit.run, batch_max=batch_max, units=batch_units, queue=queue)
        self.receive = Pipeline(receive, core=self._stage if self.gather is None else self.gather.submit)

    async def _stage(self, delivery: Delivery) -> None:
        """Between the receiving and the unit of work, without batching: one delivery makes one unit."""
        await self.unit.run(Unit([delivery]))

    async def _handle_claimed(self, unit: Unit) -> None:
        """Inside the unit's transaction: each delivery claimed (not a duplicate) through the handle segment."""
        for delivery in unit.deliveries:
            if delivery.claimed:
                await self.handle.run(delivery)

    def __repr__(self) -> str:
        return f"Stack(receive={self.receive}, unit={self.unit}, handle={self.handle})"


async def _call_handler(delivery: Delivery) -> None:
    delivery.result = await delivery.route.handler(delivery.context, delivery.payload)


def build_stack(
    *,
    name: str,
    queue: str,
    routes: dict[str, Route],
    pool: asyncpg.Pool,
    broker: Broker,
    max_message_bytes: int,
    default_type: str | None,
    on_reject: RejectHook | None,
    on_committed: CommitHook | None,
    faults: FaultPlan | None,
    stopping: Callable[[], bool],
    batch_max: int = 1,
    batch_units: int = 1,
    in_transaction: Sequence[Middleware[Unit]] = (),
) -> Stack:
    """One queue's middlewares; ``stopping`` says when the consumer drains (a held unit is then requeued).
    ``batch_max`` above 1 gathers the deliveries waiting into units of up to that many, ``batch_units`` of
    them in hand at once; ``in_transaction`` are the queue's own, run in each unit's transaction."""
    handle: list[Middleware[Delivery]] = []
    if batch_max > 1 and tracing.enabled():
        handle.append(TraceInBatch())
    handle.append(Deadline())
    if faults is not None and faults.rules:
        handle.append(InjectFaults(faults))
    handle.append(Replies())
    return Stack(
        receive=[
            CountOutcomes(queue=queue, routes=routes, default_type=default_type),
            DeadLetter(queue=queue, broker=broker, pool=pool, on_reject=on_reject, on_committed=on_committed),
            Decode(routes=routes, default_type=default_type, max_message_bytes=max_message_bytes),
            BindLogContext(),
            CommandQueueWait(queue=queue),
        ],
        unit=[
            Settle(on_committed=on_committed),
            HoldWhileDatabaseAway(stopping=stopping),
            # Without an exporter a span records nothing and no one reads its context, yet opening one cost
            # 10 µs of the consumer's own 60 a delivery (docs/benchmarks.md): only when tracing is on, as faults.
            *([Trace()] if tracing.enabled() else []),
            Transaction(pool=pool, consumer=name, queue=queue),
            *in_transaction,
        ],
        handle=handle,
        batch_max=batch_max,
        batch_units=batch_units,
        queue=queue,
    )
