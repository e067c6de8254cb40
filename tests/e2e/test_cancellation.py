"""Issue 18 item 2 as a new user tries it: a CONFIRMED order cancelled with ``order.cancel.requested`` ends
refunded (at the local Stripe server, read through the stripe SDK), restocked, voided and notified, and its
history through the API shows the cancellation workflow. A second cancellation, and one of an order that is not
CONFIRMED, are answered on ``order.cancellation_rejected`` with a named reason and change nothing."""

import asyncio
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from typing import Any

import aio_pika
import pytest
import stripe
from harness import Stack, create_api_token, db, eventually, metric_value, order_body, publish_raw, seed, stock_of
from test_saga_api import acall, saga_path

from devservers.smtp_sink import messages
from orchestrator.cancellation import saga_key
from orderctl.client import OutcomeListener

pytestmark = pytest.mark.e2e

STRIPE_KEY = "sk_test_orderflow_local"  # the payment service's default key; the local server takes any
REASON = "Changed my mind"


@dataclass
class Orders:
    sku: str
    confirmed: str
    failed: str
    #: CONFIRMED orders an operator cancels: through the API, and with orderctl.
    by_api: str
    by_cli: str
    #: A CONFIRMED order partly refunded by customer service before it is cancelled.
    partial: str
    #: A CONFIRMED order whose cancellation's refund the payment service refuses once (STACK_FAULTS).
    refused: str


@pytest.fixture(scope="module")
async def orders(stack: Stack) -> Orders:
    tag = uuid.uuid4().hex[:10]
    sku = f"sku-{tag}"
    await seed(stack, {sku: (10, "15.00"), f"{sku}-ops": (10, "2.00")})
    confirmed, failed = f"ORDER#{tag}-keep", f"ORDER#{tag}-declined"
    by_api, by_cli, partial = f"ORDER#{tag}-api", f"ORDER#{tag}-cli", f"ORDER#{tag}-partial"
    refused = f"ORDER#{tag}-refused"
    connection = await aio_pika.connect_robust(stack.settings.amqp_url)
    try:
        channel = await connection.channel()
        listener = OutcomeListener()
        await listener.start(channel)
        await publish_raw(channel, json.dumps(order_body(confirmed, [(sku, 2)])).encode())
        await publish_raw(channel, json.dumps(order_body(failed, [(sku, 1)], "pm_card_chargeDeclined")).encode())
        for order_id in (by_api, by_cli, partial, refused):
            await publish_raw(channel, json.dumps(order_body(order_id, [(f"{sku}-ops", 1)])).encode())
        outcomes = await listener.wait_for([confirmed, failed, by_api, by_cli, partial, refused], 120)
    finally:
        await connection.close()
    assert {i: o["status"] for i, o in outcomes.items()} == {
        confirmed: "CONFIRMED",
        failed: "FAILED",
        by_api: "CONFIRMED",
        by_cli: "CONFIRMED",
        partial: "CONFIRMED",
        refused: "CONFIRMED",
    }
    await eventually(lambda: _committed(stack, confirmed), timeout=15, what="the reservation committed")
    return Orders(sku, confirmed, failed, by_api, by_cli, partial, refused)


async def _committed(stack: Stack, order_id: str) -> bool:
    return await reservations(stack, order_id) == ["committed"]


async def reservations(stack: Stack, order_id: str) -> list[str]:
    conn = await db(stack.settings, "inventory")
    try:
        return [r["status"] for r in await conn.fetch("SELECT status FROM reservation WHERE order_id = $1", order_id)]
    finally:
        await conn.close()


