"""A batch of replies in one transaction: every saga it touches locked first, in one statement, in order.

With BATCH_MAX above 1 the orchestrator applies the replies waiting on its queue in one transaction
(plumbing/middleware/batch.py). Each reply's transition locks its saga row (``runner.lock_saga``); taken one
after another in delivery order, two batches holding replies of the same two sagas in opposite orders would
each hold one row and wait for the other's (a deadlock, broken by PostgreSQL after a second, and the batch
handled again one reply at a time). So before any handler runs, ``LockSagasInOrder`` locks every saga the
batch's replies name, ordered by order id, in one statement: every batch takes its locks in the same order,
a timer or an API action takes one saga's only, and the rows it read serve the first transition of each saga
(``take_locked``), so locking a batch costs one round trip in place of one per reply.
"""

from contextvars import ContextVar

import asyncpg

from plumbing.middleware.base import RAISE, Middleware, Verdict
from plumbing.middleware.delivery import Unit

#: The saga rows a batch locked and has not used yet, on its connection.
_locked: ContextVar[tuple[asyncpg.Connection, dict[str, asyncpg.Record]] | None] = ContextVar(
    "orderflow_batch_locked", default=None
)


def take_locked(conn: asyncpg.Connection, order_id: str) -> asyncpg.Record | None:
    """The row of ``order_id`` as the batch running on ``conn`` locked it, once: a second transition of the same
    saga in the batch reads the row its first one wrote (the lock is this transaction's already)."""
    held = _locked.get()
    if held is None or held[0] is not conn:
        return None
    return held[1].pop(order_id, None)


class LockSagasInOrder(Middleware[Unit]):
    """In a batch's transaction, before its handlers: lock the sagas its replies name, by order id."""

    async def before(self, unit: Unit) -> None:
        if len(unit.deliveries) < 2:
            return
        order_ids = sorted({d.envelope.correlationId for d in unit.deliveries if d.claimed})
        conn = next(d.context.conn for d in unit.deliveries if d.claimed) if order_ids else None
        if conn is None:
            return
        # ORDER BY under FOR UPDATE: the rows are locked as the sort returns them.
        rows = await conn.fetch(
            "SELECT * FROM saga WHERE order_id = ANY($1::text[]) ORDER BY order_id FOR UPDATE", order_ids
        )
        unit.held[self] = _locked.set((conn, {row["order_id"]: row for row in rows}))

    async def after(self, unit: Unit) -> None:
        if (token := unit.held.pop(self, None)) is not None:
            _locked.reset(token)

    async def on_error(self, unit: Unit, error: BaseException) -> Verdict:
        await self.after(unit)
        return RAISE
