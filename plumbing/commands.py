"""Request/reply on top of the consumer: a command handler returns its result or raises a named error.

The handler runs in the delivery's transaction. Its result is the reply (a handler returns None when the
reply is sent later, e.g. on a webhook, from its own records of the command); a named error (business or
transient) is the reply ``CommandFailed {Error, Cause}``, committed with the inbox row after what the handler
wrote was rolled back; a command past its deadline is refused before its handler runs. The consumer's
middlewares do all three for every route marked ``needs_reply`` (plumbing/middleware/replies.py and
deadline.py).
"""

from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import BaseModel

from plumbing.middleware.deadline import Clock, utcnow
from plumbing.middleware.delivery import MessageContext, Route
from plumbing.middleware.replies import fail

C = TypeVar("C", bound=BaseModel)
CommandHandler = Callable[[MessageContext, C], Awaitable[BaseModel | None]]

__all__ = ["Clock", "CommandHandler", "command_route", "fail", "utcnow"]


def command_route(model: type[C], handler: CommandHandler[C]) -> Route:
    """The route of a command: its payload's model, and the handler whose result is the reply."""
    return Route(model, handler, needs_reply=True)
