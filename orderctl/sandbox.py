"""A private installation on the shared servers: its own RabbitMQ vhost, its own five databases, free ports.

The tests (tests/harness.py) and the load generator (bench/load.py) build their stacks from these pieces.
Nothing here stands in for our code: the processes are the real ones, started as the supervisor of
``orderctl up`` starts them, against the real RabbitMQ and PostgreSQL.
"""

import asyncio
import contextlib
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from orchestrator import api_tokens
from orderctl.config import SERVICES, CtlSettings
from orderctl.provision import migrate_all
from orderctl.supervisor import Child, Supervisor, children
from plumbing.db import database_name, drop_database, with_database
from services.inventory import repository as inventory_repo

T = TypeVar("T")
ADMIN_DSN = os.environ.get("ORDERFLOW_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


async def eventually(
    probe: Callable[[], Awaitable[T]], *, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"
) -> T:
    """Poll ``probe`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


# -- ports ---------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ports_outside_the_ephemeral_range(size: int) -> range:
    """Where a block of ``size`` listening ports can go without meeting the kernel's ephemeral ports: a port
    free when the block is chosen can be handed to an outgoing connection (a pool's, the broker client's) in
    the seconds before the process binds it, and a long-lived connection then holds it for good. Below the
    range when there is room (Linux's default is 32768-60999), else above it."""
    low, high = 32768, 60999
    with contextlib.suppress(OSError, ValueError):
        low, high = (int(p) for p in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    if low - 10000 > 4 * size:
        return range(10000, low - size)
    return range(high + 1, 65535 - size)


def free_port_block(size: int) -> int:
    """A base port with ``size`` consecutive free ports after it, outside the ephemeral range. The base is drawn
    at random: two installations started at the same moment (two benchmarks side by side) would otherwise get
    neighbouring blocks that overlap."""
    candidates = _ports_outside_the_ephemeral_range(size)
    for _ in range(200):
        base = random.choice(candidates)
        ok = True
        for port in range(base, base + size):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


# -- RabbitMQ vhost ------------------------------------------------------------------------------
def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def create_vhost(prefix: str = "orderflow-test") -> str:
    """Create a vhost with a unique name, open to guest; returns its AMQP URL."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return f"amqp://guest:guest@127.0.0.1:5672/{name}"


def delete_vhost(amqp_url: str) -> None:
    rabbitmqctl("delete_vhost", amqp_url.rsplit("/", 1)[1])


@contextlib.contextmanager
def fresh_vhost(prefix: str = "orderflow-test") -> Iterator[str]:
    url = create_vhost(prefix)
    try:
        yield url
    finally:
        with contextlib.suppress(Exception):
            delete_vhost(url)


# -- databases -----------------------------------------------------------------------------------
def settings_for(amqp_url: str, *, tmp: Path, prefix: str = "of_t", admin_dsn: str = ADMIN_DSN) -> CtlSettings:
    """Settings for a fresh installation: its own databases (``<prefix><random>_<process>``) and one block
    of free ports."""
    unique = f"{prefix}{uuid.uuid4().hex[:8]}"
    urls = {
        f"{s.name}_database_url": f"postgresql://orderflow_{s.name}@127.0.0.1:5432/{unique}_{s.name}" for s in SERVICES
    }
    # The processes, then the Stripe server, SMTP and SMS sinks, then the orchestrator's API.
    base = free_port_block(len(SERVICES) + 4)
    return CtlSettings(
        admin_database_url=admin_dsn,
        amqp_url=amqp_url,
        base_http_port=base,
        stripe_port=base + len(SERVICES),
        smtp_port=base + len(SERVICES) + 1,
        sms_port=base + len(SERVICES) + 2,
        orchestrator_api_port=base + len(SERVICES) + 3,
        maildir=tmp / "maildir",
        **urls,
    )


def database_names(settings: CtlSettings) -> list[str]:
    return [database_name(settings.database_url(s.name)) for s in SERVICES]


async def create_databases(settings: CtlSettings) -> None:
    await migrate_all(settings)


async def drop_databases(settings: CtlSettings) -> list[str]:
    """Drop the installation's databases; returns the names that could not be dropped (server away)."""
    failed = []
    for name in database_names(settings):
        try:
            await drop_database(settings.admin_database_url, name)
        except Exception:  # a server stopped on purpose by another test must not hide the other drops
            failed.append(name)
    return failed


async def db(settings: CtlSettings, service: str) -> asyncpg.Connection:
    """Connect to a service's database as the admin (tests and benchmarks read every database; services never
    do)."""
    url = settings.database_url(service)
    return await asyncpg.connect(with_database(settings.admin_database_url, database_name(url)))


async def seed(stack: "Stack | CtlSettings", products: dict[str, tuple[int, str]]) -> None:
    """Set stock and price of ``products`` (id: (stock, price)) in the inventory's catalog."""
    settings = stack.settings if isinstance(stack, Stack) else stack
    conn = await db(settings, "inventory")
    try:
        for product_id, (stock, price) in products.items():
            await inventory_repo.upsert_product(
                conn, product_id, name=f"Product {product_id}", stock=stock, price=Decimal(price), currency="usd"
            )
    finally:
        await conn.close()


async def create_api_token(settings: CtlSettings, role: str = "viewer", name: str | None = None) -> str:
    """A new token for the installation's orchestrator API, as ``orderctl token create`` makes one."""
    conn = await db(settings, "orchestrator")
    try:
        token, _ = await api_tokens.create(conn, role=role, name=name, created_by="sandbox")
    finally:
        await conn.close()
    return token


# -- processes -----------------------------------------------------------------------------------
@dataclass
class Stack:
    settings: CtlSettings
    supervisor: Supervisor
    log_dir: Path
    workflow_file: str = ""
    trace_dir: Path | None = None
    #: A viewer token for the orchestrator's API (``create_api_token``), when the stack's maker created one.
    api_token: str = ""

    @property
    def sms_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.sms_port}"

    @property
    def stripe_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.stripe_port}"

    def port(self, service: str) -> int:
        return self.settings.http_port(service)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.orchestrator_api_port}"

    def logs(self, service: str) -> str:
        path = self.log_dir / f"{service}.log"
        return path.read_text() if path.exists() else ""


