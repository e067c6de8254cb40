"""Run one Orderflow process: connect, consume, relay the outbox, serve health, drain on SIGTERM."""

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import uvloop
from aiohttp import web

from plumbing import metrics, retention
from plumbing.backoff import DATABASE_CONNECT
from plumbing.broker import Broker
from plumbing.consumer import Consumer, RejectHook, Route, Unit
from plumbing.db import create_pool
from plumbing.faults import FaultPlan
from plumbing.http import SCRAPE_HOOKS, Site, make_app, serve
from plumbing.logs import setup_logging
from plumbing.middleware.base import Middleware
from plumbing.migrations import PLUMBING_MIGRATIONS, MigrationSet
from plumbing.relay import OutboxRelay
from plumbing.settings import ProcessSettings
from plumbing.topology import COMMANDS_EXCHANGE, declare_consumer_queue, q_name
from plumbing.tracing import setup_tracing, shutdown_tracing

log = logging.getLogger(__name__)


@dataclass
class QueueSpec:
    """A queue this process consumes and how to handle what arrives on it."""

    queue: str
    bindings: list[tuple[str, str]]
    routes: dict[str, Route]
    default_type: str | None = None
    on_reject: RejectHook | None = None
    #: The queue's own middlewares, run in each unit's transaction before its handlers.
    in_transaction: list[Middleware[Unit]] = field(default_factory=list)


