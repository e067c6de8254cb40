"""Middleware: one concern of handling a message, as hooks a pipeline runs around the work, after dramatiq's.

A pipeline holds an ordered list of middlewares and a core (the work itself). It runs every ``before``
forward, then the core, then every ``after`` in reverse: the first middleware is the outermost, it sees the
subject first and last. An error, from a ``before``, the core or an ``after``, unwinds through the
``on_error`` of each middleware outside the place it was raised (their ``before`` completed), innermost
first. Each answers:

- ``RAISE`` (the default): the error goes on outward;
- ``HANDLED``: the middleware dealt with it, in place of its ``after``; the ones outside it see success;
- ``RETRY``: run this middleware's ``before`` again, and everything inside it (a unit held while the
  database is away).

``on_error`` may also raise another error in the first one's place (a named error becomes a ``Rollback``).
A ``before`` that sets ``subject.stopped`` ends the way inward: the middlewares inside it and the core are
skipped, and the ``after`` hooks run from that middleware outward (a command refused at its deadline).

The pipeline is generic in its subject: the consumer runs one over each ``Delivery``, one over each
``Unit`` of deliveries that share a transaction, and one over each delivery inside that transaction
(plumbing/middleware/stack.py). Cancellation also unwinds through ``on_error``, so a middleware that holds
something (a connection, a span) gives it back; a middleware that settles deliveries acts on ``Exception``
only.
"""

import enum
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, Protocol, TypeVar


class Verdict(enum.Enum):
    """What ``on_error`` did with an error."""

    RAISE = "raise"
    HANDLED = "handled"
    RETRY = "retry"


RAISE, HANDLED, RETRY = Verdict.RAISE, Verdict.HANDLED, Verdict.RETRY


class Subject(Protocol):
    stopped: bool


S = TypeVar("S", bound=Subject)


class Middleware(Generic[S]):
    """A concern of handling, as hooks; a subclass overrides the ones it needs."""

    async def before(self, subject: S) -> None:
        """On the way in, before the middlewares after this one."""

    async def after(self, subject: S) -> None:
        """On the way out when nothing failed inside, after the middlewares after this one."""

    async def on_error(self, subject: S, error: BaseException) -> Verdict:
        """On the way out when something inside failed: RAISE, HANDLED or RETRY (see the module's docstring)."""
        return RAISE

    def __repr__(self) -> str:
        return type(self).__name__


class Pipeline(Generic[S]):
    """Middlewares around a core, run forward then in reverse."""

    def __init__(self, middlewares: Sequence[Middleware[S]], core: Callable[[S], Awaitable[None]]) -> None:
        self.middlewares = tuple(middlewares)
        self.core = core

    async def run(self, subject: S) -> None:
        await self._from(0, subject)

    async def _from(self, index: int, subject: S) -> None:
        if index == len(self.middlewares):
            await self.core(subject)
            return
        middleware = self.middlewares[index]
        while True:
            await middleware.before(subject)
            try:
                if not subject.stopped:
                    await self._from(index + 1, subject)
            except BaseException as error:
                verdict = await middleware.on_error(subject, error)
                if verdict is RETRY:
                    subject.stopped = False
                    continue
                if verdict is RAISE:
                    raise
                return
            await middleware.after(subject)
            return

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(map(repr, self.middlewares))})"
