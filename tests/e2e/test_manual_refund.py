"""Customer service's manual refund (POST /api/v1/sagas/{orderId}/refund, orderctl refund) on the running stack:
the money is checked at the local Stripe server through the stripe SDK, the audit in the saga's history."""

import asyncio
import json
import os
import re
import subprocess
import sys
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiohttp
import pytest
import stripe
from harness import Stack, create_api_token, db, eventually, metric_value, order_body, place_orders, seed
from test_saga_api import acall, saga_path

from orderctl.checker import check

pytestmark = pytest.mark.e2e

STRIPE_KEY = "sk_test_orderflow_local"  # the payment service's default key; the local server takes any


@dataclass
class Orders:
    tag: str
    #: CONFIRMED orders of 30.00 USD each, one per test that refunds.
    paid: dict[str, str]
    declined: str
    viewer: str
    operator: str
    operator_name: str


@pytest.fixture(scope="module")
async def orders(stack: Stack) -> Orders:
    tag = uuid.uuid4().hex[:10]
    sku = f"sku-{tag}"
    await seed(stack, {sku: (50, "15.00")})
    paid = {name: f"ORDER#{tag}-{name}" for name in ("split", "outside", "retry", "cli", "cancelled", "console")}
    declined = f"ORDER#{tag}-declined"
    bodies = [order_body(order_id, [(sku, 2)]) for order_id in paid.values()]
    outcomes = await place_orders(stack, [*bodies, order_body(declined, [(sku, 1)], "pm_card_chargeDeclined")])
    assert {i: o["status"] for i, o in outcomes.items()} == dict.fromkeys(paid.values(), "CONFIRMED") | {
        declined: "FAILED"
    }, {i: (o["status"], o.get("error")) for i, o in outcomes.items()}
    viewer = await create_api_token(stack.settings, "viewer", f"refund-viewer-{tag}")
    operator_name = f"refund-operator-{tag}"
    operator = await create_api_token(stack.settings, "operator", operator_name)
    return Orders(tag, paid, declined, viewer, operator, operator_name)


def stripe_client(stack: Stack) -> stripe.StripeClient:
    return stripe.StripeClient(STRIPE_KEY, base_addresses={"api": stack.stripe_url})


async def intent_of(stack: Stack, order_id: str) -> str:
    conn = await db(stack.settings, "payment")
    try:
        return await conn.fetchval("SELECT payment_intent_id FROM payment WHERE order_id = $1", order_id)
    finally:
        await conn.close()


async def money_at_stripe(stack: Stack, order_id: str) -> tuple[list[int], int]:
    """The order's refunds at Stripe (amounts in cents, smallest first) and its charge's amount_refunded."""
    client = stripe_client(stack)
    intent_id = await intent_of(stack, order_id)
    intent = await asyncio.to_thread(client.v1.payment_intents.retrieve, intent_id)
    charge = await asyncio.to_thread(client.v1.charges.retrieve, intent.latest_charge)
    refunds = await asyncio.to_thread(client.v1.refunds.list, {"payment_intent": intent_id, "limit": 100})
    return sorted(r.amount for r in refunds.data), charge.amount_refunded


async def refund(
    stack: Stack, order_id: str, body: dict[str, Any], *, token: str, key: str | None = None
) -> tuple[int, Any]:
    headers = {"Idempotency-Key": key} if key else None
    status, _, answer = await acall(
        stack, saga_path(order_id, "/refund"), token=token, method="POST", body=body, headers=headers
    )
    return status, answer


async def saga(stack: Stack, orders: Orders, order_id: str) -> dict[str, Any]:
    status, _, body = await acall(stack, saga_path(order_id), token=orders.viewer)
    assert status == 200, body
    return body


async def outcome(stack: Stack, orders: Orders, order_id: str, command_id: str) -> dict[str, Any]:
    """The history entry that ended the refund sent as ``command_id``."""

    async def ended() -> dict[str, Any] | None:
        history = (await saga(stack, orders, order_id))["history"]
        return next(
            (
                h
                for h in history
                if h["commandId"] == command_id and h["event"] in ("ManualRefundSucceeded", "ManualRefundFailed")
            ),
            None,
        )

    return await eventually(ended, timeout=30, what=f"the outcome of refund {command_id}")


