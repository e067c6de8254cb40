"""Notify end to end: email through aiosmtplib to the SMTP sink, SMS through the Twilio-style provider to the
local SMS server; an SMS the provider refuses leaves the order CONFIRMED with notificationError."""

import json

import pytest
from harness import Stack, db, eventually, http_json, new_id, order_body, order_view, outcome_of, publish_raw, seed

from devservers.smtp_sink import messages

pytestmark = pytest.mark.e2e


async def notification_rows(stack: Stack, order_id: str) -> dict[str, str]:
    conn = await db(stack.settings, "notify")
    try:
        rows = await conn.fetch("SELECT channel, status FROM notification WHERE order_id = $1", order_id)
    finally:
        await conn.close()
    return {r["channel"]: r["status"] for r in rows}


async def test_email_and_sms_are_sent(stack: Stack, channel, listener) -> None:
    sku = new_id("sku-")
    await seed(stack, {sku: (5, "2.50")})
    order_id = new_id()
    body = order_body(order_id, [(sku, 2)])
    body["customer"]["phone"] = "+15550001234"
    await publish_raw(channel, json.dumps(body).encode())
    outcome = await outcome_of(listener, order_id)
    assert outcome["status"] == "CONFIRMED" and outcome["notificationError"] is None
    assert await notification_rows(stack, order_id) == {"email": "sent", "sms": "sent"}
    _, sent = http_json(f"{stack.sms_url}/_test/messages")
    sms = [m for m in sent["messages"] if order_id in m["body"]]
    assert len(sms) == 1 and sms[0]["to"] == "+15550001234" and "5.00" in sms[0]["body"]

    async def email():
        return [m for m in messages(stack.settings.maildir) if order_id in (m["Subject"] or "")]

    mail = (await eventually(email, timeout=10, what="the email"))[0]
    assert "Total charged: 5.00 USD" in mail.get_payload()


async def test_sms_refused_by_the_provider_still_confirms(stack: Stack, channel, listener) -> None:
    sku = new_id("sku-")
    await seed(stack, {sku: (5, "2.50")})
    order_id = new_id()
    body = order_body(order_id, [(sku, 1)])
    body["customer"]["phone"] = "+15005550001"  # Twilio's magic invalid number: error 21211
    await publish_raw(channel, json.dumps(body).encode())
    outcome = await outcome_of(listener, order_id)
    assert outcome["status"] == "CONFIRMED"
    assert outcome["notificationError"]["Error"] == "NotificationError"
    assert "21211" in outcome["notificationError"]["Cause"]
    assert await notification_rows(stack, order_id) == {"email": "sent", "sms": "failed"}


async def test_throttled_sms_is_retried_by_the_definition(stack: Stack, channel, listener) -> None:
    sku = new_id("sku-")
    await seed(stack, {sku: (5, "2.50")})
    http_json(f"{stack.sms_url}/_test/faults", method="POST", body={"status": 429, "count": 1})
    order_id = new_id()
    body = order_body(order_id, [(sku, 1)])
    body["customer"]["phone"] = "+15550009999"
    await publish_raw(channel, json.dumps(body).encode())
    outcome = await outcome_of(listener, order_id, timeout=60)
    assert outcome["status"] == "CONFIRMED" and outcome["notificationError"] is None
    _, view = order_view(stack, order_id)
    notify = [s for s in view["steps"] if s["step"] == "NotifyCustomer"]
    assert [(s["attempt"], s["outcome"], s["error"]) for s in notify] == [
        (1, "failed", "Service.Throttled"),
        (2, "succeeded", None),
    ]
    assert await notification_rows(stack, order_id) == {"email": "sent", "sms": "sent"}
