"""The connections orderctl opens, each failure named by the ORDERFLOW_ variable that points at it."""

import contextlib
from collections.abc import Iterator

import aio_pika
import asyncpg

from orderctl.config import CtlSettings
from orderctl.errors import is_connect_error, unreachable
from plumbing.db import connect

AMQP_VARIABLE = "ORDERFLOW_AMQP_URL"


def database_variable(service: str) -> str:
    """The variable holding a process's database URL (``admin``: the one that creates the others)."""
    return f"ORDERFLOW_{service.upper()}_DATABASE_URL"


@contextlib.contextmanager
def reaching(what: str, variable: str, url: str) -> Iterator[None]:
    """Turn a failure to connect inside the block into ``Unreachable`` naming ``what``, ``variable`` and the host."""
    try:
        yield
    except Exception as exc:
        if is_connect_error(exc):
            raise unreachable(what, variable, url, exc) from exc
        raise


def reaching_database(settings: CtlSettings, service: str) -> contextlib.AbstractContextManager[None]:
    url = settings.database_url(service)
    return reaching(f"PostgreSQL for {service}", database_variable(service), url)


def reaching_broker(url: str) -> contextlib.AbstractContextManager[None]:
    return reaching("RabbitMQ", AMQP_VARIABLE, url)


async def database(settings: CtlSettings, service: str) -> asyncpg.Connection:
    """A connection to ``service``'s database (orchestrator, inventory, payment, orders, notify, admin)."""
    with reaching_database(settings, service):
        return await connect(settings.database_url(service))


async def broker(url: str, *, name: str = "orderctl") -> aio_pika.abc.AbstractConnection:
    """A plain (not robust) connection to the broker: a command gives up rather than reconnect forever."""
    with reaching_broker(url):
        return await aio_pika.connect(url, client_properties={"connection_name": name})
