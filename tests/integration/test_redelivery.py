"""A command delivered twice has one effect: the inbox drops the redelivery, and a retried command
(a new message id for the same operation) is absorbed by the operation's idempotency key."""

import asyncio
import uuid
from decimal import Decimal

import pytest
from harness import Stack, db, eventually, http_json, metric_value
from requester import Requester

from devservers.smtp_sink import messages
from services.inventory import repository as inventory_repo

pytestmark = pytest.mark.integration


def handled(stack: Stack, service: str, message_type: str, outcome: str) -> float:
    return metric_value(stack.port(service), "orderflow_messages_handled_total", type=message_type, outcome=outcome)


@pytest.fixture
async def requester(channel) -> Requester:
    r = Requester(channel)
    await r.start()
    return r


async def test_redelivered_reserve_has_one_effect(stack: Stack, requester: Requester) -> None:
    sku, order_id = f"sku-{uuid.uuid4().hex[:8]}", f"ORDER#{uuid.uuid4().hex[:8]}"
    conn = await db(stack.settings, "inventory")
    await inventory_repo.upsert_product(conn, sku, name="x", stock=10, price=Decimal("1.00"), currency="usd")
    command = {"orderId": order_id, "items": [{"productId": sku, "quantity": 4}], "idempotencyId": order_id}
    duplicates_before = handled(stack, "inventory", "ReserveInventory", "duplicate")

    await requester.send("inventory.ReserveInventory", command, message_id="m1-" + order_id, order_id=order_id)
    await requester.send("inventory.ReserveInventory", command, message_id="m1-" + order_id, order_id=order_id)
    first = await requester.reply("m1-" + order_id)
    await eventually(
        lambda: asyncio.to_thread(
            lambda: handled(stack, "inventory", "ReserveInventory", "duplicate") > duplicates_before
        ),
        what="the redelivery handled as a duplicate",
    )
    assert len(requester.replies_to("m1-" + order_id)) == 1
    assert first["type"] == "InventoryReserved"

    # A retry of the step is a new message for the same operation: the idempotencyId absorbs it.
    await requester.send("inventory.ReserveInventory", command, message_id="m2-" + order_id, order_id=order_id)
    second = await requester.reply("m2-" + order_id)
    assert second["reservationId"] == first["reservationId"]
    try:
        assert await conn.fetchval("SELECT stock FROM product WHERE product_id = $1", sku) == 6
        assert await conn.fetchval("SELECT count(*) FROM reservation WHERE order_id = $1", order_id) == 1
    finally:
        await conn.close()


async def test_retried_payment_charges_once(stack: Stack, requester: Requester) -> None:
    order_id = f"ORDER#{uuid.uuid4().hex[:8]}"
    command = {
        "orderId": order_id,
        "amount": 12.34,
        "currency": "usd",
        "paymentMethodId": "pm_card_visa",
        "idempotencyKey": f"{order_id}-payment",
    }
    await requester.send("payment.ProcessPayment", command, message_id="p1-" + order_id, order_id=order_id)
    await requester.send("payment.ProcessPayment", command, message_id="p1-" + order_id, order_id=order_id)
    await requester.send("payment.ProcessPayment", command, message_id="p2-" + order_id, order_id=order_id)
    first, second = await requester.reply("p1-" + order_id), await requester.reply("p2-" + order_id)
    assert first["type"] == second["type"] == "PaymentProcessed"
    assert first["paymentIntentId"] == second["paymentIntentId"]
    _, state = http_json(f"{stack.stripe_url}/_test/state")
    charges = [c for c in state["charges"] if c.get("payment_intent") == first["paymentIntentId"]]
    assert len(charges) == 1 and charges[0]["amount"] == 1234


async def test_redelivered_order_record_and_notification_have_one_effect(stack: Stack, requester: Requester) -> None:
    order_id = f"ORDER#{uuid.uuid4().hex[:8]}"
    customer = {"email": "grace@example.com", "phone": "+15550002222"}
    lines = [{"productId": "sku-1", "name": "One", "quantity": 1, "unitPrice": 5.0, "lineTotal": 5.0}]
    record = {
        "orderId": order_id,
        "customer": customer,
        "lines": lines,
        "amount": 5.0,
        "currency": "usd",
        "paymentIntentId": "pi_test",
    }
    await requester.send("orders.CreateOrderRecord", record, message_id="r1-" + order_id, order_id=order_id)
    await requester.send("orders.CreateOrderRecord", record, message_id="r2-" + order_id, order_id=order_id)
    # Handled side by side or in turn: one inserts, the other's conditional insert falls back to an update.
    created = [(await requester.reply(m + order_id))["created"] for m in ("r1-", "r2-")]
    assert sorted(created) == [False, True]

    notify = {"orderId": order_id, "customer": customer, "lines": lines, "amount": 5.0, "currency": "usd"}
    await requester.send("notify.NotifyCustomer", notify, message_id="n1-" + order_id, order_id=order_id)
    await requester.send("notify.NotifyCustomer", notify, message_id="n2-" + order_id, order_id=order_id)
    first, second = await requester.reply("n1-" + order_id), await requester.reply("n2-" + order_id)
    # The two deliveries may run side by side: each channel is sent by exactly one of them.
    results = first["results"] + second["results"]
    assert sorted(r["channel"] for r in results if r["status"] == "sent") == ["email", "sms"]
    assert sorted(r["channel"] for r in results if r["status"] == "skipped") == ["email", "sms"]

    conn = await db(stack.settings, "orders")
    try:
        assert await conn.fetchval("SELECT count(*) FROM order_record WHERE order_id = $1", order_id) == 1
    finally:
        await conn.close()
    assert len([m for m in messages(stack.settings.maildir) if order_id in m["Subject"]]) == 1


