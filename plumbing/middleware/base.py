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

``before`` and ``after`` are plain methods where they do no I/O and coroutines where they do: the pipeline
awaits what a hook returns, if anything. Every delivery passes a dozen hooks, and a coroutine for each
one that only reads the clock or binds a log field cost measurably (docs/benchmarks.md).
"""

import enum
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar


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

    def before(self, subject: S) -> Awaitable[object] | None:
        """On the way in, before the middlewares after this one."""
        return None

    def after(self, subject: S) -> Awaitable[object] | None:
        """On the way out when nothing failed inside, after the middlewares after this one."""
        return None

    async def on_error(self, subject: S, error: BaseException) -> Verdict:
        """On the way out when something inside failed: RAISE, HANDLED or RETRY (see the module's docstring)."""
        return RAISE

    def __repr__(self) -> str:
        return type(self).__name__


class Pipeline(Generic[S]):
    """Middlewares around a core, run forward then in reverse.

    Run as a loop, not as nested calls: a chain of nested coroutines is resumed frame by frame at every await
    inside it (each database round trip), so nesting would make every middleware cost on every round trip.
    Hooks a middleware leaves as the base class's are not called at all."""

    def __init__(self, middlewares: Sequence[Middleware[S]], core: Callable[[S], Awaitable[None]]) -> None:
        self.middlewares = tuple(middlewares)
        self.core = core
        self._before = [_own(m, "before") for m in self.middlewares]
        self._after = [_own(m, "after") for m in self.middlewares]
        self._on_error = [_own(m, "on_error") for m in self.middlewares]

    async def run(self, subject: S) -> None:
        befores, afters, on_errors, count = self._before, self._after, self._on_error, len(self.middlewares)
        entered = 0  # the middlewares whose before completed and who have not unwound yet
        while True:
            error: BaseException | None = None
            try:
                while entered < count:
                    before = befores[entered]
                    if before is not None and (waiting := before(subject)) is not None:
                        await waiting
                    entered += 1
                    if subject.stopped:
                        break
                else:
                    await self.core(subject)
            except BaseException as raised:
                error = raised
            retry = False
            while entered:
                entered -= 1
                if error is None:
                    after = afters[entered]
                    if after is not None:
                        try:
                            if (waiting := after(subject)) is not None:
                                await waiting
                        except BaseException as raised:
                            error = raised
                    continue
                on_error = on_errors[entered]
                if on_error is None:
                    continue
                try:
                    verdict = await on_error(subject, error)
                except BaseException as raised:  # raised in the first one's place
                    error = raised
                    continue
                if verdict is HANDLED:
                    error = None
                elif verdict is RETRY:
                    subject.stopped = False
                    retry = True
                    break
            if retry:
                continue
            if error is not None:
                raise error
            return

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(map(repr, self.middlewares))})"


def _own(middleware: Middleware[S], hook: str) -> Callable[..., Awaitable[Any]] | None:
    """The middleware's hook, or None where it keeps the base class's, which does nothing."""
    if getattr(type(middleware), hook) is getattr(Middleware, hook):
        return None
    return getattr(middleware, hook)
