"""The unit's transaction: its deliveries claimed in the inbox, their handlers' effects and their outbox rows
committed together, or none of it.

``before`` takes a connection, starts the transaction, collects the outbox rows it will write, and claims each
delivery's message id in the inbox: a message handled before is a duplicate, whose handler does not run (its
claim counts the duplicate, and commits). ``after`` commits, and leaves the rows written for the settling
outside to publish. On an error the transaction rolls back; a ``Rollback`` from a handler is answered in a
new transaction on the same connection: the message is claimed afresh (if a copy was handled meanwhile,
nothing more is written) and the rollback's ``then`` runs (a command's failure reply). A unit of several
deliveries (a batch) claims them in one statement and writes its outbox rows in one INSERT before its
commit; on any error it rolls back whole, and the stage runs its deliveries again one unit each.
"""

import contextlib
from dataclasses import dataclass
from typing import Any

import asyncpg

from plumbing import inbox, outbox
from plumbing.middleware.base import HANDLED, RAISE, Middleware, Verdict
from plumbing.middleware.delivery import Delivery, MessageContext, Rollback, Unit


@dataclass
class _Open:
    """A unit's open transaction, entered by hand as ``async with conn.transaction()`` inside
    ``with outbox.collecting()`` would be (the hooks are its two halves), and what it wrote."""

    conn: asyncpg.Connection
    collecting: contextlib.AbstractContextManager[outbox.Written]
    transaction: Any  # asyncpg's Transaction: an async context manager that commits or rolls back
    written: outbox.Written


class Transaction(Middleware[Unit]):
    def __init__(self, *, pool: asyncpg.Pool, consumer: str, queue: str) -> None:
        self.pool = pool
        self.consumer = consumer
        self.queue = queue

    async def before(self, unit: Unit) -> None:
        acquired = self.pool.acquire()
        conn = await acquired.__aenter__()
        try:
            unit.held[self] = (acquired, await self._begin(conn, unit.deliveries))
        except BaseException as error:
            await acquired.__aexit__(type(error), error, error.__traceback__)
            raise

    async def after(self, unit: Unit) -> None:
        acquired, open_ = unit.held.pop(self)
        try:
            await self._end(open_, None)  # commit
        except BaseException as error:
            await acquired.__aexit__(type(error), error, error.__traceback__)
            raise
        unit.written = open_.written.messages()
        await acquired.__aexit__(None, None, None)

    async def on_error(self, unit: Unit, error: BaseException) -> Verdict:
        acquired, open_ = unit.held.pop(self)
        verdict = RAISE
        try:
            await self._end(open_, error)  # roll back
            # A unit of several deliveries is run again one delivery at a time (plumbing/middleware/batch.py).
            if isinstance(error, Rollback) and len(unit.deliveries) == 1:
                await self._answer(open_.conn, unit, error)
                verdict = HANDLED
        except BaseException as failure:
            await acquired.__aexit__(type(failure), failure, failure.__traceback__)
            raise
        await acquired.__aexit__(None, None, None)
        return verdict

    async def _answer(self, conn: asyncpg.Connection, unit: Unit, rollback: Rollback) -> None:
        """The rollback's ``then`` in a new transaction, the message claimed afresh: if a copy of it was handled
        meanwhile, nothing more is written."""
        open_ = await self._begin(conn, unit.deliveries)
        (delivery,) = unit.deliveries
        try:
            if delivery.claimed:
                await rollback.then(delivery.context)
        except BaseException as error:
            await self._end(open_, error)
            raise
        await self._end(open_, None)
        unit.written = open_.written.messages()

    async def _begin(self, conn: asyncpg.Connection, deliveries: list[Delivery]) -> _Open:
        """Start a transaction collecting its outbox rows, and claim every delivery in it. A batch claims its
        deliveries in one statement, and defers its outbox rows to one INSERT before its commit."""
        batch = len(deliveries) > 1
        collecting = outbox.collecting(defer=batch)
        written = collecting.__enter__()
        transaction = conn.transaction()
        try:
            await transaction.__aenter__()
        except BaseException:
            collecting.__exit__(None, None, None)
            raise
        open_ = _Open(conn, collecting, transaction, written)
        try:
            if batch:
                claims = await inbox.claim_many(conn, self.consumer, [d.envelope.messageId for d in deliveries])
            else:
                claims = [await inbox.claim(conn, self.consumer, deliveries[0].envelope.messageId)]
            for delivery, claimed in zip(deliveries, claims, strict=True):
                delivery.claimed = claimed
                delivery.outcome = "ok" if claimed else "duplicate"
                if claimed:
                    delivery.context = MessageContext(
                        envelope=delivery.envelope, conn=conn, consumer=self.consumer, queue=self.queue
                    )
        except BaseException as error:
            await self._end(open_, error)
            raise
        return open_

    @staticmethod
    async def _end(open_: _Open, error: BaseException | None) -> None:
        """Commit (no error) or roll back, then stop collecting."""
        try:
            if error is None:
                if open_.written.deferred:  # a batch's outbox rows, in one INSERT
                    try:
                        await outbox.flush(open_.conn, open_.written)
                    except BaseException as failure:
                        await open_.transaction.__aexit__(type(failure), failure, failure.__traceback__)
                        raise
                await open_.transaction.__aexit__(None, None, None)
            else:
                await open_.transaction.__aexit__(type(error), error, error.__traceback__)
        finally:
            open_.collecting.__exit__(None, None, None)
