"""The money path under the faults a process-killing chaos suite never tries (issue 14's fault families):

- an answer lost after the provider acted (the fault proxy resets the connection once Stripe has answered),
  delayed past the step's timeout, or a request reset before it arrived;
- a service paused (SIGSTOP) past its step's timeout, whose commands land after the saga compensated;
- compensations that overtake their forward commands;
- an order.confirmed that never reaches inventory, and the stale-reservation sweeper.

One private stack for the module, its payment and notify behind fault proxies (tests/proxies.py). Every test
asserts what the customer and the shop end up with: the provider's own records, the order record, the stock.
"""

import asyncio
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest
from harness import (
    PAYMENT_TIMEOUT_SECONDS,
    Stack,
    db,
    eventually,
    http_json,
    new_id,
    order_body,
    order_view,
    outcome_of,
    publish_raw,
    seed,
    short_timeout_workflow,
    stock_of,
)
from proxies import CREATE_PAYMENT_INTENT, SMTP_END_OF_DATA, ProxiedStack, proxied_stack
from requester import Requester

from devservers.fault_proxy import Fault
from devservers.smtp_sink import messages
from orderctl.client import OutcomeListener
from plumbing.db import database_name, with_database
from services.inventory import maintenance

pytestmark = pytest.mark.e2e

CONFIRM = b"/confirm "
#: CreateOrderRecord's window in this module's definition: short, so pausing the orders process outlasts it.
RECORD_TIMEOUT_SECONDS = 5
RECONCILE_TIMEOUT_SECONDS = 3


def workflow(tmp: Path) -> Path:
    """The session's short-timeout definition, with CreateOrderRecord's window and every reconcile shortened."""
    path = short_timeout_workflow(tmp)
    document = json.loads(path.read_text())
    document["States"]["CreateOrderRecord"]["TimeoutSeconds"] = RECORD_TIMEOUT_SECONDS
    for state in document["States"].values():
        if "Reconcile" in state:
            state["Reconcile"]["TimeoutSeconds"] = RECONCILE_TIMEOUT_SECONDS
    path.write_text(json.dumps(document))
    return path