def stack_children(
    settings: CtlSettings,
    extra_env: dict[str, dict[str, str]] | None = None,
    *,
    common_env: dict[str, str] | None = None,
) -> list[Child]:
    """What ``orderctl up`` starts, dev servers included; ``common_env`` goes to every service process,
    ``extra_env`` to the one it names (and wins)."""
    extra_env = extra_env or {}
    merged = {spec.name: {**(common_env or {}), **extra_env.get(spec.name, {})} for spec in SERVICES}
    return children(settings, dev_servers=True, extra_env=merged)


def http_json(
    url: str, *, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def is_ready(port: int) -> bool:
    try:
        status, _ = http_json(f"http://127.0.0.1:{port}/readyz")
    except (OSError, http.client.HTTPException, ValueError):
        return False
    return status == 200


async def all_ready(settings: CtlSettings) -> bool:
    states = await asyncio.gather(*(asyncio.to_thread(is_ready, settings.http_port(s.name)) for s in SERVICES))
    return all(states)


async def wait_ready(stack: Stack, timeout: float = 60.0) -> None:
    """Wait until every process's /readyz answers 200; on timeout print the tail of each process's log."""
    try:
        await eventually(lambda: all_ready(stack.settings), timeout=timeout, what="every process ready")
    except AssertionError:
        for s in SERVICES:
            print(f"--- {s.name} log ---\n{stack.logs(s.name)[-3000:]}", file=sys.stderr)
        raise


@contextlib.asynccontextmanager
async def running(settings: CtlSettings, child_list: list[Child], log_dir: Path) -> AsyncIterator[Stack]:
    """Start ``child_list`` under a Supervisor, wait until every process is ready; stop them all on exit."""
    supervisor = Supervisor(child_list, log_dir=str(log_dir))
    stack = Stack(settings=settings, supervisor=supervisor, log_dir=log_dir)
    try:
        await supervisor.start()
        await wait_ready(stack)
        yield stack
    finally:
        await supervisor.stop()


def metric_value(port: int, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``, read from a process's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )
