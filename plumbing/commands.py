"""Request/reply on top of the consumer: a command handler returns its result or raises a named error.

The handler runs in the delivery's transaction. On success its result is the
reply (a handler returns None when the reply is sent later, e.g. on a webhook,
from its own records of the command); on a named error (business or transient)
the transaction is rolled back, so nothing the handler wrote stays, and the reply
``CommandFailed {Error, Cause}`` is committed with the inbox row in a new one
(``Rollback``), so the requester's Retry and Catch tables decide what next.

A command whose deadline (the envelope's ``x-deadline``) has passed when it is
handled is refused before its handler runs: ``CommandFailed(Command.Expired)``,
committed with the inbox row, with no effect. Its requester has stopped waiting
for it (it timed out, retried or compensated), so acting on it now could undo a
decision already taken; a paused requester that still waits sends it afresh.
"""

import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
from pydantic import BaseModel

from plumbing import metrics
from plumbing.consumer import MessageContext, Rollback, Route
from plumbing.errors import COMMAND_EXPIRED, DB_CONNECTION, NamedError, classify_transient
from plumbing.faults import NO_REPLY
from plumbing.replies import CommandFailed

log = logging.getLogger(__name__)

C = TypeVar("C", bound=BaseModel)
CommandHandler = Callable[[MessageContext, Any], Awaitable[BaseModel | None]]
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def command_route(
    model: type[C], handler: Callable[[MessageContext, C], Awaitable[BaseModel | None]], *, clock: Clock = utcnow
) -> Route:
    async def handle(ctx: MessageContext, command: C) -> None:
        deadline, now = ctx.envelope.deadline, clock()
        if deadline is not None and now > deadline:
            metrics.COMMANDS_EXPIRED.labels(ctx.queue, ctx.envelope.type).inc()
            cause = f"deadline {deadline.isoformat()} passed {(now - deadline).total_seconds():.3f} s ago"
            await fail(ctx, error=NamedError(cause, name=COMMAND_EXPIRED))
            return
        fault = ctx.faults.match(ctx.envelope) if ctx.faults else None
        if fault is not None:
            log.warning("injected fault", extra={"fields": {"error": fault.error}})
            if fault.error == NO_REPLY:
                return  # handled as lost: the requester's timeout decides
            await fail(ctx, error=NamedError(fault.cause, name=fault.error))
            return
        try:
            result = await handler(ctx, command)
        except NamedError as error:
            raise Rollback(functools.partial(fail, error=error)) from error
        except (asyncpg.PostgresError, OSError) as exc:
            transient = classify_transient(exc)
            if transient is None or transient.error_name == DB_CONNECTION:
                raise  # not ours to answer: the consumer holds or requeues the delivery
            raise Rollback(functools.partial(fail, error=transient)) from exc
        if result is not None:
            await ctx.reply(result)

    return Route(model, handle, needs_reply=True)


async def fail(ctx: MessageContext, *, error: NamedError) -> None:
    """Reply ``CommandFailed`` for ``error`` in the handler's transaction (what it wrote stays, if it did not
    roll back)."""
    log.info("command failed", extra={"fields": {"error": error.error_name, "cause": error.cause[:300]}})
    await ctx.reply(CommandFailed(Error=error.error_name, Cause=error.cause[:1000]))
