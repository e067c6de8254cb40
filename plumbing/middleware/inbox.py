"""The unit's transaction: its deliveries claimed in the inbox, their handlers' effects and their outbox rows
committed together, or none of it.

``before`` takes a connection, starts the transaction, collects the outbox rows it will write, and claims each
delivery's message id in the inbox: a message handled before is a duplicate, whose handler does not run (its
claim counts the duplicate, and commits). ``after`` commits, and leaves the rows written for the settling
outside to publish. On an error the transaction rolls back; a ``Rollback`` from a handler is answered in a
new transaction on the same connection: the message is claimed afresh (if a copy was handled meanwhile,
nothing more is written) and the rollback's ``then`` runs (a command's failure reply).
"""

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from plumbing import inbox, outbox
from plumbing.middleware.base import HANDLED, RAISE, Middleware, Verdict
from plumbing.middleware.delivery import Delivery, MessageContext, Rollback, Unit


@dataclass
class _Open:
    """One open transaction of a unit: how to leave the connection and the transaction, and what it wrote."""

    connection: contextlib.AbstractAsyncContextManager[Any]
    conn: asyncpg.Connection
    transaction: contextlib.AbstractAsyncContextManager[outbox.Written]
    written: outbox.Written


class Transaction(Middleware[Unit]):
    def __init__(self, *, pool: asyncpg.Pool, consumer: str, queue: str) -> None:
        self.pool = pool
        self.consumer = consumer
        self.queue = queue

    async def before(self, unit: Unit) -> None:
        connection = self.pool.acquire()
        conn = await connection.__aenter__()
        transaction = self._claiming(conn, unit.deliveries)
        try:
            written = await transaction.__aenter__()
        except BaseException as error:
            await connection.__aexit__(type(error), error, error.__traceback__)
            raise
        unit.held[self] = _Open(connection, conn, transaction, written)

    async def after(self, unit: Unit) -> None:
        held: _Open = unit.held.pop(self)
        try:
            await held.transaction.__aexit__(None, None, None)  # commit
            unit.written = held.written.messages()
        except BaseException as error:
            await held.connection.__aexit__(type(error), error, error.__traceback__)
            raise
        await held.connection.__aexit__(None, None, None)

    async def on_error(self, unit: Unit, error: BaseException) -> Verdict:
        held: _Open = unit.held.pop(self)
        verdict = RAISE
        try:
            await held.transaction.__aexit__(type(error), error, error.__traceback__)  # roll back
            # A unit of several deliveries falls back to one delivery at a time (issue 16 item 1).
            if isinstance(error, Rollback) and len(unit.deliveries) == 1:
                async with self._claiming(held.conn, unit.deliveries) as written:
                    if unit.deliveries[0].claimed:
                        await error.then(unit.deliveries[0].context)
                unit.written = written.messages()
                verdict = HANDLED
        except BaseException as failure:
            await held.connection.__aexit__(type(failure), failure, failure.__traceback__)
            raise
        await held.connection.__aexit__(None, None, None)
        return verdict

    @contextlib.asynccontextmanager
    async def _claiming(self, conn: asyncpg.Connection, deliveries: list[Delivery]) -> AsyncIterator[outbox.Written]:
        """A transaction with every delivery claimed, collecting its outbox rows; commits when the block ends."""
        with outbox.collecting() as written:
            async with conn.transaction():
                for delivery in deliveries:
                    delivery.claimed = await inbox.claim(conn, self.consumer, delivery.envelope.messageId)
                    delivery.outcome = "ok" if delivery.claimed else "duplicate"
                    if delivery.claimed:
                        delivery.context = MessageContext(
                            envelope=delivery.envelope, conn=conn, consumer=self.consumer, queue=self.queue
                        )
                yield written
