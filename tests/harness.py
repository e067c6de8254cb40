"""Test infrastructure: a fresh RabbitMQ vhost and fresh databases per session, and the running stack.

Nothing here stands in for our code: the processes are the real ones, started
as the supervisor of ``orderctl up`` starts them, against the real servers.
"""

import asyncio
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import asyncpg

from orchestrator.definition import DEFINITION_FILE
from orderctl.client import OutcomeListener
from orderctl.config import SERVICES, CtlSettings
from orderctl.provision import migrate_all
from orderctl.supervisor import Child, Supervisor, children
from plumbing.db import database_name, drop_database, with_database
from services.inventory import repository as inventory_repo

T = TypeVar("T")
ADMIN_DSN = os.environ.get("ORDERFLOW_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
RABBITMQ_HOST_PORT = ("127.0.0.1", 5672)


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


#: Faults the session's stack injects, selected by the order id's suffix (see plumbing/faults.py).
STACK_FAULTS = {
    "orders": [
        {"messageType": "CreateOrderRecord", "error": "OrderRecordError", "correlationIdPattern": "-(record|critical)$"}
    ],
    "notify": [{"messageType": "NotifyCustomer", "error": "NotificationError", "correlationIdPattern": "-notify$"}],
    "payment": [
        {"messageType": "ProcessPayment", "error": "NoReply", "times": 1, "correlationIdPattern": "-slow$"},
        # Four runs fail (1 + 3 retries): the saga ends FAILED_CRITICAL, and a redrive's fifth run succeeds.
        {"messageType": "RefundPayment", "error": "RefundFailed", "times": 4, "correlationIdPattern": "-critical$"},
    ],
}
#: ProcessPayment's timeout in the session's workflow; the real 60 s would make the timeout tests slow.
#: The definition is data: only this number differs from orchestrator/workflow.json.
PAYMENT_TIMEOUT_SECONDS = 8


def short_timeout_workflow(tmp: Path) -> Path:
    document = json.loads(DEFINITION_FILE.read_text())
    document["States"]["ProcessPayment"]["TimeoutSeconds"] = PAYMENT_TIMEOUT_SECONDS
    path = tmp / "workflow.json"
    path.write_text(json.dumps(document))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_block(size: int) -> int:
    """A base port with ``size`` consecutive free ports after it."""
    for _ in range(200):
        base = free_port()
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


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextlib.contextmanager
def fresh_vhost():
    name = f"orderflow-test-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    try:
        yield f"amqp://guest:guest@127.0.0.1:5672/{name}"
    finally:
        with contextlib.suppress(Exception):
            rabbitmqctl("delete_vhost", name)


def settings_for(amqp_url: str, *, tmp: Path) -> CtlSettings:
    """Settings for a fresh installation: its own databases and one block of free ports."""
    prefix = f"of_t{uuid.uuid4().hex[:8]}"
    urls = {
        f"{s.name}_database_url": f"postgresql://orderflow_{s.name}@127.0.0.1:5432/{prefix}_{s.name}" for s in SERVICES
    }
    base = free_port_block(len(SERVICES) + 3)  # the processes, then the Stripe server, SMTP and SMS sinks
    return CtlSettings(
        admin_database_url=ADMIN_DSN,
        amqp_url=amqp_url,
        base_http_port=base,
        stripe_port=base + len(SERVICES),
        smtp_port=base + len(SERVICES) + 1,
        sms_port=base + len(SERVICES) + 2,
        maildir=tmp / "maildir",
        **urls,
    )


async def create_databases(settings: CtlSettings) -> None:
    await migrate_all(settings)


async def drop_databases(settings: CtlSettings) -> None:
    for spec in SERVICES:
        with contextlib.suppress(Exception):
            await drop_database(ADMIN_DSN, database_name(settings.database_url(spec.name)))


async def db(settings: CtlSettings, service: str) -> asyncpg.Connection:
    """Connect to a service's database as the admin (tests read every database; services never do)."""
    url = settings.database_url(service)
    return await asyncpg.connect(with_database(ADMIN_DSN, database_name(url)))


def http_json(url: str, *, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@dataclass
class Stack:
    settings: CtlSettings
    supervisor: Supervisor
    log_dir: Path
    workflow_file: str = ""
    trace_dir: Path | None = None

    @property
    def sms_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.sms_port}"

    @property
    def stripe_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.stripe_port}"

    def port(self, service: str) -> int:
        return self.settings.http_port(service)

    def logs(self, service: str) -> str:
        path = self.log_dir / f"{service}.log"
        return path.read_text() if path.exists() else ""


def stack_children(settings: CtlSettings, extra_env: dict[str, dict[str, str]] | None = None) -> list[Child]:
    """What ``orderctl up`` starts, with a lower delivery limit so poison tests finish quickly."""
    extra_env = extra_env or {}
    merged = {spec.name: {"DELIVERY_LIMIT": "5", **extra_env.get(spec.name, {})} for spec in SERVICES}
    return children(settings, dev_servers=True, extra_env=merged)


def is_ready(port: int) -> bool:
    try:
        status, _ = http_json(f"http://127.0.0.1:{port}/readyz")
    except (OSError, http.client.HTTPException, ValueError):
        return False
    return status == 200


async def wait_ready(stack: Stack, timeout: float = 60.0) -> None:
    async def all_ready() -> bool:
        states = await asyncio.gather(*(asyncio.to_thread(is_ready, stack.port(s.name)) for s in SERVICES))
        return all(states)

    try:
        await eventually(all_ready, timeout=timeout, what="every process ready")
    except AssertionError:
        for s in SERVICES:
            print(f"--- {s.name} log ---\n{stack.logs(s.name)[-3000:]}", file=sys.stderr)
        raise


# -- driving orders ------------------------------------------------------------------------------
def new_id(prefix: str = "ORDER#") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def seed(stack: Stack, products: dict[str, tuple[int, str]]) -> None:
    conn = await db(stack.settings, "inventory")
    try:
        for product_id, (stock, price) in products.items():
            await inventory_repo.upsert_product(
                conn, product_id, name=f"Product {product_id}", stock=stock, price=Decimal(price), currency="usd"
            )
    finally:
        await conn.close()


async def stock_of(stack: Stack, product_id: str) -> int:
    conn = await db(stack.settings, "inventory")
    try:
        return await conn.fetchval("SELECT stock FROM product WHERE product_id = $1", product_id)
    finally:
        await conn.close()


def order_body(order_id: str, items: list[tuple[str, int]], pm: str = "pm_card_visa") -> dict:
    return {
        "orderId": order_id,
        "customer": {"email": "ada@example.com", "phone": None},
        "items": [{"productId": p, "quantity": q} for p, q in items],
        "paymentMethodId": pm,
    }


async def publish_raw(channel: aio_pika.abc.AbstractChannel, body: bytes, **props) -> None:
    """Publish as an outside client would: a bare JSON body, no envelope properties required."""
    exchange = await channel.declare_exchange("orders", aio_pika.ExchangeType.TOPIC, durable=True)
    await exchange.publish(aio_pika.Message(body=body, content_type="application/json", **props), "order.requested")


async def outcome_of(listener: OutcomeListener, order_id: str, timeout: float = 60.0) -> dict:
    outcomes = await listener.wait_for([order_id], timeout)
    assert order_id in outcomes, f"no outcome for {order_id} within {timeout}s"
    return outcomes[order_id]


def order_url(stack: Stack, order_id: str) -> str:
    return f"http://127.0.0.1:{stack.port('orchestrator')}/orders/{urllib.parse.quote(order_id, safe='')}"


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