class Answers:
    """An exclusive queue on the three answers to a CancelOrder, collected by orderId and routing key."""

    KEYS = ("order.cancellation_completed", "order.cancellation_failed", "order.cancellation_rejected")

    def __init__(self, channel: aio_pika.abc.AbstractChannel) -> None:
        self.channel = channel
        self.heard: list[dict[str, Any]] = []

    async def start(self) -> "Answers":
        queue = await self.channel.declare_queue("", exclusive=True, auto_delete=True)
        for key in self.KEYS:
            await queue.bind("orders", key)
        await queue.consume(self._on, no_ack=True)
        return self

    async def _on(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.heard.append(json.loads(message.body) | {"_routingKey": message.routing_key})

    async def of(self, order_id: str, count: int = 1) -> list[dict[str, Any]]:
        async def arrived() -> list[dict[str, Any]] | None:
            found = [a for a in self.heard if a.get("orderId") == order_id]
            return found if len(found) >= count else None

        return await eventually(arrived, timeout=60, what=f"{count} answer(s) to CancelOrder {order_id}")


@pytest.fixture
async def answers(channel: aio_pika.abc.AbstractChannel) -> Answers:
    return await Answers(channel).start()


async def cancel(channel: aio_pika.abc.AbstractChannel, order_id: str) -> None:
    """Publish CancelOrder as an outside client would: a bare JSON body on order.cancel.requested."""
    exchange = await channel.declare_exchange("orders", aio_pika.ExchangeType.TOPIC, durable=True)
    body = json.dumps({"orderId": order_id, "reason": REASON}).encode()
    await exchange.publish(aio_pika.Message(body=body, content_type="application/json"), "order.cancel.requested")


def stripe_client(stack: Stack) -> stripe.StripeClient:
    return stripe.StripeClient(STRIPE_KEY, base_addresses={"api": stack.stripe_url})


async def fetch(stack: Stack, service: str, sql: str, *args: Any) -> Any:
    conn = await db(stack.settings, service)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def refunds_of(stack: Stack, order_id: str) -> tuple[str, list[Any]]:
    (row,) = await fetch(stack, "payment", "SELECT payment_intent_id FROM payment WHERE order_id = $1", order_id)
    client = stripe_client(stack)
    listed = await asyncio.to_thread(client.v1.refunds.list, {"payment_intent": row["payment_intent_id"], "limit": 100})
    return row["payment_intent_id"], list(listed.data)


async def test_a_confirmed_order_is_refunded_restocked_voided_and_notified(
    stack: Stack, channel, answers: Answers, orders: Orders
) -> None:
    order_id = orders.confirmed
    assert await stock_of(stack, orders.sku) == 8  # 2 sold; the declined order's unit was released
    await cancel(channel, order_id)
    (answer,) = await answers.of(order_id)
    assert answer["_routingKey"] == "order.cancellation_completed", answer
    assert answer["status"] == "CANCELLED_BY_CUSTOMER" and answer["error"] is None
    assert float(answer["amount"]) == 30.0 and answer["refundId"]

    # Refunded at Stripe in full, once, with the idempotency key {orderId}-cancel-refund: the same request
    # with that key replays the refund it made instead of making a second one.
    intent_id, refunds = await refunds_of(stack, order_id)
    assert [(r.id, r.amount, r.status) for r in refunds] == [(answer["refundId"], 3000, "succeeded")]
    replay = await asyncio.to_thread(
        stripe_client(stack).v1.refunds.create,
        {"payment_intent": intent_id, "metadata": {"orderId": order_id, "reason": REASON}},
        {"idempotency_key": f"{order_id}-cancel-refund"},
    )
    assert replay.id == answer["refundId"]
    assert len((await refunds_of(stack, order_id))[1]) == 1

    # Restocked: the sold units are back, the reservation restocked (not released: it was sold).
    assert await stock_of(stack, orders.sku) == 10
    assert await reservations(stack, order_id) == ["restocked"]

    # The order record voided, with the reason.
    (record,) = await fetch(stack, "orders", "SELECT status FROM order_record WHERE order_id = $1", order_id)
    (void,) = await fetch(stack, "orders", "SELECT reason FROM order_void WHERE order_id = $1", order_id)
    assert record["status"] == "VOIDED" and void["reason"] == REASON

    # The customer told: a cancellation email in the SMTP sink, beside the confirmation.
    async def cancellation_mail() -> list[Any]:
        return [m for m in messages(stack.settings.maildir) if m["Subject"] == f"Order {order_id} cancelled"]

    (mail,) = await eventually(cancellation_mail, timeout=10, what="the cancellation email")
    assert mail["To"] == "ada@example.com" and "Refunded: 30.00 USD" in mail.get_payload()
    sent = await fetch(stack, "notify", "SELECT kind, channel, status FROM notification WHERE order_id = $1", order_id)
    assert sorted(tuple(r) for r in sent) == [("cancellation", "email", "sent"), ("confirmation", "email", "sent")]

    # Its history through the API: the cancellation workflow's saga, keyed '<orderId> cancel'.
    status, _, saga = await acall(stack, saga_path(saga_key(order_id)), token=stack.api_token)
    assert status == 200, saga
    assert saga["workflow"]["name"] == "cancellation" and saga["status"] == "CANCELLED_BY_CUSTOMER"
    assert [s["step"] for s in saga["steps"]] == [
        "RefundCancelledOrder",
        "RestockCancelledOrder",
        "VoidCancelledOrder",
        "NotifyCancellation",
    ]
    assert saga["history"][-1]["event"] == "ExecutionSucceeded"
    # Listed beside the order's own saga, each with its workflow's name.
    status, _, page = await acall(stack, "/api/v1/sagas", token=stack.api_token, query=[("q", order_id)])
    assert status == 200
    assert {(s["orderId"], s["workflowName"], s["status"]) for s in page["items"]} == {
        (order_id, "order", "CONFIRMED"),
        (saga_key(order_id), "cancellation", "CANCELLED_BY_CUSTOMER"),
    }
    finished = metric_value(
        stack.port("orchestrator"),
        "orderflow_sagas_finished_total",
        workflow="cancellation",
        status="CANCELLED_BY_CUSTOMER",
    )
    assert finished >= 1


async def test_a_second_cancellation_is_refused_and_changes_nothing(
    stack: Stack, channel, answers: Answers, orders: Orders
) -> None:
    order_id = orders.confirmed
    status, _, first = await acall(stack, saga_path(saga_key(order_id)), token=stack.api_token)
    if status != 200 or first["status"] == "RUNNING":  # run alone: cancel it first
        await cancel(channel, order_id)
        await answers.of(order_id)
    stock, (_, refunds) = await stock_of(stack, orders.sku), await refunds_of(stack, order_id)
    before = await acall(stack, saga_path(saga_key(order_id)), token=stack.api_token)

    seen = len([a for a in answers.heard if a.get("orderId") == order_id])
    await cancel(channel, order_id)
    answer = (await answers.of(order_id, seen + 1))[-1]
    assert answer["_routingKey"] == "order.cancellation_rejected"
    assert answer["reason"] == "CancellationAlreadyRequested" and "CANCELLED_BY_CUSTOMER" in answer["detail"]
    assert await stock_of(stack, orders.sku) == stock
    assert len((await refunds_of(stack, order_id))[1]) == len(refunds)
    after = await acall(stack, saga_path(saga_key(order_id)), token=stack.api_token)
    assert after[2]["version"] == before[2]["version"] and after[2]["history"] == before[2]["history"]


async def test_an_order_that_is_not_confirmed_or_unknown_is_refused(
    stack: Stack, channel, answers: Answers, orders: Orders
) -> None:
    await cancel(channel, orders.failed)
    (answer,) = await answers.of(orders.failed)
    assert answer["_routingKey"] == "order.cancellation_rejected"
    assert answer["reason"] == "OrderNotConfirmed" and "FAILED" in answer["detail"]
    status, _, _ = await acall(stack, saga_path(saga_key(orders.failed)), token=stack.api_token)
    assert status == 404

    unknown = f"ORDER#{uuid.uuid4().hex[:10]}-never"
    await cancel(channel, unknown)
    (answer,) = await answers.of(unknown)
    assert answer["reason"] == "OrderNotFound"
    rows = await fetch(stack, "orchestrator", "SELECT order_id FROM saga WHERE subject_order_id = $1", unknown)
    assert rows == []


# -- an operator's cancel: POST /api/v1/sagas/{orderId}/cancel and orderctl cancel -------------------------------
async def cancellation_of(stack: Stack, order_id: str, token: str) -> dict[str, Any]:
    async def ended() -> dict[str, Any] | None:
        status, _, saga = await acall(stack, saga_path(saga_key(order_id)), token=token)
        return saga if status == 200 and saga["status"] != "RUNNING" else None

    return await eventually(ended, timeout=60, what=f"the cancellation of {order_id} ended")


async def test_an_operator_cancels_through_the_api_audited_and_refusals_are_http_answers(
    stack: Stack, orders: Orders
) -> None:
    tag = uuid.uuid4().hex[:8]
    operator = await create_api_token(stack.settings, "operator", f"cancel-operator-{tag}")
    path = saga_path(orders.by_api, "/cancel")
    status, _, body = await acall(stack, path, token=stack.api_token, method="POST", body={"reason": "x"})
    assert status == 403  # a viewer may not

    status, _, body = await acall(stack, path, token=operator, method="POST", body={"reason": "Customer called"})
    assert status == 200, body
    assert body["cancellation"] == saga_key(orders.by_api) and body["status"] == "RUNNING"
    assert body["by"]["token"] == f"cancel-operator-{tag}"
    saga = await cancellation_of(stack, orders.by_api, operator)
    assert saga["status"] == "CANCELLED_BY_CUSTOMER" and saga["workflow"]["name"] == "cancellation"
    (audit,) = [h for h in saga["history"] if h["event"] == "CancelRequested"]
    assert audit["detail"]["reason"] == "Customer called" and audit["detail"]["by"]["role"] == "operator"
    (void,) = await fetch(stack, "orders", "SELECT reason FROM order_void WHERE order_id = $1", orders.by_api)
    assert void["reason"] == "Customer called"

    status, _, again = await acall(stack, path, token=operator, method="POST", body={"reason": "again"})
    assert status == 409 and again["refusal"] == "CancellationAlreadyRequested"
    status, _, failed = await acall(
        stack, saga_path(orders.failed, "/cancel"), token=operator, method="POST", body={"reason": "x"}
    )
    assert status == 409 and failed["refusal"] == "SagaFinished" and "FAILED" in failed["detail"]
    status, _, _ = await acall(
        stack, saga_path("ORDER#never-ordered", "/cancel"), token=operator, method="POST", body={"reason": "x"}
    )
    assert status == 404
    assert len((await refunds_of(stack, orders.by_api))[1]) == 1


def orderctl_cancel(stack: Stack, token: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERFLOW_")}
    env |= {"ORDERFLOW_API_URL": stack.api_url, "ORDERFLOW_API_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "orderctl", "cancel", *args], env=env, capture_output=True, text=True, timeout=90
    )


async def test_orderctl_cancel_waits_for_the_cancellation(stack: Stack, orders: Orders) -> None:
    operator = await create_api_token(stack.settings, "operator", f"cancel-cli-{uuid.uuid4().hex[:8]}")
    done = await asyncio.to_thread(orderctl_cancel, stack, operator, orders.by_cli, "--reason", "By phone", "--json")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["status"] == "CANCELLED_BY_CUSTOMER" and printed["cancellation"] == saga_key(orders.by_cli)
    again = await asyncio.to_thread(orderctl_cancel, stack, operator, orders.by_cli, "--reason", "twice")
    assert again.returncode == 1  # 409: orderctl's exit code for a refusal
    assert "its cancellation is CANCELLED_BY_CUSTOMER" in again.stderr


async def test_a_partly_refunded_order_is_cancelled_for_what_remains(
    stack: Stack, channel, answers: Answers, orders: Orders
) -> None:
    """Customer service refunded 0.50 of the 2.00 first (POST /refund); the cancellation refunds the 1.50 left
    instead of failing on more than the charge holds."""
    operator = await create_api_token(stack.settings, "operator", f"cancel-partial-{uuid.uuid4().hex[:8]}")
    body = {"amount": 0.5, "reason": "scratched"}
    status, _, asked = await acall(
        stack, saga_path(orders.partial, "/refund"), token=operator, method="POST", body=body
    )
    assert status == 202, asked

    async def refunded_once() -> bool:
        return len((await refunds_of(stack, orders.partial))[1]) == 1

    await eventually(refunded_once, timeout=30, what="the manual refund at Stripe")
    await cancel(channel, orders.partial)
    (answer,) = await answers.of(orders.partial)
    assert answer["_routingKey"] == "order.cancellation_completed", answer
    assert float(answer["amount"]) == 1.5
    _, refunds = await refunds_of(stack, orders.partial)
    assert sorted(r.amount for r in refunds) == [50, 150]


async def test_a_refused_refund_ends_cancellation_failed_changing_nothing_and_a_redrive_completes_it(
    stack: Stack, channel, answers: Answers, orders: Orders
) -> None:
    order_id = orders.refused
    stock = await stock_of(stack, f"{orders.sku}-ops")
    await cancel(channel, order_id)
    (failed,) = await answers.of(order_id)
    assert failed["_routingKey"] == "order.cancellation_failed", failed
    assert failed["status"] == "CANCELLATION_FAILED" and failed["error"]["Error"] == "RefundFailed"
    # The refund came first: nothing else moved, and the order saga is untouched.
    assert await reservations(stack, order_id) == ["committed"] and await stock_of(stack, f"{orders.sku}-ops") == stock
    (record,) = await fetch(stack, "orders", "SELECT status FROM order_record WHERE order_id = $1", order_id)
    assert record["status"] == "CONFIRMED" and (await refunds_of(stack, order_id))[1] == []
    assert (
        metric_value(
            stack.port("orchestrator"),
            "orderflow_sagas_finished_total",
            workflow="cancellation",
            status="CANCELLATION_FAILED",
        )
        >= 1
    )

    operator = await create_api_token(stack.settings, "operator", f"cancel-redrive-{uuid.uuid4().hex[:8]}")
    path = saga_path(saga_key(order_id), "/redrive")
    status, _, redriven = await acall(stack, path, token=operator, method="POST", body={"reason": "PSP fixed"})
    assert status == 200 and redriven["restarted"] == ["RefundCancelledOrder"], redriven
    (_, completed) = await answers.of(order_id, 2)
    assert completed["_routingKey"] == "order.cancellation_completed", completed
    assert await reservations(stack, order_id) == ["restocked"]
    assert len((await refunds_of(stack, order_id))[1]) == 1