@pytest.fixture(scope="module")
async def proxied(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    tmp = tmp_path_factory.mktemp("money")
    async with proxied_stack(tmp, workflow_file=str(workflow(tmp)), request=request) as running:
        yield running


@pytest.fixture
async def shop(proxied: ProxiedStack) -> AsyncIterator["Shop"]:
    connection = await aio_pika.connect(proxied.stack.settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        listener = OutcomeListener()
        await listener.start(channel)
        requester = Requester(channel)
        await requester.start()
        try:
            yield Shop(proxied, channel, listener, requester)
        finally:
            proxied.clear()


class Shop:
    """One test's view of the stack: place orders, read what each party recorded."""

    def __init__(self, proxied: ProxiedStack, channel: Any, listener: OutcomeListener, requester: Requester) -> None:
        self.proxied = proxied
        self.stack: Stack = proxied.stack
        self.channel = channel
        self.listener = listener
        self.requester = requester

    async def order(self, sku: str, quantity: int = 1, *, suffix: str = "") -> str:
        order_id = new_id() + suffix
        await publish_raw(self.channel, json.dumps(order_body(order_id, [(sku, quantity)])).encode())
        return order_id

    async def product(self, stock: int = 5, price: str = "10.00") -> str:
        sku = new_id("sku-")
        await seed(self.stack, {sku: (stock, price)})
        return sku

    async def intents(self, order_id: str) -> list[dict[str, Any]]:
        """The provider's PaymentIntents of the order, read from the Stripe server itself (not through a proxy)."""
        _, state = await asyncio.to_thread(http_json, f"{self.stack.stripe_url}/_test/state")
        return [p for p in state["payment_intents"] if p.get("metadata", {}).get("orderId") == order_id]

    async def money_kept(self, order_id: str) -> int:
        """Minor units the provider holds for the order: received minus refunded, over every intent."""
        _, state = await asyncio.to_thread(http_json, f"{self.stack.stripe_url}/_test/state")
        ids = {p["id"] for p in state["payment_intents"] if p.get("metadata", {}).get("orderId") == order_id}
        received = sum(p["amount_received"] for p in state["payment_intents"] if p["id"] in ids)
        refunded = sum(
            r["amount"] for r in state.get("refunds", []) if r["payment_intent"] in ids and r["status"] == "succeeded"
        )
        return received - refunded

    async def saga(self, order_id: str) -> dict[str, Any]:
        _, view = await asyncio.to_thread(order_view, self.stack, order_id)
        return view

    async def record(self, order_id: str) -> asyncpg.Record | None:
        conn = await db(self.stack.settings, "orders")
        try:
            return await conn.fetchrow("SELECT status FROM order_record WHERE order_id = $1", order_id)
        finally:
            await conn.close()

    async def reservation(self, order_id: str) -> str | None:
        conn = await db(self.stack.settings, "inventory")
        try:
            return await conn.fetchval("SELECT status FROM reservation WHERE order_id = $1", order_id)
        finally:
            await conn.close()


# -- answers lost, delayed, refused on the wire ----------------------------------------------------------
async def test_create_answer_lost_on_every_try_charges_nothing(shop: Shop) -> None:
    """Every ProcessPayment's create reaches Stripe, which creates the intent, and the answer never comes back:
    the saga gives up and its compensation finds the intent by the order's metadata and cancels it."""
    shop.proxied.stripe.add(Fault("drop_answer", match=CREATE_PAYMENT_INTENT, times=None))
    sku = await shop.product(stock=5, price="12.00")
    order_id = await shop.order(sku, 2)

    outcome = await outcome_of(shop.listener, order_id, timeout=90)
    assert outcome["status"] == "FAILED", outcome
    assert shop.proxied.stripe.stats.drop_answer >= 3, "the fault never fired"
    intents = await shop.intents(order_id)
    assert intents, "the provider never saw the order: the fault did not happen after the effect"
    assert all(p["status"] == "canceled" for p in intents), intents
    assert await shop.money_kept(order_id) == 0
    assert await stock_of(shop.stack, sku) == 5


async def test_confirm_answer_lost_on_every_try_confirms_charged_once(shop: Shop) -> None:
    """The issue's case: Stripe charged, and the answer was lost on the first try and both retries. The intent's
    id was committed before the confirmation, so a retry reads the charge instead of charging again."""
    shop.proxied.stripe.add(Fault("drop_answer", match=CONFIRM, times=None))
    sku = await shop.product(stock=5, price="8.00")
    order_id = await shop.order(sku)

    outcome = await outcome_of(shop.listener, order_id, timeout=90)
    assert shop.proxied.stripe.stats.drop_answer >= 1
    assert outcome["status"] == "CONFIRMED", outcome
    (intent,) = await shop.intents(order_id)
    assert intent["status"] == "succeeded" and intent["amount_received"] == 800
    assert await shop.money_kept(order_id) == 800
    assert (await shop.record(order_id))["status"] == "CONFIRMED"
    assert await shop.reservation(order_id) == "committed"


async def test_confirm_answer_delayed_past_the_timeout_confirms_charged_once(shop: Shop) -> None:
    """The charge's answer arrives after ProcessPayment timed out: the guide's retry on States.Timeout asks again
    under the same order lock and reads the charge; nothing is charged twice."""
    shop.proxied.stripe.add(Fault("delay", match=CONFIRM, delay_seconds=PAYMENT_TIMEOUT_SECONDS + 3))
    sku = await shop.product(stock=5, price="6.00")
    order_id = await shop.order(sku)

    outcome = await outcome_of(shop.listener, order_id, timeout=90)
    assert shop.proxied.stripe.stats.delay == 1
    assert outcome["status"] == "CONFIRMED", outcome
    view = await shop.saga(order_id)
    assert [s["outcome"] for s in view["steps"] if s["step"] == "ProcessPayment"][0] == "timed_out"
    assert await shop.money_kept(order_id) == 600
    assert len(await shop.intents(order_id)) == 1


async def test_request_reset_before_it_arrived_is_retried_and_charges_once(shop: Shop) -> None:
    shop.proxied.stripe.add(Fault("reset_before", match=CONFIRM, times=1))
    sku = await shop.product(stock=5, price="4.00")
    order_id = await shop.order(sku)

    outcome = await outcome_of(shop.listener, order_id, timeout=60)
    assert shop.proxied.stripe.stats.reset_before == 1
    assert outcome["status"] == "CONFIRMED", outcome
    assert await shop.money_kept(order_id) == 400


async def test_email_answer_lost_still_confirms_and_delivers(shop: Shop) -> None:
    """The SMTP server accepted the message and the answer was lost: notify retries (at least once delivery);
    the order stays CONFIRMED and the customer has the email."""
    shop.proxied.smtp.add(Fault("drop_answer", match=SMTP_END_OF_DATA, times=1))
    sku = await shop.product(stock=5, price="3.00")
    order_id = await shop.order(sku)

    outcome = await outcome_of(shop.listener, order_id, timeout=60)
    assert outcome["status"] == "CONFIRMED"
    assert shop.proxied.smtp.stats.drop_answer == 1

    async def emailed() -> list:
        found = await asyncio.to_thread(messages, shop.proxied.maildir)
        return [m for m in found if order_id in (m["Subject"] or "")]

    assert await eventually(emailed, timeout=15, what="the confirmation email")


# -- a service paused past its step's timeout -------------------------------------------------------------
async def test_orders_paused_past_its_timeout_writes_no_confirmed_record(shop: Shop) -> None:
    """SIGSTOP the orders process: CreateOrderRecord times out, the saga refunds and releases; when the process
    resumes, the CreateOrderRecord it still holds must not confirm the refunded order."""
    sku = await shop.product(stock=5, price="9.00")
    orders = shop.stack.supervisor.by_name("orders")
    assert orders.process is not None
    os.killpg(orders.process.pid, signal.SIGSTOP)
    try:
        order_id = await shop.order(sku, 2)

        async def compensated() -> bool:
            view = await shop.saga(order_id)
            done = {s["step"] for s in view.get("steps", []) if s["outcome"] == "succeeded"}
            return {"RefundPayment", "ReleaseInventory"} <= done

        await eventually(compensated, timeout=60, what="refund and release while orders is paused")
    finally:
        os.killpg(orders.process.pid, signal.SIGCONT)

    outcome = await outcome_of(shop.listener, order_id, timeout=90)
    assert outcome["status"] == "FAILED_COMPENSATED", outcome
    assert outcome["error"]["Error"] == "States.Timeout"
    assert await shop.money_kept(order_id) == 0
    assert await stock_of(shop.stack, sku) == 5

    # Every CreateOrderRecord the saga sent (the attempt, its reconcile) and the void: all handled by now.
    sent = [
        h["commandId"]
        for h in (await shop.saga(order_id))["history"]
        if h["event"] in ("TaskScheduled", "ReconcileScheduled")
        and h["commandId"]
        and h["state"] in ("CreateOrderRecord", "VoidOrderRecord")
    ]
    assert len(sent) >= 2, sent

    async def commands_drained() -> bool:
        conn = await db(shop.stack.settings, "orders")
        try:
            handled = await conn.fetchval("SELECT count(*) FROM inbox WHERE message_id = ANY($1::text[])", sent)
            return handled == len(sent)
        finally:
            await conn.close()

    await eventually(commands_drained, timeout=30, what="the orders process to handle every command it held")
    record = await shop.record(order_id)
    assert record is None or record["status"] == "VOIDED", record


# -- compensations that overtake their forward commands ------------------------------------------------------
async def test_a_reservation_after_its_release_reserves_nothing(shop: Shop) -> None:
    sku = await shop.product(stock=5)
    order_id = f"ORDER#late-{uuid.uuid4().hex[:8]}"
    release = {"orderId": order_id, "action": "release", "idempotencyId": f"{order_id}-release"}
    await shop.requester.send("inventory.ReleaseInventory", release, message_id="r1-" + order_id, order_id=order_id)
    assert (await shop.requester.reply("r1-" + order_id))["released"] is False
    reserve = {"orderId": order_id, "items": [{"productId": sku, "quantity": 3}], "idempotencyId": order_id}
    await shop.requester.send("inventory.ReserveInventory", reserve, message_id="r2-" + order_id, order_id=order_id)
    reply = await shop.requester.reply("r2-" + order_id)
    assert reply["type"] == "CommandFailed" and reply["Error"] == "Command.Compensated"
    assert await stock_of(shop.stack, sku) == 5
    assert await shop.reservation(order_id) is None


async def test_a_payment_after_its_refund_charges_nothing(shop: Shop) -> None:
    order_id = f"ORDER#late-{uuid.uuid4().hex[:8]}"
    refund = {"orderId": order_id, "reason": "Payment outcome unknown", "idempotencyKey": f"{order_id}-refund"}
    await shop.requester.send("payment.RefundPayment", refund, message_id="p1-" + order_id, order_id=order_id)
    assert (await shop.requester.reply("p1-" + order_id))["refunded"] is False
    pay = {
        "orderId": order_id,
        "amount": 5.0,
        "currency": "usd",
        "paymentMethodId": "pm_card_visa",
        "idempotencyKey": f"{order_id}-payment",
    }
    await shop.requester.send("payment.ProcessPayment", pay, message_id="p2-" + order_id, order_id=order_id)
    reply = await shop.requester.reply("p2-" + order_id)
    assert reply["type"] == "CommandFailed" and reply["Error"] == "Command.Compensated"
    assert await shop.intents(order_id) == []


async def test_an_order_record_after_its_void_writes_nothing(shop: Shop) -> None:
    order_id = f"ORDER#late-{uuid.uuid4().hex[:8]}"
    void = {"orderId": order_id, "reason": "Order processing failed"}
    await shop.requester.send("orders.VoidOrderRecord", void, message_id="o1-" + order_id, order_id=order_id)
    assert (await shop.requester.reply("o1-" + order_id))["voided"] is False
    create = record_command(order_id)
    await shop.requester.send("orders.CreateOrderRecord", create, message_id="o2-" + order_id, order_id=order_id)
    reply = await shop.requester.reply("o2-" + order_id)
    assert reply["type"] == "CommandFailed" and reply["Error"] == "Command.Compensated"
    assert await shop.record(order_id) is None


async def test_a_void_after_the_record_voids_it(shop: Shop) -> None:
    """The other order of the race: the late create committed first; the void still wins."""
    order_id = f"ORDER#late-{uuid.uuid4().hex[:8]}"
    create = record_command(order_id)
    await shop.requester.send("orders.CreateOrderRecord", create, message_id="c1-" + order_id, order_id=order_id)
    assert (await shop.requester.reply("c1-" + order_id))["created"] is True
    void = {"orderId": order_id, "reason": "Order processing failed"}
    await shop.requester.send("orders.VoidOrderRecord", void, message_id="c2-" + order_id, order_id=order_id)
    assert (await shop.requester.reply("c2-" + order_id))["voided"] is True
    assert (await shop.record(order_id))["status"] == "VOIDED"


def record_command(order_id: str) -> dict[str, Any]:
    return {
        "orderId": order_id,
        "customer": {"email": "ada@example.com", "phone": None},
        "lines": [{"productId": "sku-x", "name": "X", "quantity": 1, "unitPrice": 2.0, "lineTotal": 2.0}],
        "amount": 2.0,
        "currency": "usd",
        "paymentIntentId": "pi_late",
    }


# -- the sale's commit and the sweeper ----------------------------------------------------------------------
async def test_a_confirmed_order_whose_event_never_arrives_keeps_its_stock_sold(shop: Shop) -> None:
    """order.confirmed never reaches inventory (unbound here; dead-lettered in production): the saga's own
    CommitReservation step commits the sale, and the sweeper, even with no age limit, releases nothing of it."""
    queue = await shop.channel.get_queue("inventory.order-events", ensure=False)
    await queue.unbind("orders", "order.confirmed")
    try:
        sku = await shop.product(stock=5)
        order_id = await shop.order(sku, 2)
        assert (await outcome_of(shop.listener, order_id, timeout=60))["status"] == "CONFIRMED"
    finally:
        await queue.bind("orders", "order.confirmed")
    assert await shop.reservation(order_id) == "committed"
    await sweep(shop.stack)
    assert await shop.reservation(order_id) == "committed"
    assert await stock_of(shop.stack, sku) == 3


async def test_the_sweeper_releases_only_holds_of_orders_that_ended_otherwise(shop: Shop) -> None:
    sku = await shop.product(stock=10)
    ended, running = (f"ORDER#hold-{uuid.uuid4().hex[:8]}" for _ in range(2))
    for order_id in (ended, running):
        reserve = {"orderId": order_id, "items": [{"productId": sku, "quantity": 2}], "idempotencyId": order_id}
        await shop.requester.send("inventory.ReserveInventory", reserve, message_id="s-" + order_id, order_id=order_id)
        assert (await shop.requester.reply("s-" + order_id))["type"] == "InventoryReserved"
    # The saga of `ended` failed and its release was lost (FAILED_CRITICAL); `running` has no outcome yet.
    outcome = {"orderId": ended, "status": "FAILED_CRITICAL"}
    exchange = await shop.channel.get_exchange("orders")
    await exchange.publish(aio_pika.Message(json.dumps(outcome).encode(), type="OrderOutcome"), "order.failed_critical")

    async def recorded() -> bool:
        conn = await db(shop.stack.settings, "inventory")
        try:
            return bool(await conn.fetchval("SELECT 1 FROM order_outcome WHERE order_id = $1", ended))
        finally:
            await conn.close()

    await eventually(recorded, timeout=15, what="inventory to record the outcome")
    assert await sweep(shop.stack) >= 1
    assert await shop.reservation(ended) == "released"
    assert await shop.reservation(running) == "active"
    assert await stock_of(shop.stack, sku) == 8


async def sweep(stack: Stack) -> int:
    """Run inventory's sweeper once against the stack's database, with no age limit."""
    url = stack.settings.database_url("inventory")
    dsn = with_database(stack.settings.admin_database_url, database_name(url))
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        return await maintenance.sweep_once(pool, max_age_seconds=0)
    finally:
        await pool.close()
