"""The exception tree every service shares.

Error names are strings so they cross the wire: a failed command is answered
with ``{"Error": name, "Cause": text}`` and the workflow definition's Retry
and Catch tables match on the name, as Step Functions matches Lambda errors.
"""

import asyncio

import asyncpg


class NamedError(Exception):
    """An error that is replied to the requester under ``error_name``."""

    error_name = "States.TaskFailed"

    def __init__(self, cause: str, *, name: str | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        if name:
            self.error_name = name


class BusinessError(NamedError):
    """A final answer (InsufficientStockError, PaymentDeclined, ...): never retried by the definition."""


class TransientError(NamedError):
    """A passing fault (a service unavailable, a throttle): the definition's Retry handles it."""


class Compensated(BusinessError):
    """A forward command that arrives after its order was compensated (a tombstone says so): it has no effect.
    Such a command is late by definition (its step timed out, or it was replayed), so its reply is ignored."""

    error_name = "Command.Compensated"


class PoisonMessage(Exception):
    """A message that can never be handled: dead-lettered at once with this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Our counterparts of the guide's Lambda.* and DynamoDB throttling names.
DB_SERIALIZATION = "Database.SerializationFailure"
DB_DEADLOCK = "Database.DeadlockDetected"
DB_LOCK_TIMEOUT = "Database.LockTimeout"
DB_CONNECTION = "Database.ConnectionError"
DB_TOO_MANY_CONNECTIONS = "Database.TooManyConnections"
SERVICE_UNAVAILABLE = "Service.Unavailable"
SERVICE_THROTTLED = "Service.Throttled"
#: A command handled after its deadline (the envelope's ``x-deadline``): refused unhandled, since the requester
#: stopped waiting for it; the orchestrator sends it again if its step still waits (the saga clock may have paused).
COMMAND_EXPIRED = "Command.Expired"


def classify_transient(exc: BaseException) -> TransientError | None:
    """Name a database or connection fault as transient, or None when it is not one."""
    if isinstance(exc, TransientError):
        return exc
    table: list[tuple[type[BaseException] | tuple[type[BaseException], ...], str]] = [
        (asyncpg.SerializationError, DB_SERIALIZATION),
        (asyncpg.DeadlockDetectedError, DB_DEADLOCK),
        ((asyncpg.LockNotAvailableError, asyncpg.QueryCanceledError), DB_LOCK_TIMEOUT),
        (asyncpg.TooManyConnectionsError, DB_TOO_MANY_CONNECTIONS),
        (
            (
                asyncpg.PostgresConnectionError,
                asyncpg.InterfaceError,
                asyncpg.CannotConnectNowError,
                ConnectionError,
                OSError,
                asyncio.TimeoutError,
            ),
            DB_CONNECTION,
        ),
    ]
    for types, name in table:
        if isinstance(exc, types):
            return TransientError(str(exc) or type(exc).__name__, name=name)
    return None