async def charge(requester: Requester, order_id: str, amount: float) -> str:
    command = {
        "orderId": order_id,
        "amount": amount,
        "currency": "usd",
        "paymentMethodId": "pm_card_visa",
        "idempotencyKey": f"{order_id}-payment",
    }
    await requester.send("payment.ProcessPayment", command, message_id="pay-" + order_id, order_id=order_id)
    return (await requester.reply("pay-" + order_id))["paymentIntentId"]


def refund_command(order_id: str, intent: str | None, key: str, amount: float | None = None) -> dict:
    return {"orderId": order_id, "paymentIntentId": intent, "amount": amount, "reason": "test", "idempotencyKey": key}


async def test_refund_is_idempotent_and_an_already_refunded_payment_is_success(
    stack: Stack, requester: Requester
) -> None:
    order_id = f"ORDER#{uuid.uuid4().hex[:8]}"
    intent = await charge(requester, order_id, 9.99)
    command = refund_command(order_id, intent, f"{order_id}-refund")
    for message_id in ("f1-", "f2-"):
        await requester.send("payment.RefundPayment", command, message_id=message_id + order_id, order_id=order_id)
    first, second = await requester.reply("f1-" + order_id), await requester.reply("f2-" + order_id)
    assert first["type"] == second["type"] == "PaymentRefunded"
    assert first["refundId"] == second["refundId"] and first["amount"] == 9.99

    # Refunded again under another key (a manual refund): Stripe's charge_already_refunded is success.
    manual = refund_command(order_id, intent, f"{order_id}-manual-refund")
    await requester.send("payment.RefundPayment", manual, message_id="f3-" + order_id, order_id=order_id)
    third = await requester.reply("f3-" + order_id)
    assert third["type"] == "PaymentRefunded" and third["alreadyRefunded"] is True

    _, state = http_json(f"{stack.stripe_url}/_test/state")
    assert len([r for r in state["refunds"] if r.get("payment_intent") == intent]) == 1


async def test_partial_refund_and_refund_of_nothing(stack: Stack, requester: Requester) -> None:
    order_id = f"ORDER#{uuid.uuid4().hex[:8]}"
    intent = await charge(requester, order_id, 12.34)
    partial = refund_command(order_id, intent, f"{order_id}-refund", amount=2.00)
    await requester.send("payment.RefundPayment", partial, message_id="p-" + order_id, order_id=order_id)
    reply = await requester.reply("p-" + order_id)
    assert reply["refunded"] is True and reply["amount"] == 2.0
    _, state = http_json(f"{stack.stripe_url}/_test/state")
    charge_row = next(c for c in state["charges"] if c.get("payment_intent") == intent)
    assert charge_row["amount_refunded"] == 200

    never = f"ORDER#{uuid.uuid4().hex[:8]}"
    await requester.send(
        "payment.RefundPayment", refund_command(never, None, f"{never}-refund"), message_id="n-" + never, order_id=never
    )
    assert (await requester.reply("n-" + never))["refunded"] is False


async def test_redelivered_release_has_one_effect(stack: Stack, requester: Requester) -> None:
    sku, order_id = f"sku-{uuid.uuid4().hex[:8]}", f"ORDER#{uuid.uuid4().hex[:8]}"
    conn = await db(stack.settings, "inventory")
    try:
        await inventory_repo.upsert_product(conn, sku, name="x", stock=10, price=Decimal("1.00"), currency="usd")
        reserve = {"orderId": order_id, "items": [{"productId": sku, "quantity": 3}], "idempotencyId": order_id}
        await requester.send("inventory.ReserveInventory", reserve, message_id="v-" + order_id, order_id=order_id)
        await requester.reply("v-" + order_id)
        release = {"orderId": order_id, "action": "release", "idempotencyId": f"{order_id}-release"}
        for message_id in ("l1-", "l1-", "l2-"):
            await requester.send(
                "inventory.ReleaseInventory", release, message_id=message_id + order_id, order_id=order_id
            )
        first, second = await requester.reply("l1-" + order_id), await requester.reply("l2-" + order_id)
        assert first == second and first["released"] is True
        assert await conn.fetchval("SELECT stock FROM product WHERE product_id = $1", sku) == 10
    finally:
        await conn.close()


async def test_a_payment_after_its_compensation_does_not_charge(stack: Stack, requester: Requester) -> None:
    """A ProcessPayment still queued when the saga gave up (timeout, then refund of nothing) must not charge."""
    order_id = f"ORDER#{uuid.uuid4().hex[:8]}"
    refund = refund_command(order_id, None, f"{order_id}-refund")
    await requester.send("payment.RefundPayment", refund, message_id="v1-" + order_id, order_id=order_id)
    assert (await requester.reply("v1-" + order_id))["refunded"] is False
    late = {
        "orderId": order_id,
        "amount": 5.0,
        "currency": "usd",
        "paymentMethodId": "pm_card_visa",
        "idempotencyKey": f"{order_id}-payment",
    }
    await requester.send("payment.ProcessPayment", late, message_id="v2-" + order_id, order_id=order_id)
    reply = await requester.reply("v2-" + order_id)
    assert reply["type"] == "CommandFailed" and reply["Error"] == "Command.Compensated"
    _, state = http_json(f"{stack.stripe_url}/_test/state")
    assert not [p for p in state["payment_intents"] if p.get("metadata", {}).get("orderId") == order_id]
