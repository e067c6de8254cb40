"""Request/reply for commands: the handler's result is the reply; a named error is the failure reply.

On a named error (business or transient) the transaction is rolled back, so nothing the handler wrote stays,
and the reply ``CommandFailed {Error, Cause}`` is committed with the inbox row in a new one (``Rollback``,
answered by the transaction middleware), so the requester's Retry and Catch tables decide what next. A
database fault is named as transient, but for a lost connection: that one is not the command's to answer,
and the unit is held until the database is back.
"""

import functools
import logging
from collections.abc import Awaitable

import asyncpg

from plumbing.errors import DB_CONNECTION, NamedError, classify_transient
from plumbing.middleware.base import RAISE, Middleware, Verdict
from plumbing.middleware.delivery import Delivery, MessageContext, Rollback
from plumbing.replies import CommandFailed

log = logging.getLogger(__name__)


class Replies(Middleware[Delivery]):
    """Innermost, around the handler alone: what the reply itself costs fails as any other write does."""

    def after(self, delivery: Delivery) -> Awaitable[object] | None:
        if delivery.route.needs_reply and delivery.result is not None:
            return delivery.context.reply(delivery.result)
        return None

    async def on_error(self, delivery: Delivery, error: BaseException) -> Verdict:
        if not delivery.route.needs_reply:
            return RAISE
        if isinstance(error, NamedError):
            raise Rollback(functools.partial(fail, error=error)) from error
        if isinstance(error, asyncpg.PostgresError | OSError):
            transient = classify_transient(error)
            if transient is not None and transient.error_name != DB_CONNECTION:
                raise Rollback(functools.partial(fail, error=transient)) from error
        return RAISE


async def fail(ctx: MessageContext, *, error: NamedError) -> None:
    """Reply ``CommandFailed`` for ``error`` in the handler's transaction (what it wrote stays, if it did not
    roll back)."""
    log.info("command failed", extra={"fields": {"error": error.error_name, "cause": error.cause[:300]}})
    await ctx.reply(CommandFailed(Error=error.error_name, Cause=error.cause[:1000]))
