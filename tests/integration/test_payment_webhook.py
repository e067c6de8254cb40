"""Payment's webhook endpoint on a real payment database and the Stripe stand-in, without the other processes:
a correctly signed body that is not an event is refused (400) and records nothing; a real event completes the
waiting ProcessPayment once (one reply in the outbox) and its replay has no second effect; unsigned, wrongly
signed and stale deliveries are refused before the body is read."""

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from harness import migrated_pool

from devservers.stripe_server import RunningServer, run_stripe_server, sign
from services.payment.handlers import save_payment
from services.payment.main import MIGRATIONS
from services.payment.stripe_gateway import StripeGateway
from services.payment.webhooks import webhook_route

pytestmark = pytest.mark.integration

SECRET = "whsec_payment_webhook_test"


@dataclass
class Endpoint:
    url: str
    pool: asyncpg.Pool
    stripe: RunningServer
    gateway: StripeGateway
    http: aiohttp.ClientSession
    committed: list[int]

    async def post(self, body: str | bytes, signature: str | None) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["Stripe-Signature"] = signature
        async with self.http.post(self.url, data=body, headers=headers) as response:
            return response.status, await response.json()

    async def recorded(self, event_id: str | None = None) -> int:
        """Events recorded as seen: all of them, or those with ``event_id``."""
        if event_id is None:
            return await self.pool.fetchval("SELECT count(*) FROM webhook_event")
        return await self.pool.fetchval("SELECT count(*) FROM webhook_event WHERE event_id = $1", event_id)


@pytest.fixture(scope="module")
async def endpoint() -> AsyncIterator[Endpoint]:
    async with migrated_pool("of_webhook", MIGRATIONS) as pool, run_stripe_server() as stripe_server:
        gateway = StripeGateway(api_key="sk_test_webhook", api_base=stripe_server.url)
        committed: list[int] = []
        app = web.Application()
        webhook_route(app, pool=lambda: pool, gateway=gateway, secret=SECRET, on_committed=lambda: committed.append(1))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as http:
                yield Endpoint(
                    f"http://127.0.0.1:{port}/webhooks/stripe", pool, stripe_server, gateway, http, committed
                )
        finally:
            await runner.cleanup()
            await gateway.close()


@pytest.mark.parametrize(
    "body",
    [
        '{"id": "evt_cut", "type": "payment_intent.succeeded", "data": {"object": {"id": "pi_1"',  # cut short
        "not json at all",
        '["an", "array"]',
        '{"type": "payment_intent.succeeded", "data": {"object": {"id": "pi_1", "status": "succeeded"}}}',
        '{"id": "evt_no_type", "data": {"object": {"id": "pi_1", "status": "succeeded"}}}',
        '{"id": "evt_no_object", "type": "payment_intent.succeeded", "data": {}}',
        '{"id": "evt_thin", "object": "v2.core.event", "type": "v1.billing.meter.error_report_triggered"}',
    ],
)
async def test_a_signed_body_that_is_not_an_event_is_refused(endpoint: Endpoint, body: str) -> None:
    before = await endpoint.recorded()
    status, answer = await endpoint.post(body, sign(body, SECRET))
    assert (status, answer) == (400, {"error": "invalid payload"})
    assert await endpoint.recorded() == before


async def test_a_signed_body_that_is_not_utf8_is_refused(endpoint: Endpoint) -> None:
    body = b'{"id": "evt_\xff"}'
    timestamp = int(time.time())
    digest = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    status, answer = await endpoint.post(body, f"t={timestamp},v1={digest}")
    assert (status, answer) == (400, {"error": "invalid payload"})


async def test_unsigned_wrongly_signed_and_stale_are_refused_before_the_body_is_read(endpoint: Endpoint) -> None:
    body = "not json: the signature is checked first"
    before = await endpoint.recorded()
    assert await endpoint.post(body, None) == (400, {"error": "missing Stripe-Signature"})
    assert await endpoint.post(body, sign(body, "whsec_wrong")) == (400, {"error": "invalid signature"})
    stale = sign(body, SECRET, int(time.time()) - 301)
    assert await endpoint.post(body, stale) == (400, {"error": "invalid signature"})
    assert await endpoint.post(body, "t=abc") == (400, {"error": "invalid signature"})
    assert await endpoint.recorded() == before


async def test_an_event_completes_the_waiting_payment_once_and_its_replay_changes_nothing(endpoint: Endpoint) -> None:
    order_id = "ORDER#webhook-1"
    intent = await endpoint.gateway.create_intent(
        order_id=order_id,
        amount=Decimal("8.00"),
        currency="usd",
        payment_method="pm_card_authenticationRequired",
        idempotency_key=f"{order_id}-pay",
    )
    intent = await endpoint.gateway.confirm(intent.id, idempotency_key=f"{order_id}-pay-confirm")
    assert intent.status == "requires_action"
    async with endpoint.pool.acquire() as conn:  # what ProcessPayment leaves when the customer must act
        await save_payment(conn, order_id, intent)
        await conn.execute(
            "INSERT INTO pending_reply VALUES ($1, $2, 'cmd-1', 'replies.orchestrator', 1)", order_id, intent.id
        )
    endpoint.committed.clear()
    endpoint.stripe.state.intents.authenticate(intent.id, "succeed")
    event = next(
        e
        for e in endpoint.stripe.state.store.events.values()
        if e["type"] == "payment_intent.succeeded" and e["data"]["object"]["id"] == intent.id
    )
    body = json.dumps(event, indent=2)

    assert await endpoint.post(body, sign(body, SECRET)) == (200, {"received": True, "applied": True})
    assert await endpoint.post(body, sign(body, SECRET)) == (200, {"received": True, "applied": False})

    assert endpoint.committed == [1]
    assert await endpoint.pool.fetchval("SELECT status FROM payment WHERE order_id = $1", order_id) == "succeeded"
    assert await endpoint.pool.fetchval("SELECT count(*) FROM pending_reply") == 0
    replies = await endpoint.pool.fetch("SELECT routing_key, envelope->>'type' AS type FROM outbox")
    assert [(r["routing_key"], r["type"]) for r in replies] == [("replies.orchestrator", "PaymentProcessed")]
    assert await endpoint.recorded(event["id"]) == 1


async def test_an_event_type_not_handled_is_acknowledged_and_changes_nothing(endpoint: Endpoint) -> None:
    body = json.dumps(
        {"id": "evt_charge", "object": "event", "type": "charge.succeeded", "data": {"object": {"id": "ch_1"}}}
    )
    assert await endpoint.post(body, sign(body, SECRET)) == (200, {"received": True, "applied": False})
    assert await endpoint.recorded("evt_charge") == 0
