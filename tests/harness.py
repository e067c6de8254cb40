"""Test infrastructure: a fresh RabbitMQ vhost and fresh databases per session, and the running stack.

The stack-building pieces live in orderctl/sandbox.py (the load generator builds its installation from them
too); this module re-exports them and adds what only the tests need: the injected faults, a short payment
timeout, a lower delivery limit, and helpers to drive and inspect orders.
"""

import contextlib
import json
import os
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg

from orchestrator.definition import engine_document
from orderctl import sandbox
from orderctl.client import OutcomeListener
from orderctl.config import CtlSettings
from orderctl.sandbox import (  # noqa: F401 - re-exported: the tests import these names from harness
    ADMIN_DSN,
    Stack,
    create_api_token,
    create_databases,
    db,
    drop_databases,
    eventually,
    free_port,
    free_port_block,
    fresh_vhost,
    http_json,
    is_ready,
    metric_value,
    rabbitmqctl,
    seed,
    settings_for,
    wait_ready,
)
from orderctl.supervisor import Child
from plumbing.db import create_pool, drop_database, ensure_database, with_database
from plumbing.migrations import MigrationSet, migrate

RABBITMQ_HOST_PORT = ("127.0.0.1", 5672)


@contextlib.asynccontextmanager
async def migrated_pool(prefix: str, migrations: list[MigrationSet], *, size: int = 3) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a database of its own, migrated, dropped at the end: for a test of one component."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    dsn = with_database(ADMIN_DSN, name)
    await ensure_database(ADMIN_DSN, dsn)
    try:
        await migrate(dsn, migrations)
        pool = await create_pool(dsn, size=size)
        try:
            yield pool
        finally:
            await pool.close()
    finally:
        await drop_database(ADMIN_DSN, name)


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
        # A cancellation's refund refused once (the cancellation saga's correlation id is "<orderId> cancel"): it
        # ends CANCELLATION_FAILED, RefundFailed not being retried, and a redrive's second run succeeds.
        {
            "messageType": "RefundPayment",
            "error": "RefundFailed",
            "times": 1,
            "correlationIdPattern": "-refused cancel$",
        },
    ],
}
#: ProcessPayment's timeout in the session's workflow; the real 60 s would make the timeout tests slow.
#: The definition is data: only this number differs from orchestrator/workflow.json.
PAYMENT_TIMEOUT_SECONDS = 8


def short_timeout_workflow(tmp: Path) -> Path:
    document = engine_document()
    document["States"]["ProcessPayment"]["TimeoutSeconds"] = PAYMENT_TIMEOUT_SECONDS
    path = tmp / "workflow.json"
    path.write_text(json.dumps(document))
    return path


def stack_children(settings: CtlSettings, extra_env: dict[str, dict[str, str]] | None = None) -> list[Child]:
    """What ``orderctl up`` starts, with a lower delivery limit so poison tests finish quickly."""
    return sandbox.stack_children(settings, extra_env, common_env={"DELIVERY_LIMIT": "5"})


# -- driving orders ------------------------------------------------------------------------------
def new_id(prefix: str = "ORDER#") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


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


async def place_orders(stack: Stack, bodies: list[dict], timeout: float = 120.0) -> dict[str, dict]:
    """Publish each order as a client would and wait for every outcome event; the outcomes by order id."""
    connection = await aio_pika.connect_robust(stack.settings.amqp_url)
    try:
        channel = await connection.channel()
        listener = OutcomeListener()
        await listener.start(channel)
        for body in bodies:
            await publish_raw(channel, json.dumps(body).encode())
        return await listener.wait_for([body["orderId"] for body in bodies], timeout)
    finally:
        await connection.close()


async def outcome_of(listener: OutcomeListener, order_id: str, timeout: float = 60.0) -> dict:
    outcomes = await listener.wait_for([order_id], timeout)
    assert order_id in outcomes, f"no outcome for {order_id} within {timeout}s"
    return outcomes[order_id]


def order_url(stack: Stack, order_id: str) -> str:
    """GET /orders/{orderId} on the orchestrator's API port (it needs a bearer token: ``order_view``)."""
    return f"{stack.api_url}/orders/{urllib.parse.quote(order_id, safe='')}"


def order_view(stack: Stack, order_id: str, *, token: str | None = None) -> tuple[int, Any]:
    """The saga view of an order as a client reads it: the stack's viewer token unless ``token`` is given."""
    bearer = stack.api_token if token is None else token
    return http_json(order_url(stack, order_id), headers={"Authorization": f"Bearer {bearer}"})


async def waiting_intent(stack: Stack, order_id: str) -> str:
    """The PaymentIntent of an order whose ProcessPayment waits for the customer (3-D Secure)."""

    async def pending() -> str | None:
        conn = await db(stack.settings, "payment")
        try:
            return await conn.fetchval("SELECT payment_intent_id FROM pending_reply WHERE order_id = $1", order_id)
        finally:
            await conn.close()

    return await eventually(pending, timeout=30, what="ProcessPayment waiting for the customer")


# -- orderctl as a person runs it ---------------------------------------------------------------------
def ctl_env(settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "ORDERFLOW_AMQP_URL": settings.amqp_url,
            "ORDERFLOW_ADMIN_DATABASE_URL": settings.admin_database_url,
            "ORDERFLOW_BASE_HTTP_PORT": str(settings.base_http_port),
            "ORDERFLOW_ORCHESTRATOR_API_PORT": str(settings.orchestrator_api_port),
            "ORDERFLOW_STRIPE_PORT": str(settings.stripe_port),
            "ORDERFLOW_SMTP_PORT": str(settings.smtp_port),
            "ORDERFLOW_MAILDIR": str(settings.maildir),
        }
    )
    for service in ("orchestrator", "inventory", "payment", "orders", "notify"):
        env[f"ORDERFLOW_{service.upper()}_DATABASE_URL"] = settings.database_url(service)
    return env


def orderctl(settings, *args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orderctl", *args],
        env=ctl_env(settings),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
