"""One order's path through every service is one trace: the client's trace context, carried in message
headers by the aio-pika instrumentation and through every outbox, reaches each service's spans."""

import json
import secrets

import aio_pika
import pytest
from harness import Stack, eventually, new_id, order_body, outcome_of, seed

from orderctl.config import SERVICES

pytestmark = pytest.mark.e2e


def spans_of(stack: Stack, trace_id: str) -> dict[str, list[dict]]:
    assert stack.trace_dir is not None
    found: dict[str, list[dict]] = {}
    for spec in SERVICES:
        path = stack.trace_dir / f"{spec.name}.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        found[spec.name] = [s for s in map(json.loads, lines) if s["context"]["trace_id"] == "0x" + trace_id]
    return found


async def test_an_order_is_one_trace_across_every_service(stack: Stack, channel, listener) -> None:
    sku = new_id("sku-")
    await seed(stack, {sku: (5, "4.00")})
    order_id = new_id()
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    exchange = await channel.declare_exchange("orders", aio_pika.ExchangeType.TOPIC, durable=True)
    await exchange.publish(
        aio_pika.Message(
            body=json.dumps(order_body(order_id, [(sku, 1)])).encode(),
            headers={"traceparent": f"00-{trace_id}-{parent}-01"},
        ),
        "order.requested",
    )
    assert (await outcome_of(listener, order_id))["status"] == "CONFIRMED"

    expected = {
        "orchestrator": "handle OrderRequested",
        "inventory": "handle ReserveInventory",
        "payment": "handle ProcessPayment",
        "orders": "handle CreateOrderRecord",
        "notify": "handle NotifyCustomer",
    }

    async def every_service_traced():
        found = spans_of(stack, trace_id)
        names = {service: {s["name"] for s in spans} for service, spans in found.items()}
        return found if all(expected[s] in names[s] for s in expected) else None

    found = await eventually(every_service_traced, timeout=20, what="spans of the order in every service")
    handle = next(s for s in found["payment"] if s["name"] == "handle ProcessPayment")
    assert handle["attributes"]["orderflow.order_id"] == order_id
    # The database work is in the trace too, through the asyncpg instrumentation.
    assert any(s["attributes"].get("db.system") == "postgresql" for s in found["inventory"])
