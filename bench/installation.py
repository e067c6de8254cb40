"""The installation a load run drives: a private one built for the run (and removed after it), or a running one
named by the ORDERFLOW_* environment (``--external``).

A private installation is what the tests build (orderctl/sandbox.py): a fresh vhost, five fresh databases,
free ports, every process and the development servers under the supervisor of ``orderctl up``. The floor is
measured first, on the fresh vhost, while none of our processes runs yet.
"""

import asyncio
import contextlib
import json
import os
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from bench.floor import Floor, measure_floor
from bench.loadgen import RECORD_ERROR_FAULT, catalog
from orderctl.config import CtlSettings
from orderctl.sandbox import (
    Stack,
    all_ready,
    create_databases,
    create_vhost,
    database_names,
    delete_vhost,
    drop_databases,
    eventually,
    running,
    seed,
    settings_for,
    stack_children,
)

#: Row name of the PostgreSQL backends serving the installation's databases.
BACKENDS = "postgres backends"
#: How long teardown retries while a server is away (the outage tests stop one for up to 90 s).
TEARDOWN_PATIENCE_SECONDS = 180.0


@dataclass
class Installation:
    settings: CtlSettings
    stack: Stack | None
    """None for an external installation: its processes are not ours to watch."""
    floor: Floor | None
    _admin_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """The sampler and the window's edges share one admin connection, which runs one query at a time."""

    def describe(self) -> dict[str, object]:
        """For the report: no URL, since one may carry a password."""
        return {
            "kind": "external" if self.stack is None else "private",
            "vhost": urllib.parse.unquote(urllib.parse.urlsplit(self.settings.amqp_url).path.lstrip("/")) or "/",
            "databases": database_names(self.settings),
        }

    def process_names(self) -> list[str]:
        return [] if self.stack is None else [child.name for child in self.stack.supervisor.children]

    async def pids(self, admin: asyncpg.Connection | None) -> dict[str, list[int]]:
        """Current pids by row: each supervised process (a restart changes its pid), this load generator, and
        the PostgreSQL backends connected to the installation's databases."""
        pids: dict[str, list[int]] = {"bench.load": [os.getpid()]}
        if self.stack is not None:
            for child in self.stack.supervisor.children:
                alive = child.process is not None and child.process.returncode is None
                pids[child.name] = [child.process.pid] if alive and child.process else []
        if admin is not None:
            query = "SELECT pid FROM pg_stat_activity WHERE datname = ANY($1::text[])"
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                async with self._admin_lock:
                    rows = await admin.fetch(query, database_names(self.settings))
                pids[BACKENDS] = [r["pid"] for r in rows]
        return pids

    async def stop_processes(self) -> None:
        """Stop every process and wait until PostgreSQL has seen their connections end: a backend reports the
        counts it still holds to pg_stat_database as it exits."""
        if self.stack is None:
            return
        await self.stack.supervisor.stop()
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = ANY($1::text[])"
        conn = await asyncpg.connect(self.settings.admin_database_url)
        try:

            async def gone() -> bool:
                return not await conn.fetchval(query, database_names(self.settings))

            with contextlib.suppress(AssertionError):  # still there after 10 s: count what has arrived
                await eventually(gone, timeout=10.0, what="the processes' backends to exit")
        finally:
            await conn.close()

    def restarts(self) -> dict[str, int]:
        return {} if self.stack is None else {c.name: c.restarts for c in self.stack.supervisor.children}


async def floor_or_none(amqp_url: str, admin_dsn: str, seconds: float) -> Floor | None:
    if seconds <= 0:
        return None
    print(f"measuring the floor ({seconds:g} s broker, then {seconds:g} s PostgreSQL) ...", file=sys.stderr)
    return await measure_floor(amqp_url, admin_dsn, seconds=seconds)


@contextlib.asynccontextmanager
async def private(
    *, tmp: Path, floor_seconds: float, keep: bool, extra_env: dict[str, dict[str, str]] | None = None
) -> AsyncIterator[Installation]:
    """Build a private installation; on exit (error and Ctrl-C included) stop every process, then drop the
    databases and the vhost unless ``keep``. ``extra_env`` adds environment to the processes it names (for
    example ``{"orchestrator": {"WORKFLOW_FILE": ...}}``), over what the run sets itself."""
    async with contextlib.AsyncExitStack() as cleanup:
        amqp_url = await asyncio.to_thread(create_vhost, "orderflow-bench")
        removals = contextlib.AsyncExitStack()
        removals.push_async_callback(_retrying, "delete vhost " + amqp_url, asyncio.to_thread, delete_vhost, amqp_url)
        cleanup.push_async_callback(_remove, removals, keep=keep, tmp=tmp)
        admin_dsn = CtlSettings().admin_database_url
        floor = await floor_or_none(amqp_url, admin_dsn, floor_seconds)
        settings = settings_for(amqp_url, tmp=tmp, prefix="of_b", admin_dsn=admin_dsn)
        removals.push_async_callback(_retrying, "drop databases", _drop_all, settings)
        await create_databases(settings)
        # The record_error path: the orders process answers CreateOrderRecord with OrderRecordError for order
        # ids with the suffix, as the tests' shared stack does (tests/conftest.py).
        env = {"orders": {"FAULTS": json.dumps([RECORD_ERROR_FAULT])}}
        for name, values in (extra_env or {}).items():
            env[name] = {**env.get(name, {}), **values}
        print(f"starting a private installation (logs in {tmp / 'log'}) ...", file=sys.stderr)
        stack = await cleanup.enter_async_context(running(settings, stack_children(settings, env), tmp / "log"))
        await seed(settings, catalog())
        yield Installation(settings, stack, floor)


@contextlib.asynccontextmanager
async def external(*, floor_seconds: float) -> AsyncIterator[Installation]:
    """A running installation configured by the ORDERFLOW_* environment; nothing is started or removed."""
    settings = CtlSettings()
    floor = await floor_or_none(settings.amqp_url, settings.admin_database_url, floor_seconds)
    if not await all_ready(settings):
        raise RuntimeError(f"not every process answers /readyz 200 on ports from {settings.base_http_port}")
    # The bench's own products (bench-*) are set in the catalog; the shop's own products are left alone.
    await seed(settings, catalog())
    yield Installation(settings, None, floor)


async def _remove(removals: contextlib.AsyncExitStack, *, keep: bool, tmp: Path) -> None:
    if keep:
        removals.pop_all()
        print(f"kept the databases, the vhost and the logs in {tmp}", file=sys.stderr)
        return
    await removals.aclose()


async def _drop_all(settings: CtlSettings) -> None:
    failed = await drop_databases(settings)
    if failed:
        raise RuntimeError(f"could not drop {', '.join(failed)}")


async def _retrying(what: str, action: Callable[..., Awaitable[object]], *args: object) -> None:
    """Teardown must not give up because another test stopped a server for a minute: retry, then say what is
    left behind."""
    deadline = time.monotonic() + TEARDOWN_PATIENCE_SECONDS
    while True:
        try:
            await action(*args)
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                print(f"teardown: could not {what}: {exc!r}; remove it by hand", file=sys.stderr)
                return
            print(f"teardown: {what} failed ({exc!r}); retrying", file=sys.stderr)
            await asyncio.sleep(5.0)