@dataclass
class Process:
    """The wiring every process shares; a service supplies its queues and extras."""

    name: str
    settings: ProcessSettings
    queues: list[QueueSpec] = field(default_factory=list)
    routes: Callable[[web.Application], None] | None = None
    #: Applications served on ports of their own (the orchestrator's API), closed first when draining.
    sites: list[Site] = field(default_factory=list)
    background: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    #: Tables the service adds to bounded retention; the inbox is always purged (plumbing/retention.py).
    retention_rules: list[retention.Rule] = field(default_factory=list)
    on_start: Callable[["Process"], Awaitable[None]] | None = None
    pool: asyncpg.Pool | None = None
    broker: Broker | None = None
    relay: OutboxRelay | None = None
    draining: bool = False
    started: bool = False
    consumers: list[Consumer] = field(default_factory=list)
    cleanup: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def ready(self) -> tuple[bool, dict[str, bool]]:
        database = False
        if self.pool is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    database = await self.pool.fetchval("SELECT true")
        checks = {
            "consuming": self.started,
            "broker": bool(self.broker and self.broker.connected),
            # A memory or disk alarm: connected, but RabbitMQ reads nothing this process publishes.
            "broker_blocked": bool(self.broker and self.broker.blocked),
            "database": bool(database),
            "draining": self.draining,
        }
        ok = (
            self.started
            and checks["broker"]
            and not checks["broker_blocked"]
            and checks["database"]
            and not self.draining
        )
        metrics.READY.labels(self.name).set(1 if ok else 0)
        return ok, checks

    async def _refresh_gauges(self) -> None:
        """Readiness and outbox backlog as of the scrape, also while the broker is away."""
        await self.ready()
        if self.relay is not None and self.pool is not None:
            async with asyncio.timeout(2), self.pool.acquire() as conn:
                await self.relay.observe_backlog(conn)

    async def start(self) -> None:
        """Connect everything and start consuming; returns once running."""
        self.pool = await _create_pool_with_retry(self.settings)
        self.broker = Broker(self.settings.amqp_url, name=self.name)
        await self.broker.connect()
        self.relay = OutboxRelay(
            self.pool,
            self.broker,
            service=self.name,
            duplicate=self.settings.duplicate_publish,
            max_attempts=self.settings.outbox_max_attempts,
        )
        await self.relay.mark_started()
        if self.on_start is not None:
            await self.on_start(self)
        channel = await self.broker.channel(prefetch=self.settings.prefetch)
        for spec in self.queues:
            queue = await declare_consumer_queue(
                channel, spec.queue, spec.bindings, delivery_limit=self.settings.delivery_limit
            )
            consumer = Consumer(
                name=self.name,
                queue=spec.queue,
                routes=spec.routes,
                pool=self.pool,
                broker=self.broker,
                max_message_bytes=self.settings.max_message_bytes,
                default_type=spec.default_type,
                on_reject=spec.on_reject,
                on_committed=self.relay.publish_committed,
                faults=FaultPlan(self.settings.faults) if self.settings.faults else None,
                batch_max=self.settings.batch_max,
                batch_units=self.settings.batch_units,
                in_transaction=spec.in_transaction,
            )
            await consumer.start(queue)
            self.consumers.append(consumer)
        self.started = True

    async def run(self) -> None:
        """Run until SIGTERM or SIGINT, then drain within ``drain_seconds``."""
        setup_logging(self.name, self.settings.log_level)
        setup_tracing(
            self.name, otlp_endpoint=self.settings.otel_exporter_otlp_endpoint, trace_file=self.settings.trace_file
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        app = make_app(self.ready)
        app[SCRAPE_HOOKS].append(self._refresh_gauges)
        if self.routes is not None:
            self.routes(app)
        runner = await serve(app, self.settings.http_host, self.settings.http_port)
        # A site closes first when draining: its requests get a share of the drain, not aiohttp's minute.
        budget = self.settings.drain_seconds / 4
        site_runners = [await serve(site.build(), site.host, site.port, shutdown_timeout=budget) for site in self.sites]
        await self.start()
        assert self.relay is not None
        tasks = [asyncio.create_task(self.relay.run(), name="outbox-relay")]
        tasks.append(asyncio.create_task(self._retain(), name="retention"))
        tasks += [asyncio.create_task(job(), name=getattr(job, "__name__", "job")) for job in self.background]
        ports = {"http_port": self.settings.http_port, **{f"{site.name}_port": site.port for site in self.sites}}
        log.info("started", extra={"fields": ports})
        await stop.wait()
        log.info("draining")
        for site_runner in site_runners:  # no new request while the pool they use closes
            await site_runner.cleanup()
        await self.shutdown(tasks)
        await runner.cleanup()
        shutdown_tracing()
        log.info("stopped")

    async def _retain(self) -> None:
        assert self.pool is not None
        pool = self.pool
        rules = [retention.inbox_rule(self.settings.inbox_retention_hours), *self.retention_rules]
        await retention.run(lambda: pool, rules, service=self.name)

    async def shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        self.draining = True
        budget = self.settings.drain_seconds
        await asyncio.gather(*(c.stop(budget / 2) for c in self.consumers))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.relay is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(budget / 2):
                    await self.relay.flush()
            await self.relay.close()
        if self.broker is not None:
            await self.broker.close()
        for close in self.cleanup:
            with contextlib.suppress(Exception):
                await close()
        if self.pool is not None:
            await self.pool.close()


async def _create_pool_with_retry(settings: ProcessSettings) -> asyncpg.Pool:
    failures = 0
    while True:
        try:
            return await create_pool(settings.database_url, size=settings.db_pool_size)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("database not reachable, retrying", extra={"fields": {"error": str(exc)}})
            failures += 1
            await asyncio.sleep(DATABASE_CONNECT.delay(failures))


def run_process(process: Process) -> None:
    """A process's main: run it on the event loop its settings choose, until SIGTERM."""
    if process.settings.event_loop == "uvloop":
        uvloop.run(process.run())
    else:
        asyncio.run(process.run())


def command_process(name: str, settings: ProcessSettings, routes: dict[str, Route]) -> Process:
    """A process that consumes its ``<name>.commands`` queue: what every domain service is."""
    return Process(
        name=name,
        settings=settings,
        queues=[QueueSpec(queue=q_name(name, "commands"), bindings=[(COMMANDS_EXCHANGE, f"{name}.#")], routes=routes)],
    )


def service_migrations(name: str, directory: Path) -> list[MigrationSet]:
    """The plumbing's tables (outbox, inbox), then the service's own."""
    return [MigrationSet("plumbing", PLUMBING_MIGRATIONS), MigrationSet(name, directory)]
