"""End to end: a client publishes OrderRequested over AMQP and hears the outcome; every effect is checked
in the database of the service that owns it, at the Stripe-compatible server and at the SMTP sink."""

import asyncio
import json
import uuid
from decimal import Decimal

import pytest
from harness import (
    Stack,
    db,
    eventually,
    http_json,
    metric_value,
    new_id,
    order_body,
    order_view,
    outcome_of,
    publish_raw,
    seed,
    stock_of,
)

from devservers.smtp_sink import messages
from orderctl.client import OutcomeListener

pytestmark = pytest.mark.e2e


def published(stack: Stack, service: str, path: str) -> float:
    return metric_value(stack.port(service), "orderflow_outbox_published_total", service=service, path=path)


async def test_handlers_publish_their_messages_themselves_and_the_sweep_has_none_left(
    stack: Stack, channel, listener
) -> None:
    sku = new_id("sku-")
    await seed(stack, {sku: (3, "5.00")})
    before = {service: published(stack, service, "after_commit") for service in ("inventory", "orders")}
    swept_before = {service: published(stack, service, "sweep") for service in ("inventory", "orders")}
    order_id = new_id()
    await publish_raw(channel, json.dumps(order_body(order_id, [(sku, 1)])).encode())
    assert (await outcome_of(listener, order_id))["status"] == "CONFIRMED"

    # Inventory answered CheckInventory and ReserveInventory, orders CreateOrderRecord: each reply published
    # by its handler right after the commit, none left held for the relay's sweep.
    assert published(stack, "inventory", "after_commit") - before["inventory"] >= 2
    assert published(stack, "orders", "after_commit") - before["orders"] >= 1
    assert {service: published(stack, service, "sweep") for service in ("inventory", "orders")} == swept_before

    async def outbox_empty(service: str) -> bool:
        conn = await db(stack.settings, service)
        try:
            return await conn.fetchval("SELECT count(*) = 0 FROM outbox")
        finally:
            await conn.close()

    for service in ("inventory", "orders"):
        await eventually(lambda s=service: outbox_empty(s), timeout=10, what=f"the {service} outbox emptied")


async def test_happy_path_confirms_with_effects_in_every_service(stack: Stack, channel, listener) -> None:
    sku_a, sku_b = new_id("sku-"), new_id("sku-")
    await seed(stack, {sku_a: (10, "19.99"), sku_b: (5, "9.50")})
    order_id = new_id()
    await publish_raw(channel, json.dumps(order_body(order_id, [(sku_a, 2), (sku_b, 1)])).encode())

    outcome = await outcome_of(listener, order_id)
    assert outcome["_routingKey"] == "order.confirmed"
    assert outcome["status"] == "CONFIRMED"
    assert Decimal(str(outcome["amount"])) == Decimal("49.48")  # 2 x 19.99 + 9.50, priced from the catalog
    assert outcome["error"] is None and outcome["notificationError"] is None

    # Inventory: stock taken once, in one reservation, committed once order.confirmed is heard.
    assert await stock_of(stack, sku_a) == 8 and await stock_of(stack, sku_b) == 4

    async def reservation_statuses():
        conn = await db(stack.settings, "inventory")
        try:
            rows = await conn.fetch("SELECT status FROM reservation WHERE order_id = $1", order_id)
        finally:
            await conn.close()
        statuses = [r["status"] for r in rows]
        return statuses if statuses == ["committed"] else None

    await eventually(reservation_statuses, timeout=15, what="the reservation committed")

    # Payment: one PaymentIntent, stored with the order id, charged once at the Stripe-compatible server.
    conn = await db(stack.settings, "payment")
    try:
        payment = await conn.fetchrow(
            "SELECT payment_intent_id, amount_minor, status FROM payment WHERE order_id = $1", order_id
        )
    finally:
        await conn.close()
    assert payment["status"] == "succeeded" and payment["amount_minor"] == 4948
    _, state = http_json(f"{stack.stripe_url}/_test/state")
    charges = [c for c in state["charges"] if c.get("payment_intent") == payment["payment_intent_id"]]
    assert len(charges) == 1 and charges[0]["amount"] == 4948

    # Orders: the record is CONFIRMED with its lines and payment reference.
    conn = await db(stack.settings, "orders")
    try:
        record = await conn.fetchrow("SELECT * FROM order_record WHERE order_id = $1", order_id)
    finally:
        await conn.close()
    assert record["status"] == "CONFIRMED"
    assert record["payment_intent_id"] == payment["payment_intent_id"]
    assert record["amount"] == Decimal("49.48") and len(json.loads(record["lines"])) == 2

    # Notify: the email reached the SMTP sink, and the send is recorded.
    async def email_arrived():
        return [m for m in messages(stack.settings.maildir) if order_id in (m["Subject"] or "")]

    mails = await eventually(email_arrived, timeout=10, what="confirmation email")
    assert mails[0]["To"] == "ada@example.com"
    conn = await db(stack.settings, "notify")
    try:
        sent = await conn.fetch("SELECT channel, status FROM notification WHERE order_id = $1", order_id)
    finally:
        await conn.close()
    assert [(r["channel"], r["status"]) for r in sent] == [("email", "sent")]

    # The orchestrator serves the saga on its API port, to a viewer's token, with ids like ORDER#123 URL-encoded.
    status, view = order_view(stack, order_id)
    assert status == 200 and view["status"] == "CONFIRMED"
    assert [s["step"] for s in view["steps"]] == [
        "CheckInventory",
        "ReserveInventory",
        "ProcessPayment",
        "CreateOrderRecord",
        "CommitReservation",
        "NotifyCustomer",
    ]
    assert all(s["outcome"] == "succeeded" and s["endedAt"] for s in view["steps"])


