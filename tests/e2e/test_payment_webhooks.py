"""3-D Secure: a PaymentIntent that needs the customer does not fail the order; the saga waits for
Stripe's signed webhook. The endpoint rejects what is unsigned, wrongly signed or stale, and a replayed
event has no second effect. A correctly signed event is still only a notification: the endpoint acts on the
PaymentIntent as Stripe returns it, and answers 503 (so Stripe delivers again) when Stripe cannot be asked."""

import hashlib
import hmac
import json
import time
import urllib.request

import pytest
from faults_support import add_stripe_fault
from harness import (
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
    stock_of,
    waiting_intent,
)

pytestmark = pytest.mark.e2e


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def post_webhook(stack: Stack, payload: bytes, signature: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.port('payment')}/webhooks/stripe", data=payload, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def fetch_event(stack: Stack, event_id: str) -> bytes:
    """The event as Stripe's API returns it (GET /v1/events/{id})."""
    request = urllib.request.Request(
        f"{stack.stripe_url}/v1/events/{event_id}", headers={"Authorization": "Bearer sk_test_orderflow_local"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read()


def event_claiming(intent_id: str, status: str, event_type: str = "payment_intent.succeeded") -> bytes:
    """An event body as an attacker (or a stale copy) would present it: any id, any status."""
    return json.dumps(
        {
            "id": "evt_forged_" + new_id(""),
            "object": "event",
            "type": event_type,
            "created": int(time.time()),
            "data": {
                "object": {
                    "id": intent_id,
                    "object": "payment_intent",
                    "status": status,
                    "amount": 800,
                    "currency": "usd",
                }
            },
        }
    ).encode()


async def recorded_events(stack: Stack, event_id: str) -> int:
    conn = await db(stack.settings, "payment")
    try:
        return await conn.fetchval("SELECT count(*) FROM webhook_event WHERE event_id = $1", event_id)
    finally:
        await conn.close()


async def test_3ds_payment_completed_by_signed_webhook(stack: Stack, channel, listener) -> None:
    sku = new_id("sku-")
    await seed(stack, {sku: (5, "8.00")})
    order_id = new_id()
    body = order_body(order_id, [(sku, 1)], "pm_card_authenticationRequired")
    await publish_raw(channel, json.dumps(body).encode())
    intent_id = await waiting_intent(stack, order_id)
    _, view = order_view(stack, order_id)
    assert view["status"] == "RUNNING" and view["currentStep"] == "ProcessPayment"

    status, _ = http_json(
        f"{stack.stripe_url}/_test/payment_intents/{intent_id}/authenticate", method="POST", body={"outcome": "succeed"}
    )
    assert status == 200
    outcome = await outcome_of(listener, order_id)
    assert outcome["status"] == "CONFIRMED"
    _, state = http_json(f"{stack.stripe_url}/_test/state")
    assert [c["amount"] for c in state["charges"] if c.get("payment_intent") == intent_id] == [800]

    # Replaying the delivered event, freshly and correctly signed, changes nothing.
    event_id = next(
        e["id"] for e in state["events"] if e["type"] == "payment_intent.succeeded" and e["object_id"] == intent_id
    )
    event = fetch_event(stack, event_id)
    status, answer = post_webhook(stack, event, sign(event, stack.settings.stripe_webhook_secret))
    assert status == 200 and answer["applied"] is False


async def test_failed_authentication_fails_the_order_and_releases_stock(stack: Stack, channel, listener) -> None:
    sku = new_id("sku-")
    await seed(stack, {sku: (5, "8.00")})
    order_id = new_id()
    await publish_raw(channel, json.dumps(order_body(order_id, [(sku, 2)], "pm_card_authenticationRequired")).encode())
    intent_id = await waiting_intent(stack, order_id)
    http_json(
        f"{stack.stripe_url}/_test/payment_intents/{intent_id}/authenticate", method="POST", body={"outcome": "fail"}
    )
    outcome = await outcome_of(listener, order_id)
    assert outcome["status"] == "FAILED" and outcome["error"]["Error"] == "CardError"
    assert await stock_of(stack, sku) == 5


async def test_unsigned_wrongly_signed_and_stale_webhooks_are_rejected(stack: Stack, channel, listener) -> None:
    sku = new_id("sku-")
    await seed(stack, {sku: (5, "8.00")})
    order_id = new_id()
    await publish_raw(channel, json.dumps(order_body(order_id, [(sku, 1)], "pm_card_authenticationRequired")).encode())
    intent_id = await waiting_intent(stack, order_id)
    forged = event_claiming(intent_id, "succeeded")
    secret = stack.settings.stripe_webhook_secret
    assert post_webhook(stack, forged, None)[0] == 400
    assert post_webhook(stack, forged, sign(forged, "whsec_wrong"))[0] == 400
    assert post_webhook(stack, forged, sign(forged, secret, int(time.time()) - 3600))[0] == 400
    _, view = order_view(stack, order_id)
    assert view["status"] == "RUNNING"  # nothing above reached the saga

    # The real completion still works afterwards.
    http_json(
        f"{stack.stripe_url}/_test/payment_intents/{intent_id}/authenticate", method="POST", body={"outcome": "succeed"}
    )
    assert (await outcome_of(listener, order_id))["status"] == "CONFIRMED"


async def test_a_signed_event_is_checked_against_stripe_before_it_confirms_anything(
    stack: Stack, channel, listener
) -> None:
    """Issue 15, item 3: a correctly signed payment_intent.succeeded for an intent Stripe says still
    requires_action confirms nothing; while Stripe cannot be asked the endpoint answers 503 and records nothing;
    the real completion confirms the order, even when Stripe fails the first fetch (the delivery is retried)."""
    sku = new_id("sku-")
    await seed(stack, {sku: (5, "8.00")})
    order_id = new_id()
    await publish_raw(channel, json.dumps(order_body(order_id, [(sku, 1)], "pm_card_authenticationRequired")).encode())
    intent_id = await waiting_intent(stack, order_id)
    secret = stack.settings.stripe_webhook_secret
    lie = event_claiming(intent_id, "succeeded")
    lie_id = json.loads(lie)["id"]
    intent_path = f"/v1/payment_intents/{intent_id}"

    # Stripe unreachable for the fetch: an error status, so Stripe retries; the event id is not spent.
    await add_stripe_fault(stack, status=503, method="GET", path_prefix=intent_path)
    status, answer = post_webhook(stack, lie, sign(lie, secret))
    assert status == 503, answer
    assert await recorded_events(stack, lie_id) == 0

    # Stripe answers requires_action: the body's "succeeded" is not believed.
    status, answer = post_webhook(stack, lie, sign(lie, secret))
    assert status == 200 and answer["applied"] is False, answer
    _, view = order_view(stack, order_id)
    assert view["status"] == "RUNNING" and view["currentStep"] == "ProcessPayment", view
    assert await waiting_intent(stack, order_id) == intent_id  # still waiting for the customer
    _, state = http_json(f"{stack.stripe_url}/_test/state")
    assert not [c for c in state["charges"] if c.get("payment_intent") == intent_id]

    # The customer authenticates; Stripe's first fetch by the endpoint fails, Stripe delivers again.
    await add_stripe_fault(stack, status=500, method="GET", path_prefix=intent_path)
    status, _ = http_json(
        f"{stack.stripe_url}/_test/payment_intents/{intent_id}/authenticate", method="POST", body={"outcome": "succeed"}
    )
    assert status == 200
    assert (await outcome_of(listener, order_id))["status"] == "CONFIRMED"
    _, state = http_json(f"{stack.stripe_url}/_test/state")
    assert [c["amount"] for c in state["charges"] if c.get("payment_intent") == intent_id] == [800]

    async def retried_delivery() -> list[dict] | None:
        _, now = http_json(f"{stack.stripe_url}/_test/state")
        succeeded = {
            e["id"] for e in now["events"] if e["type"] == "payment_intent.succeeded" and e["object_id"] == intent_id
        }
        found = [d for d in now["webhook_deliveries"] if d["event_id"] in succeeded and d["status"] == "delivered"]
        return found or None

    deliveries = await eventually(retried_delivery, timeout=10, what="the succeeded event delivered")
    assert max(d["attempts"] for d in deliveries) >= 2, deliveries


async def test_an_event_that_can_change_nothing_is_recorded_without_asking_stripe(
    stack: Stack, channel, listener
) -> None:
    """Stripe sends payment_intent.succeeded for every payment, also one the charge's answer already settled:
    such an event is recorded without a request to Stripe (it answers 200 while Stripe cannot be asked), and a
    replay of it is still applied once. A body claiming another status for the same intent is checked with
    Stripe first (503 while Stripe cannot be asked, nothing recorded)."""
    sku = new_id("sku-")
    await seed(stack, {sku: (5, "8.00")})
    order_id = new_id()
    await publish_raw(channel, json.dumps(order_body(order_id, [(sku, 1)])).encode())
    assert (await outcome_of(listener, order_id))["status"] == "CONFIRMED"
    conn = await db(stack.settings, "payment")
    try:
        intent_id = await conn.fetchval("SELECT payment_intent_id FROM payment WHERE order_id = $1", order_id)
    finally:
        await conn.close()
    secret = stack.settings.stripe_webhook_secret
    await add_stripe_fault(stack, status=503, method="GET", path_prefix=f"/v1/payment_intents/{intent_id}", count=5)

    settled = event_claiming(intent_id, "succeeded")
    for _ in range(2):  # the second is a replay
        status, answer = post_webhook(stack, settled, sign(settled, secret))
        assert status == 200 and answer == {"received": True, "applied": False}, answer
    assert await recorded_events(stack, json.loads(settled)["id"]) == 1

    other = event_claiming(intent_id, "canceled", "payment_intent.canceled")
    status, answer = post_webhook(stack, other, sign(other, secret))
    assert status == 503, answer
    assert await recorded_events(stack, json.loads(other)["id"]) == 0
    _, view = order_view(stack, order_id)
    assert view["status"] == "CONFIRMED", view