def events(detail: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [h for h in detail["history"] if h["event"] == name]


async def test_a_partial_refund_then_the_rest_are_two_refunds_audited(stack: Stack, orders: Orders) -> None:
    order_id = orders.paid["split"]
    status, first = await refund(
        stack, order_id, {"amount": 12.5, "reason": "one mug broken"}, token=orders.operator, key=f"{orders.tag}-1"
    )
    assert status == 202, first
    assert first["status"] == "pending" and first["expected"] == 12.5 and first["currency"] == "usd"
    assert first["idempotencyKey"] == f"{order_id}-manual-refund-{orders.tag}-1"
    done = await outcome(stack, orders, order_id, first["commandId"])
    assert done["event"] == "ManualRefundSucceeded" and done["detail"]["amount"] == 12.5

    status, rest = await refund(stack, order_id, {"reason": "customer returned the rest"}, token=orders.operator)
    assert status == 202, rest
    assert rest["amount"] is None and rest["expected"] == 17.5
    done = await outcome(stack, orders, order_id, rest["commandId"])
    assert done["event"] == "ManualRefundSucceeded" and done["detail"]["amount"] == 17.5

    refunds, refunded = await money_at_stripe(stack, order_id)
    assert refunds == [1250, 1750] and refunded == 3000

    detail = await saga(stack, orders, order_id)
    assert detail["status"] == "CONFIRMED", "a manual refund leaves the workflow's state alone"
    asked = events(detail, "ManualRefundRequested")
    assert [a["detail"]["reason"] for a in asked] == ["one mug broken", "customer returned the rest"]
    for entry in asked:
        by = entry["detail"]["by"]
        assert by["token"] == orders.operator_name and by["role"] == "operator" and by["address"]
    assert [a["detail"]["amount"] for a in asked] == [12.5, None]
    assert len(events(detail, "ManualRefundSucceeded")) == 2

    # Nothing remains: a third refund is refused before anything is sent, in full or in part.
    for body in ({"reason": "again"}, {"amount": 1, "reason": "again"}):
        status, refused = await refund(stack, order_id, body, token=orders.operator)
        assert status == 409 and refused["error"] == "RefundExceedsCharge", refused
    assert len(events(await saga(stack, orders, order_id), "ManualRefundRequested")) == 2
    assert (await money_at_stripe(stack, order_id))[1] == 3000


async def test_more_than_the_charge_holds_is_refused_and_moves_no_money(stack: Stack, orders: Orders) -> None:
    order_id = orders.paid["outside"]
    status, refused = await refund(stack, order_id, {"amount": 30.01, "reason": "too much"}, token=orders.operator)
    assert status == 422 and refused["remaining"] == 30.0, refused

    # Someone refunds 25.00 at Stripe's dashboard: the saga does not know, the payment service asks Stripe.
    intent_id = await intent_of(stack, order_id)
    await asyncio.to_thread(stripe_client(stack).v1.refunds.create, {"payment_intent": intent_id, "amount": 2500})
    port = stack.port("orchestrator")
    failed_before = metric_value(port, "orderflow_manual_refunds_total", outcome="failed")
    status, asked = await refund(stack, order_id, {"amount": 10, "reason": "goodwill"}, token=orders.operator)
    assert status == 202, asked
    done = await outcome(stack, orders, order_id, asked["commandId"])
    assert done["event"] == "ManualRefundFailed" and done["error"] == "RefundExceedsCharge", done
    refunds, refunded = await money_at_stripe(stack, order_id)
    assert refunds == [2500] and refunded == 2500, "no money moved"
    after = metric_value(port, "orderflow_manual_refunds_total", outcome="failed")
    assert after == failed_before + 1
    # A failed refund holds nothing: what Stripe still has may be refunded.
    status, rest = await refund(stack, order_id, {"amount": 5, "reason": "what is left"}, token=orders.operator)
    assert status == 202, rest
    assert (await outcome(stack, orders, order_id, rest["commandId"]))["event"] == "ManualRefundSucceeded"
    assert (await money_at_stripe(stack, order_id))[1] == 3000


async def test_the_same_idempotency_key_refunds_once(stack: Stack, orders: Orders) -> None:
    order_id = orders.paid["retry"]
    key = f"ticket-{orders.tag}"
    body = {"amount": 4.99, "reason": "late delivery"}
    status, first = await refund(stack, order_id, body, token=orders.operator, key=key)
    assert status == 202 and not first["replayed"], first
    status, again = await refund(stack, order_id, body, token=orders.operator, key=key)
    assert status == 200 and again["replayed"] and again["commandId"] == first["commandId"], again
    await outcome(stack, orders, order_id, first["commandId"])
    status, later = await refund(stack, order_id, body, token=orders.operator, key=key)
    assert status == 200 and later["status"] == "succeeded" and later["refunded"] == 4.99, later
    status, other = await refund(stack, order_id, {**body, "amount": 5}, token=orders.operator, key=key)
    assert status == 422 and other["requestKey"] == key, other

    assert await money_at_stripe(stack, order_id) == ([499], 499)
    assert len(events(await saga(stack, orders, order_id), "ManualRefundRequested")) == 1


async def test_a_viewer_may_not_refund(stack: Stack, orders: Orders) -> None:
    order_id = orders.paid["retry"]
    before = len((await saga(stack, orders, order_id))["history"])
    status, refused = await refund(stack, order_id, {"reason": "viewer"}, token=orders.viewer)
    assert status == 403 and refused["requiredRole"] == "operator", refused
    assert len((await saga(stack, orders, order_id))["history"]) == before


async def test_an_order_never_charged_or_unknown_is_refused(stack: Stack, orders: Orders) -> None:
    status, refused = await refund(stack, orders.declined, {"reason": "declined"}, token=orders.operator)
    assert status == 409 and refused["error"] == "NoChargeToRefund" and refused["sagaStatus"] == "FAILED", refused
    assert not events(await saga(stack, orders, orders.declined), "ManualRefundRequested")
    status, missing = await refund(stack, f"ORDER#{orders.tag}-none", {"reason": "x"}, token=orders.operator)
    assert status == 404, missing
    status, bad = await refund(stack, orders.declined, {"reason": "x"}, token=orders.operator, key="has space")
    assert status == 400 and {e["name"] for e in bad["errors"]} == {"Idempotency-Key"}, bad
    status, bad = await refund(stack, orders.declined, {"amount": -1.001}, token=orders.operator)
    assert status == 400 and {e["name"] for e in bad["errors"]} == {"amount", "reason"}, bad


async def test_a_cancelled_order_is_left_to_its_cancellation(stack: Stack, orders: Orders) -> None:
    order_id = orders.paid["cancelled"]
    connection = await aio_pika.connect_robust(stack.settings.amqp_url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange("orders", aio_pika.ExchangeType.TOPIC, durable=True)
        body = json.dumps({"orderId": order_id, "reason": "changed my mind"}).encode()
        await exchange.publish(aio_pika.Message(body=body, content_type="application/json"), "order.cancel.requested")
    finally:
        await connection.close()

    async def cancellation() -> str | None:
        status, _, body = await acall(stack, saga_path(f"{order_id} cancel"), token=orders.viewer)
        return body["status"] if status == 200 and body["status"] != "RUNNING" else None

    await eventually(cancellation, timeout=60, what=f"the cancellation of {order_id}")
    status, refused = await refund(stack, order_id, {"amount": 1, "reason": "also"}, token=orders.operator)
    assert status == 409 and "cancellation" in refused["detail"], refused
    assert not events(await saga(stack, orders, order_id), "ManualRefundRequested")


def orderctl_refund(stack: Stack, token: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERFLOW_")}
    env |= {"ORDERFLOW_API_URL": stack.api_url, "ORDERFLOW_API_TOKEN": token}
    command = [sys.executable, "-m", "orderctl", "refund", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


async def test_orderctl_refund_through_the_api(stack: Stack, orders: Orders) -> None:
    order_id = orders.paid["cli"]
    done = await asyncio.to_thread(
        orderctl_refund, stack, orders.operator, order_id, "--amount", "10", "--reason", "coupon", "--json"
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["status"] == "succeeded" and answer["outcome"]["detail"]["amount"] == 10.0
    rest = await asyncio.to_thread(orderctl_refund, stack, orders.operator, order_id, "--reason", "all of it")
    assert rest.returncode == 0 and "20.00 USD succeeded" in rest.stdout, rest.stdout + rest.stderr
    again = await asyncio.to_thread(orderctl_refund, stack, orders.operator, order_id, "--reason", "more")
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "nothing is left" in again.stderr
    viewer = await asyncio.to_thread(orderctl_refund, stack, orders.viewer, order_id, "--reason", "x")
    assert viewer.returncode == 2 and "operator" in viewer.stderr
    assert await money_at_stripe(stack, order_id) == ([1000, 2000], 3000)


async def console_post(stack: Stack, token: str, order_id: str, form: dict[str, str]) -> tuple[int, str, str]:
    """The console's refund form posted as a browser on the console's page does: status, Location, page."""
    url = f"{stack.api_url}/console/sagas/{urllib.parse.quote(order_id, safe='')}/refund"
    headers = {"Authorization": f"Bearer {token}", "Origin": stack.api_url}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=form, headers=headers, allow_redirects=False) as answer:
            return answer.status, answer.headers.get("Location", ""), await answer.text()


async def console_page(stack: Stack, token: str, order_id: str) -> str:
    url = f"{stack.api_url}/console/sagas/{urllib.parse.quote(order_id, safe='')}"
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as answer:
            assert answer.status == 200
            return await answer.text()


async def test_the_consoles_refund_form(stack: Stack, orders: Orders) -> None:
    order_id = orders.paid["console"]
    assert 'id="refund-form"' not in await console_page(stack, orders.viewer, order_id)
    drawn = await console_page(stack, orders.operator, order_id)
    assert 'id="refund-form"' in drawn and "30.00 USD may be refunded" in drawn
    key = re.search(r'name="key" value="([^"]+)"', drawn)
    assert key is not None

    form = {"amount": "2.50", "reason": "scratched box", "key": key[1]}
    for _ in range(2):  # a double click: one refund
        status, location, _ = await console_post(stack, orders.operator, order_id, form)
        assert status == 303 and location.endswith("?notice=refund-requested"), (status, location)
    asked = events(await saga(stack, orders, order_id), "ManualRefundRequested")
    assert len(asked) == 1 and asked[0]["detail"]["by"]["token"] == orders.operator_name
    done = await outcome(stack, orders, order_id, asked[0]["detail"]["commandId"])
    assert done["event"] == "ManualRefundSucceeded"
    assert await money_at_stripe(stack, order_id) == ([250], 250)
    assert "27.50 USD may be refunded" in await console_page(stack, orders.operator, order_id)

    status, _, page = await console_post(stack, orders.operator, order_id, {"amount": "40", "reason": "too much"})
    assert status == 422 and "Not refunded" in page and "27.50" in page
    status, _, page = await console_post(stack, orders.operator, order_id, {"amount": "1"})
    assert status == 400 and "Not refunded" in page
    status, _, _ = await console_post(stack, orders.viewer, order_id, {"amount": "1", "reason": "viewer"})
    assert status == 403
    assert await money_at_stripe(stack, order_id) == ([250], 250)


async def test_the_invariant_checker_allows_what_customer_service_refunded(stack: Stack, orders: Orders) -> None:
    """Last in this module: every order here was refunded in part or in full by hand, and stays CONFIRMED."""
    report = await check(stack.settings, allow_running=True, stripe_url=stack.stripe_url)
    ours = [v for v in report.violations if (v.order_id or "").startswith(f"ORDER#{orders.tag}-")]
    assert ours == []