async def test_insufficient_stock_cancels_without_compensation(stack: Stack, channel, listener) -> None:
    sku = new_id("sku-")
    await seed(stack, {sku: (3, "5.00")})
    order_id = new_id()
    await publish_raw(channel, json.dumps(order_body(order_id, [(sku, 9999)])).encode())
    outcome = await outcome_of(listener, order_id)
    assert outcome["status"] == "CANCELLED" and outcome["_routingKey"] == "order.cancelled"
    assert outcome["error"]["Error"] == "InsufficientStockError"
    assert await stock_of(stack, sku) == 3
    _, view = order_view(stack, order_id)
    assert [s["step"] for s in view["steps"]] == ["CheckInventory"]


async def test_declined_payment_releases_inventory_and_fails(stack: Stack, channel, listener) -> None:
    sku = new_id("sku-")
    await seed(stack, {sku: (4, "12.00")})
    order_id = new_id()
    await publish_raw(channel, json.dumps(order_body(order_id, [(sku, 2)], "pm_card_chargeDeclined")).encode())
    outcome = await outcome_of(listener, order_id)
    assert outcome["status"] == "FAILED" and outcome["error"]["Error"] == "PaymentDeclined"
    assert await stock_of(stack, sku) == 4  # reserved, then released
    conn = await db(stack.settings, "inventory")
    try:
        statuses = await conn.fetch("SELECT status FROM reservation WHERE order_id = $1", order_id)
    finally:
        await conn.close()
    assert [r["status"] for r in statuses] == ["released"]


async def test_same_order_twice_is_one_saga_and_changed_content_is_rejected(stack: Stack, channel, listener) -> None:
    sku = new_id("sku-")
    await seed(stack, {sku: (10, "1.00")})
    order_id = new_id()
    body = json.dumps(order_body(order_id, [(sku, 1)])).encode()
    await publish_raw(channel, body, message_id=str(uuid.uuid4()))
    await publish_raw(channel, body, message_id=str(uuid.uuid4()))
    assert (await outcome_of(listener, order_id))["status"] == "CONFIRMED"

    changed = json.dumps(order_body(order_id, [(sku, 3)])).encode()
    rejected_queue = await channel.declare_queue("", exclusive=True)
    await rejected_queue.bind("orders", "order.rejected")
    await publish_raw(channel, changed)

    async def rejection():
        message = await rejected_queue.get(fail=False, no_ack=True)
        return json.loads(message.body) if message else None

    rejected = await eventually(rejection, timeout=30, what="order.rejected")
    assert rejected["orderId"] == order_id and "different content" in rejected["reasons"][0]
    assert await stock_of(stack, sku) == 9  # one order took one unit
    conn = await db(stack.settings, "orchestrator")
    try:
        assert await conn.fetchval("SELECT count(*) FROM saga WHERE order_id = $1", order_id) == 1
    finally:
        await conn.close()


async def test_invalid_order_is_dead_lettered_with_reason_and_rejected(stack: Stack, channel) -> None:
    rejected_queue = await channel.declare_queue("", exclusive=True)
    await rejected_queue.bind("orders", "order.rejected")
    order_id = new_id()
    bad = order_body(order_id, [("sku-x", 0)])  # quantity 0
    await publish_raw(channel, json.dumps(bad).encode(), message_id=f"bad-{order_id}")

    async def rejection():
        message = await rejected_queue.get(fail=False, no_ack=True)
        return json.loads(message.body) if message else None

    rejected = await eventually(rejection, timeout=30, what="order.rejected")
    assert rejected["orderId"] == order_id and "quantity" in rejected["reasons"][0]

    dlq = await channel.get_queue("orchestrator.order-requests.dlq", ensure=True)

    async def dead_letter():
        while True:
            message = await dlq.get(fail=False, no_ack=False)
            if message is None:
                return None
            if message.message_id == f"bad-{order_id}":
                await message.ack()
                return message
            await message.nack(requeue=True)
            return None

    message = await eventually(dead_letter, timeout=30, what="dead letter")
    assert "quantity" in message.headers["x-death-reason"]
    assert message.headers["x-death-kind"] == "schema"
    # The consumer keeps serving after the poison message.
    sku = new_id("sku-")
    await seed(stack, {sku: (1, "3.00")})
    listening = OutcomeListener()
    await listening.start(channel)
    good = new_id()
    await publish_raw(channel, json.dumps(order_body(good, [(sku, 1)])).encode())
    assert (await outcome_of(listening, good))["status"] == "CONFIRMED"


async def test_concurrent_orders_for_the_last_units_never_oversell(stack: Stack, channel, listener) -> None:
    sku = new_id("sku-")
    await seed(stack, {sku: (3, "2.00")})
    order_ids = [new_id() for _ in range(6)]
    await asyncio.gather(*(publish_raw(channel, json.dumps(order_body(o, [(sku, 1)])).encode()) for o in order_ids))
    outcomes = await listener.wait_for(order_ids, 90)
    assert len(outcomes) == 6
    statuses = sorted(o["status"] for o in outcomes.values())
    assert statuses == ["CANCELLED"] * 3 + ["CONFIRMED"] * 3
    assert await stock_of(stack, sku) == 0
