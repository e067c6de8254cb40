"""orderctl's errors and exit codes: a small exception tree, and ``describe``, which turns any error into the one
line the operator reads and the exit code a script reads.

Commands raise ``UsageError``, ``NotFound`` or ``Unreachable`` where they know what went wrong (which file,
which field, which ORDERFLOW_ variable); ``describe`` also maps the errors commands let through (a missing file,
bad JSON, a refused connection, a failed validation) so that no bad input ends in a traceback. Anything else is
a crash: an orderctl bug, reported as such, with the traceback behind ``--debug``.
"""

import json
import socket
from urllib.parse import urlsplit

import aiormq.exceptions
import asyncpg
from pydantic import ValidationError

#: Exit codes, documented in ``orderctl --help`` and docs/operations.md.
OK = 0
FAILED = 1  # a violation, an order or message not found, orders without an outcome
USAGE = 2  # bad arguments, a bad input file or setting
UNREACHABLE = 3  # the broker or a database cannot be reached, or is not migrated
CRASH = 4  # a bug in orderctl: rerun with --debug and report the traceback
INTERRUPTED = 130

EXIT_CODES = f"""exit codes:
  {OK}  done
  {FAILED}  a violation (check), not found (status, history, dlq, outbox), or orders without an outcome
  {USAGE}  bad arguments, input file or ORDERFLOW_ setting
  {UNREACHABLE}  RabbitMQ or a PostgreSQL database cannot be reached or is not migrated (see ORDERFLOW_*_URL)
  {CRASH}  an orderctl bug: rerun with --debug for the traceback"""


class CtlError(Exception):
    """An error orderctl explains in one line; ``exit_code`` says which kind."""

    exit_code = FAILED


class NotFound(CtlError):
    """The order, saga, queue or row asked for does not exist."""


class UsageError(CtlError):
    exit_code = USAGE


class Unreachable(CtlError):
    exit_code = UNREACHABLE


#: Failures to open a connection: a refused or unresolvable address, a refused login, a missing database.
_CONNECT_ERRORS = (
    ConnectionError,
    socket.gaierror,
    TimeoutError,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ProtocolSyntaxError,  # the broker closed the handshake: a vhost that does not exist
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidPasswordError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)


def is_connect_error(exc: BaseException) -> bool:
    return isinstance(exc, _CONNECT_ERRORS) or (isinstance(exc, OSError) and exc.filename is None)


def why_unreachable(exc: BaseException) -> str:
    """The short reason of a connect error, without the library's wording around it."""
    if isinstance(exc, ConnectionRefusedError) or (
        isinstance(exc, aiormq.exceptions.AMQPConnectionError) and "111" in str(exc.args[:1])
    ):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        return "login refused (user or password)"
    if isinstance(exc, aiormq.exceptions.ProtocolSyntaxError):
        return "the broker closed the connection (does the vhost exist?)"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"{exc}; run `orderctl migrate`"
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc)
    return (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).lower()


def where(url: str) -> str:
    """host:port of a URL, never its password."""
    parts = urlsplit(url)
    return f"{parts.hostname or '?'}:{parts.port or ''}".rstrip(":")


def unreachable(what: str, variable: str, url: str, exc: BaseException) -> Unreachable:
    """e.g. cannot reach PostgreSQL for inventory at 127.0.0.1:5432 (ORDERFLOW_INVENTORY_DATABASE_URL): ..."""
    return Unreachable(f"cannot reach {what} at {where(url)} ({variable}): {why_unreachable(exc)}")


def fields(exc: ValidationError, *, prefix: str = "", limit: int = 3) -> str:
    """A validation error's fields and messages on one line, e.g. ``items.0.quantity: Input should be ...``."""
    parts = []
    for error in exc.errors()[:limit]:
        loc = ".".join(str(x) for x in error["loc"])
        parts.append(f"{prefix}{loc}: {error['msg']}" if loc else f"{prefix.rstrip('.') or 'value'}: {error['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def settings_fields(exc: ValidationError) -> str:
    """A settings validation error names the environment variables, e.g. ORDERFLOW_BASE_HTTP_PORT."""
    parts = []
    for error in exc.errors()[:3]:
        name = str(error["loc"][0]) if error["loc"] else "?"
        variable = name if name.isupper() else f"ORDERFLOW_{name.upper()}"
        parts.append(f"{variable}: {error['msg']}")
    return "; ".join(parts)


def describe(exc: BaseException) -> tuple[str, int]:
    """The one line and the exit code for an error that ended a command."""
    if isinstance(exc, CtlError):
        return str(exc), exc.exit_code
    if isinstance(exc, ValidationError):
        if exc.title == "CtlSettings":
            return f"bad setting: {settings_fields(exc)}", USAGE
        return f"invalid {exc.title}: {fields(exc)}", USAGE
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", USAGE
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {(exc.strerror or str(exc)).lower()}", USAGE
    if is_connect_error(exc):
        return f"cannot connect: {why_unreachable(exc)} (check the ORDERFLOW_*_URL variables)", UNREACHABLE
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedColumnError):
        return f"{exc}: run `orderctl migrate`", UNREACHABLE
    text = " ".join(str(exc).split())
    return f"internal error: {type(exc).__name__}{': ' + text if text else ''} (rerun with --debug)", CRASH
