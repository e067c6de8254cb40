"""An operator stops a RUNNING saga through the API: one waiting at ProcessPayment for 3-D Secure ends with its
stock released and nothing charged (the PaymentIntent canceled at the local Stripe server, read through the
stripe SDK), its history shows who cancelled, and a reply to the abandoned payment arriving afterwards changes
nothing. A saga that ended is refused with a problem naming why."""

import asyncio
import json
import uuid
from typing import Any

import aio_pika
import pytest
import stripe
from harness import Stack, create_api_token, eventually, order_body, publish_raw, seed, stock_of, waiting_intent
from test_saga_api import acall, saga_path

from contracts.payment import PaymentProcessed
from orchestrator.runner import REPLY_KEY
from plumbing.envelope import Envelope
from plumbing.topology import REPLIES_EXCHANGE

pytestmark = pytest.mark.e2e

STRIPE_KEY = "sk_test_orderflow_local"  # the payment service's default key; the local server takes any


async def saga_of(stack: Stack, order_id: str, token: str) -> dict[str, Any]:
    status, _, saga = await acall(stack, saga_path(order_id), token=token)
    assert status == 200, saga
    return saga


async def test_a_saga_waiting_for_3ds_is_stopped_compensated_and_a_late_reply_changes_nothing(stack: Stack) -> None:
    tag = uuid.uuid4().hex[:10]
    sku, order_id = f"sku-{tag}", f"ORDER#{tag}-3ds"
    operator = await create_api_token(stack.settings, "operator", f"stop-operator-{tag}")
    await seed(stack, {sku: (5, "7.00")})
    connection = await aio_pika.connect_robust(stack.settings.amqp_url)
    try:
        channel = await connection.channel()
        body = order_body(order_id, [(sku, 2)], "pm_card_authenticationRequired")
        await publish_raw(channel, json.dumps(body).encode())
        intent_id = await waiting_intent(stack, order_id)
        assert await stock_of(stack, sku) == 3, "reserved while the customer authenticates"

        status, _, answer = await acall(
            stack, saga_path(order_id, "/cancel"), token=operator, method="POST", body={"reason": "ticket 4713"}
        )
        assert status == 200, answer
        assert answer["cancellation"] == order_id and answer["stoppedAt"] == "ProcessPayment"
        assert answer["compensation"] == "PaymentOutcomeUnknown" and answer["by"]["token"] == f"stop-operator-{tag}"

        async def ended() -> dict[str, Any] | None:
            saga = await saga_of(stack, order_id, operator)
            return saga if saga["status"] != "RUNNING" else None

        saga = await eventually(ended, timeout=60, what="the stopped saga to end")
        assert saga["status"] == "FAILED" and saga["error"]["Error"] == "CancelledByOperator"
        assert saga["error"]["Cause"] == "ticket 4713"
        events = [h["event"] for h in saga["history"]]
        audit = next(h for h in saga["history"] if h["event"] == "CancelRequested")
        assert audit["detail"]["by"]["role"] == "operator" and audit["detail"]["reason"] == "ticket 4713"
        assert audit["detail"]["stoppedAt"] == "ProcessPayment" and audit["detail"]["by"]["address"]
        assert events.index("CancelRequested") < events.index("ExecutionCancelled") < events.index("Caught")
        payment = next(s for s in saga["steps"] if s["step"] == "ProcessPayment")
        assert payment["outcome"] == "cancelled"
        compensated = {s["step"]: s["outcome"] for s in saga["steps"] if s["lane"] != "main"}
        assert compensated == {"RefundPayment": "succeeded", "ReleaseInventory": "succeeded"}  # their Step names

        # Stock back, nothing charged: the intent is canceled and holds no refund (there was no charge).
        assert await stock_of(stack, sku) == 5
        client = stripe.StripeClient(STRIPE_KEY, base_addresses={"api": stack.stripe_url})
        intent = await asyncio.to_thread(client.v1.payment_intents.retrieve, intent_id)
        assert intent.status == "canceled" and intent.amount_received == 0 and intent.latest_charge is None
        refunds = await asyncio.to_thread(client.v1.refunds.list, {"payment_intent": intent_id})
        assert list(refunds.data) == []

        # The abandoned ProcessPayment answers success after all: recorded (the saga has ended: EventAfterEnd; a
        # reply while the compensation still runs is LateReplyIgnored, tests/unit/test_engine_cancel.py), nothing
        # changes.
        abandoned = next(h for h in saga["history"] if h["event"] == "TaskCancelled")["commandId"]
        reply = PaymentProcessed(paymentIntentId=intent_id, status="succeeded", amount=14)
        envelope = Envelope(type="PaymentProcessed", correlationId=order_id, causationId=abandoned)
        exchange = await channel.get_exchange(REPLIES_EXCHANGE, ensure=False)
        await exchange.publish(envelope.to_amqp(reply.model_dump_json().encode()), REPLY_KEY)

        async def recorded() -> dict[str, Any] | None:
            later = await saga_of(stack, order_id, operator)
            late = [h for h in later["history"][len(saga["history"]) :] if (h["detail"] or {}).get("kind") == "reply"]
            return later if late else None

        later = await eventually(recorded, timeout=30, what="the late reply in the history")
        assert later["status"] == "FAILED" and later["error"] == saga["error"] and later["steps"] == saga["steps"]
        assert later["currentStep"] == saga["currentStep"]
    finally:
        await connection.close()
    assert await stock_of(stack, sku) == 5

    # Ended: nothing to stop, a problem naming why.
    status, _, refused = await acall(
        stack, saga_path(order_id, "/cancel"), token=operator, method="POST", body={"reason": "again"}
    )
    assert status == 409 and refused["refusal"] == "SagaFinished" and "FAILED" in refused["detail"]
