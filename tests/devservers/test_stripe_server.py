"""The Stripe simulator, exercised through the real stripe-python SDK.

Each test asserts what the SDK surfaces (exception class, ``code``,
``decline_code``, ``http_status``) because that is the contract the payment
service is written against; if these pass, code tested against the simulator
makes the same decisions against api.stripe.com.

Everything binds port 0, and all waiting is on conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import pytest_asyncio
import stripe
from aiohttp import web
from stripe.params import PaymentIntentCreateParams

from devservers.stripe_server import RunningServer, StripeServerThread, run_stripe_server

API_KEY = "sk_test_orderflow"
FAST_RETRIES = (0.05, 0.1, 0.2)
NO_REDIRECTS = {"enabled": True, "allow_redirects": "never"}
DEADLINE = 10.0
REPO_ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- helpers / fixtures
@pytest_asyncio.fixture
async def sim() -> AsyncIterator[RunningServer]:
    """A fresh simulator on an ephemeral port, with fast webhook retries."""
    async with run_stripe_server(webhook_retry_delays=FAST_RETRIES) as server:
        yield server


ClientFactory = Callable[..., stripe.StripeClient]


@pytest_asyncio.fixture
async def make_client(sim: RunningServer) -> AsyncIterator[ClientFactory]:
    """Build real SDK clients pointed at ``sim``; closes their sessions afterwards."""
    http_clients: list[stripe.AIOHTTPClient] = []

    def factory(api_key: str = API_KEY, max_network_retries: int = 0) -> stripe.StripeClient:
        http = stripe.AIOHTTPClient()
        http_clients.append(http)
        return stripe.StripeClient(
            api_key,
            base_addresses={"api": sim.url},
            max_network_retries=max_network_retries,
            http_client=http,
        )

    yield factory
    for http in http_clients:
        await http.close_async()  # type: ignore[no-untyped-call]


@pytest.fixture
def client(make_client: ClientFactory) -> stripe.StripeClient:
    """The default SDK client: test key, SDK retries off."""
    return make_client()


async def call_test_api(sim: RunningServer, method: str, path: str, **kwargs: Any) -> Any:
    """Call a ``/_test`` control endpoint and return its JSON."""
    async with aiohttp.ClientSession() as session:
        async with session.request(method, sim.url + path, **kwargs) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


async def sim_state(sim: RunningServer) -> dict[str, Any]:
    """GET /_test/state."""
    result: dict[str, Any] = await call_test_api(sim, "GET", "/_test/state")
    return result


async def wait_for_condition(check: Callable[[], Awaitable[bool]], timeout: float = DEADLINE) -> None:
    """Poll ``check`` until true; fail at the deadline instead of sleeping blindly."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError("condition not met before deadline")
        await asyncio.sleep(0.01)


@dataclass
class Receiver:
    """A tiny webhook endpoint that records deliveries."""

    url: str
    fail: dict[str, int] = field(default_factory=dict)  # event type -> deliveries to reject
    received: asyncio.Queue[tuple[str, str]] = field(default_factory=asyncio.Queue)

    async def next_event(self, event_type: str, timeout: float = DEADLINE) -> tuple[str, str]:
        """Wait for the next delivery of ``event_type``: (raw body, Stripe-Signature)."""
        async with asyncio.timeout(timeout):
            while True:
                payload, signature = await self.received.get()
                if json.loads(payload)["type"] == event_type:
                    return payload, signature


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """Serve :class:`Receiver` on an ephemeral port."""
    rec = Receiver(url="")

    async def handle(request: web.Request) -> web.Response:
        payload = await request.text()
        event_type = json.loads(payload)["type"]
        if rec.fail.get(event_type, 0) > 0:
            rec.fail[event_type] -= 1
            return web.Response(status=500, text="not yet")
        await rec.received.put((payload, request.headers["Stripe-Signature"]))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/webhooks/stripe", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/webhooks/stripe"
    try:
        yield rec
    finally:
        await runner.cleanup()


def pay(pm: str = "pm_card_visa", amount: int = 2000, **extra: Any) -> PaymentIntentCreateParams:
    """Params for a server-side create-and-confirm, as the payment service sends them."""
    params: dict[str, Any] = {
        "amount": amount,
        "currency": "usd",
        "payment_method": pm,
        "confirm": True,
        "automatic_payment_methods": NO_REDIRECTS,
        "metadata": {"orderId": "order-1"},
        **extra,
    }
    return cast(PaymentIntentCreateParams, params)


# ---------------------------------------------------------------- payments
@pytest.mark.asyncio
async def test_visa_payment_succeeds(sim: RunningServer, client: stripe.StripeClient) -> None:
    pi = await client.v1.payment_intents.create_async(
        pay(description="Order order-1", receipt_email="a@example.com", x_custom_flag="yes")
    )
    assert pi.object == "payment_intent" and pi.id.startswith("pi_")
    assert pi.status == "succeeded"
    assert pi.amount == pi.amount_received == 2000
    assert pi.latest_charge is not None and str(pi.latest_charge).startswith("ch_")
    assert str(pi.payment_method).startswith("pm_") and pi.payment_method != "pm_card_visa"
    assert pi.metadata["orderId"] == "order-1"
    assert pi.client_secret is not None and pi.client_secret.startswith(pi.id + "_secret_")
    assert pi["x_custom_flag"] == "yes"  # unknown simple params are kept, not rejected
    assert pi.last_response is not None
    assert pi.last_response.request_id is not None

    fetched = await client.v1.payment_intents.retrieve_async(pi.id, params={"expand": ["latest_charge"]})
    charge = fetched.latest_charge
    assert isinstance(charge, stripe.Charge)
    assert charge.status == "succeeded" and charge.amount_refunded == 0 and not charge.refunded

    state = await sim_state(sim)
    assert state["counts"]["succeeded_charges"] == 1
    assert state["charges"][0]["payment_intent"] == pi.id


@pytest.mark.asyncio
async def test_create_then_confirm_with_mastercard(client: stripe.StripeClient) -> None:
    # Card-only intents cannot redirect, so no return_url is needed to confirm.
    pi = await client.v1.payment_intents.create_async(
        {"amount": 1500, "currency": "eur", "allowed_payment_method_types": ["card"]}
    )
    assert pi.status == "requires_payment_method"
    assert pi.allowed_payment_method_types == ["card"]
    pi = await client.v1.payment_intents.confirm_async(pi.id, {"payment_method": "pm_card_mastercard"})
    assert pi.status == "succeeded" and pi.currency == "eur"


DECLINES = [
    ("pm_card_chargeDeclined", "card_declined", "generic_decline", "Your card was declined."),
    (
        "pm_card_chargeDeclinedInsufficientFunds",
        "card_declined",
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
    ("pm_card_visa_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds", None),
    ("pm_card_chargeDeclinedExpiredCard", "expired_card", "expired_card", "Your card has expired."),
    (
        "pm_card_chargeDeclinedIncorrectCvc",
        "incorrect_cvc",
        "incorrect_cvc",
        "Your card's security code is incorrect.",
    ),
    ("pm_card_chargeDeclinedProcessingError", "processing_error", "processing_error", None),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("pm", "code", "decline_code", "message"), DECLINES)
async def test_declines_raise_card_error(
    sim: RunningServer,
    client: stripe.StripeClient,
    pm: str,
    code: str,
    decline_code: str,
    message: str | None,
) -> None:
    with pytest.raises(stripe.CardError) as info:
        await client.v1.payment_intents.create_async(pay(pm))
    err = info.value
    assert err.http_status == 402
    assert err.code == code
    assert err.error is not None and err.error.decline_code == decline_code
    assert err.error.type == "card_error"
    if message:
        assert err.user_message == message
    # Like Stripe, the 402 body carries the PaymentIntent, left retryable.
    failed_pi = err.error.payment_intent
    assert failed_pi is not None and failed_pi.status == "requires_payment_method"
    assert failed_pi.payment_method is None
    assert failed_pi.last_payment_error is not None
    assert failed_pi.last_payment_error.decline_code == decline_code

    pi = await client.v1.payment_intents.retrieve_async(failed_pi.id)
    assert pi.status == "requires_payment_method"
    assert pi.last_payment_error is not None and pi.last_payment_error.code == code
    state = await sim_state(sim)
    assert state["counts"]["succeeded_charges"] == 0
    assert [c["status"] for c in state["charges"]] == ["failed"]

    # The customer fixes the card: the same PaymentIntent can still succeed.
    pi = await client.v1.payment_intents.confirm_async(pi.id, {"payment_method": "pm_card_visa"})
    assert pi.status == "succeeded" and pi.last_payment_error is None


@pytest.mark.asyncio
async def test_unknown_payment_method_is_resource_missing(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        await client.v1.payment_intents.create_async(pay("pm_does_not_exist"))
    assert info.value.http_status == 400
    assert info.value.code == "resource_missing"
    assert info.value.param == "payment_method"


@pytest.mark.asyncio
async def test_redirect_capable_intent_needs_return_url(client: stripe.StripeClient) -> None:
    """Since API 2023-08-16 Stripe refuses this; the simulator must too."""
    params = pay()
    del params["automatic_payment_methods"]
    with pytest.raises(stripe.InvalidRequestError, match="return_url"):
        await client.v1.payment_intents.create_async(params)
    pi = await client.v1.payment_intents.create_async({**params, "return_url": "https://x.test/r"})
    assert pi.status == "succeeded"


@pytest.mark.asyncio
async def test_missing_and_unknown_objects(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        await client.v1.payment_intents.retrieve_async("pi_nope")
    assert info.value.http_status == 404 and info.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as info:
        await client.v1.payment_intents.create_async({"currency": "usd"})  # type: ignore[typeddict-item]
    assert info.value.code == "parameter_missing" and info.value.param == "amount"


@pytest.mark.asyncio
async def test_cancel_capture_and_unexpected_state(client: stripe.StripeClient) -> None:
    manual = await client.v1.payment_intents.create_async(pay(capture_method="manual"))
    assert manual.status == "requires_capture" and manual.amount_capturable == 2000
    captured = await client.v1.payment_intents.capture_async(manual.id)
    assert captured.status == "succeeded" and captured.amount_received == 2000

    with pytest.raises(stripe.InvalidRequestError) as info:
        await client.v1.payment_intents.cancel_async(captured.id)
    assert info.value.code == "payment_intent_unexpected_state"
    with pytest.raises(stripe.InvalidRequestError) as info:
        await client.v1.payment_intents.confirm_async(captured.id)
    assert info.value.code == "payment_intent_unexpected_state"

    open_pi = await client.v1.payment_intents.create_async({"amount": 900, "currency": "usd"})
    canceled = await client.v1.payment_intents.cancel_async(open_pi.id, {"cancellation_reason": "abandoned"})
    assert canceled.status == "canceled" and canceled.cancellation_reason == "abandoned"


# ---------------------------------------------------------------- auth
@pytest.mark.asyncio
async def test_authentication(sim: RunningServer, make_client: ClientFactory) -> None:
    with pytest.raises(stripe.AuthenticationError) as info:
        await make_client("sk_live_realkey1234").v1.payment_intents.create_async(pay())
    assert info.value.http_status == 401
    async with aiohttp.ClientSession() as session:
        async with session.post(sim.url + "/v1/payment_intents", data={"amount": "1"}) as resp:
            assert resp.status == 401
            body = await resp.json()
    assert body["error"]["type"] == "invalid_request_error"
    assert "API key" in body["error"]["message"]
    assert (await sim_state(sim))["counts"]["payment_intents"] == 0


# ---------------------------------------------------------------- idempotency
@pytest.mark.asyncio
async def test_idempotent_replay_charges_once(sim: RunningServer, client: stripe.StripeClient) -> None:
    key = str(uuid.uuid4())
    first = await client.v1.payment_intents.create_async(pay(), {"idempotency_key": key})
    second = await client.v1.payment_intents.create_async(pay(), {"idempotency_key": key})
    assert second.id == first.id and second.latest_charge == first.latest_charge
    assert first.last_response is not None and second.last_response is not None
    assert "idempotent-replayed" not in {k.lower() for k in first.last_response.headers}
    assert second.last_response.headers["Idempotent-Replayed"] == "true"

    state = await sim_state(sim)
    assert state["counts"]["payment_intents"] == 1
    assert state["counts"]["charges"] == 1


@pytest.mark.asyncio
async def test_idempotent_replay_of_a_decline(sim: RunningServer, client: stripe.StripeClient) -> None:
    key = str(uuid.uuid4())
    errors = []
    for _ in range(2):
        with pytest.raises(stripe.CardError) as info:
            await client.v1.payment_intents.create_async(
                pay("pm_card_chargeDeclinedInsufficientFunds"), {"idempotency_key": key}
            )
        errors.append(info.value)
    assert errors[0].json_body == errors[1].json_body
    assert errors[1].headers is not None
    assert errors[1].headers["Idempotent-Replayed"] == "true"
    assert (await sim_state(sim))["counts"]["charges"] == 1


@pytest.mark.asyncio
async def test_same_key_different_params_is_idempotency_error(sim: RunningServer, client: stripe.StripeClient) -> None:
    key = str(uuid.uuid4())
    await client.v1.payment_intents.create_async(pay(amount=2000), {"idempotency_key": key})
    with pytest.raises(stripe.IdempotencyError) as info:
        await client.v1.payment_intents.create_async(pay(amount=2500), {"idempotency_key": key})
    assert info.value.http_status == 400
    assert "same parameters" in info.value.user_message
    # ... and on another endpoint.
    with pytest.raises(stripe.IdempotencyError):
        await client.v1.refunds.create_async({"charge": "ch_x"}, {"idempotency_key": key})
    assert (await sim_state(sim))["counts"]["payment_intents"] == 1


@pytest.mark.asyncio
async def test_idempotency_keys_are_scoped_per_api_key(sim: RunningServer, make_client: ClientFactory) -> None:
    key = str(uuid.uuid4())
    a = await make_client("sk_test_a").v1.payment_intents.create_async(pay(), {"idempotency_key": key})
    b = await make_client("sk_test_b").v1.payment_intents.create_async(pay(), {"idempotency_key": key})
    assert a.id != b.id
    assert (await sim_state(sim))["counts"]["payment_intents"] == 2


@pytest.mark.asyncio
async def test_concurrent_requests_with_one_key_execute_once(sim: RunningServer, client: stripe.StripeClient) -> None:
    # Slow the endpoint down so the second request arrives while the first runs.
    await call_test_api(sim, "POST", "/_test/faults", json={"delay_ms": 300, "path_prefix": "/v1/payment_intents"})
    key = str(uuid.uuid4())
    results = await asyncio.gather(
        client.v1.payment_intents.create_async(pay(), {"idempotency_key": key}),
        client.v1.payment_intents.create_async(pay(), {"idempotency_key": key}),
        return_exceptions=True,
    )
    ok = [r for r in results if isinstance(r, stripe.PaymentIntent)]
    conflicts = [r for r in results if isinstance(r, stripe.APIError)]
    assert len(ok) == 1 and len(conflicts) == 1, results
    assert conflicts[0].http_status == 409
    assert conflicts[0].error is not None
    assert conflicts[0].error.code == "idempotency_key_in_use"
    assert (await sim_state(sim))["counts"]["charges"] == 1
    # Once the first finished, the key replays normally.
    again = await client.v1.payment_intents.create_async(pay(), {"idempotency_key": key})
    assert again.id == ok[0].id


# ---------------------------------------------------------------- refunds
@pytest.mark.asyncio
async def test_refunds_partial_full_too_large_and_already_refunded(
    sim: RunningServer, client: stripe.StripeClient
) -> None:
    pi = await client.v1.payment_intents.create_async(pay(amount=1000))

    partial = await client.v1.refunds.create_async(
        {"payment_intent": pi.id, "amount": 300, "reason": "requested_by_customer"}
    )
    assert partial.object == "refund" and partial.id.startswith("re_")
    assert partial.amount == 300 and partial.status == "succeeded"
    assert partial.charge == pi.latest_charge and partial.payment_intent == pi.id

    with pytest.raises(stripe.InvalidRequestError) as info:
        await client.v1.refunds.create_async({"payment_intent": pi.id, "amount": 800})
    assert info.value.http_status == 400 and info.value.code == "amount_too_large"

    rest = await client.v1.refunds.create_async({"charge": str(pi.latest_charge)})
    assert rest.amount == 700
    assert (await client.v1.refunds.retrieve_async(rest.id)).amount == 700

    with pytest.raises(stripe.InvalidRequestError) as info:
        await client.v1.refunds.create_async({"payment_intent": pi.id})
    assert info.value.http_status == 400 and info.value.code == "charge_already_refunded"

    charge = (await sim_state(sim))["charges"][0]
    assert charge["amount_refunded"] == 1000 and charge["refunded"] is True


@pytest.mark.asyncio
async def test_refund_without_successful_charge(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.CardError) as info:
        await client.v1.payment_intents.create_async(pay("pm_card_chargeDeclined"))
    assert info.value.error is not None and info.value.error.payment_intent is not None
    with pytest.raises(stripe.InvalidRequestError) as refund_info:
        await client.v1.refunds.create_async({"payment_intent": info.value.error.payment_intent.id})
    assert refund_info.value.http_status == 400
    assert "does not have a successful charge" in refund_info.value.user_message


# ---------------------------------------------------------------- listing and search
async def pay_for(client: stripe.StripeClient, order_id: str, amount: int = 2000) -> stripe.PaymentIntent:
    """A succeeded PaymentIntent of ``order_id``, as the payment service creates it."""
    return await client.v1.payment_intents.create_async(pay(amount=amount, metadata={"orderId": order_id}))


@pytest.mark.asyncio
async def test_search_payment_intents_by_metadata_pages_through_every_match(client: stripe.StripeClient) -> None:
    mine = [await pay_for(client, "ORDER#1", 1000 + i) for i in range(5)]
    await pay_for(client, "ORDER#2")
    query = "metadata['orderId']:'ORDER#1'"

    first = await client.v1.payment_intents.search_async({"query": query, "limit": 2})
    assert first.object == "search_result" and first.url == "/v1/payment_intents/search"
    assert [pi.id for pi in first.data] == [mine[4].id, mine[3].id]  # newest first
    assert first.has_more and first.next_page
    second = await client.v1.payment_intents.search_async({"query": query, "limit": 2, "page": first.next_page})
    assert [pi.id for pi in second.data] == [mine[2].id, mine[1].id]
    every = [pi.id async for pi in first.auto_paging_iter()]
    assert every == [pi.id for pi in reversed(mine)]
    last = await client.v1.payment_intents.search_async({"query": query, "limit": 5})
    assert not last.has_more and last.next_page is None

    both = await client.v1.payment_intents.search_async({"query": f"{query} AND amount>=1003 AND status:'succeeded'"})
    assert sorted(pi.amount for pi in both.data) == [1003, 1004]
    either = await client.v1.payment_intents.search_async(
        {"query": "metadata['orderId']:'ORDER#2' OR amount:1000", "limit": 10}
    )
    assert len(either.data) == 2
    negated = await client.v1.payment_intents.search_async({"query": f"-{query}"})
    assert [pi.metadata["orderId"] for pi in negated.data] == ["ORDER#2"]
    none = await client.v1.payment_intents.search_async({"query": "metadata['orderId']:'ORDER#404'"})
    assert none.data == [] and not none.has_more


@pytest.mark.asyncio
async def test_search_values_with_quotes_are_escaped(client: stripe.StripeClient) -> None:
    odd = await pay_for(client, 'ORDER#it\'s "odd"')
    await pay_for(client, "ORDER#its")
    single = "metadata['orderId']:'ORDER#it\\'s \"odd\"'"
    double = 'metadata["orderId"]:"ORDER#it\'s \\"odd\\""'
    for query in (single, double):
        found = await client.v1.payment_intents.search_async({"query": query})
        assert [pi.id for pi in found.data] == [odd.id], query


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "query",
    [
        "",
        "metadata['orderId']",  # no value
        "nickname:'x'",  # not a searchable field
        "currency>'usd'",  # range on a text field
        "amount:1 AND status:'succeeded' OR currency:'usd'",  # AND with OR
        "amount:1 status:'succeeded'",  # no joiner
    ],
)
async def test_search_rejects_a_query_it_cannot_read(client: stripe.StripeClient, query: str) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        await client.v1.payment_intents.search_async({"query": query})
    assert info.value.http_status == 400 and info.value.param == "query"


@pytest.mark.asyncio
async def test_search_page_token_and_limit_are_checked(client: stripe.StripeClient) -> None:
    for params in ({"page": "not-a-token"}, {"limit": 101}, {"limit": 0}):
        with pytest.raises(stripe.InvalidRequestError) as info:
            await client.v1.payment_intents.search_async(cast(Any, {"query": "status:'succeeded'", **params}))
        assert info.value.http_status == 400


@pytest.mark.asyncio
async def test_list_payment_intents_with_cursors(client: stripe.StripeClient) -> None:
    made = [await pay_for(client, f"ORDER#{i}") for i in range(5)]
    newest = [pi.id for pi in reversed(made)]

    page = await client.v1.payment_intents.list_async({"limit": 2})
    assert page.object == "list" and page.url == "/v1/payment_intents"
    assert [pi.id for pi in page.data] == newest[:2] and page.has_more
    after = await client.v1.payment_intents.list_async({"limit": 2, "starting_after": newest[1]})
    assert [pi.id for pi in after.data] == newest[2:4] and after.has_more
    before = await client.v1.payment_intents.list_async({"limit": 2, "ending_before": newest[3]})
    assert [pi.id for pi in before.data] == newest[1:3] and before.has_more
    assert [pi.id async for pi in page.auto_paging_iter()] == newest
    later = await client.v1.payment_intents.list_async({"created": {"gt": made[-1].created}})
    assert later.data == []
    with pytest.raises(stripe.InvalidRequestError) as info:
        await client.v1.payment_intents.list_async({"starting_after": "pi_unknown"})
    assert info.value.param == "starting_after"


@pytest.mark.asyncio
async def test_list_refunds_of_a_payment_intent(client: stripe.StripeClient) -> None:
    pi = await pay_for(client, "ORDER#1", 1000)
    other = await pay_for(client, "ORDER#2", 1000)
    made = [await client.v1.refunds.create_async({"payment_intent": pi.id, "amount": 100 * (i + 1)}) for i in range(3)]
    await client.v1.refunds.create_async({"payment_intent": other.id})

    page = await client.v1.refunds.list_async({"payment_intent": pi.id, "limit": 2})
    assert page.object == "list" and page.url == "/v1/refunds" and page.has_more
    assert [r.id for r in page.data] == [made[2].id, made[1].id]
    assert [r.amount async for r in page.auto_paging_iter()] == [300, 200, 100]
    by_charge = await client.v1.refunds.list_async({"charge": str(other.latest_charge)})
    assert [r.amount for r in by_charge.data] == [1000]
    assert len((await client.v1.refunds.list_async({"limit": 100})).data) == 4
    with pytest.raises(stripe.InvalidRequestError) as info:
        await client.v1.refunds.list_async({"payment_intent": "pi_unknown"})
    assert info.value.code == "resource_missing" and info.value.param == "payment_intent"


# ---------------------------------------------------------------- 3-D Secure + webhooks
async def register_endpoint(sim: RunningServer, url: str, secret: str) -> None:
    """Add a webhook endpoint at runtime."""
    await call_test_api(sim, "POST", "/_test/webhook_endpoints", json={"url": url, "secret": secret})


@pytest.mark.asyncio
async def test_3ds_success_delivers_signed_webhook(
    sim: RunningServer, client: stripe.StripeClient, receiver: Receiver
) -> None:
    secret = "whsec_" + uuid.uuid4().hex
    await register_endpoint(sim, receiver.url, secret)

    pi = await client.v1.payment_intents.create_async(pay("pm_card_authenticationRequired"))
    assert pi.status == "requires_action"
    assert pi.next_action is not None and pi.next_action.type == "use_stripe_sdk"
    assert pi.latest_charge is None

    done = await call_test_api(sim, "POST", f"/_test/payment_intents/{pi.id}/authenticate", data={"outcome": "succeed"})
    assert done["status"] == "succeeded"

    payload, signature = await receiver.next_event("payment_intent.succeeded")
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", signature)
    event = stripe.Webhook.construct_event(payload, signature, secret)
    assert event.type == "payment_intent.succeeded"
    assert event.object == "event" and event.livemode is False
    assert event.data.object["id"] == pi.id and event.data.object["status"] == "succeeded"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, signature, "whsec_wrong")

    assert (await client.v1.payment_intents.retrieve_async(pi.id)).status == "succeeded"


@pytest.mark.asyncio
async def test_3ds_failure_emits_payment_failed(
    sim: RunningServer, client: stripe.StripeClient, receiver: Receiver
) -> None:
    secret = "whsec_" + uuid.uuid4().hex
    await register_endpoint(sim, receiver.url, secret)
    pi = await client.v1.payment_intents.create_async(
        pay("pm_card_authenticationRequired", return_url="https://shop.test/done")
    )
    assert pi.next_action is not None and pi.next_action.type == "redirect_to_url"

    await call_test_api(sim, "POST", f"/_test/payment_intents/{pi.id}/authenticate", json={"outcome": "fail"})
    payload, signature = await receiver.next_event("payment_intent.payment_failed")
    event = stripe.Webhook.construct_event(payload, signature, secret)
    failed = event.data.object
    assert failed["status"] == "requires_payment_method"
    assert failed["last_payment_error"]["code"] == "payment_intent_authentication_failure"


@pytest.mark.asyncio
async def test_off_session_3ds_card_is_declined(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.CardError) as info:
        await client.v1.payment_intents.create_async(pay("pm_card_authenticationRequired", off_session=True))
    assert info.value.code == "authentication_required"


@pytest.mark.asyncio
async def test_webhooks_from_startup_config_are_retried(receiver: Receiver) -> None:
    """Receiver down twice: Stripe-style retries still deliver charge.refunded."""
    receiver.fail["charge.refunded"] = 2
    secret = "whsec_startup"
    async with run_stripe_server(
        webhook_endpoints=[(receiver.url, secret)], webhook_retry_delays=FAST_RETRIES
    ) as server:
        http = stripe.AIOHTTPClient()
        try:
            client = stripe.StripeClient(API_KEY, base_addresses={"api": server.url}, http_client=http)
            pi = await client.v1.payment_intents.create_async(pay())
            await client.v1.refunds.create_async({"payment_intent": pi.id, "amount": 500})
            payload, signature = await receiver.next_event("charge.refunded")
        finally:
            await http.close_async()  # type: ignore[no-untyped-call]
        event = stripe.Webhook.construct_event(payload, signature, secret)
        assert event.data.object["amount_refunded"] == 500

        async def all_delivered() -> bool:
            deliveries = (await sim_state(server))["webhook_deliveries"]
            return bool(deliveries) and all(d["status"] == "delivered" for d in deliveries)

        await wait_for_condition(all_delivered)
        deliveries = (await sim_state(server))["webhook_deliveries"]
        refunded = [d for d in deliveries if d["event_type"] == "charge.refunded"]
        assert refunded[0]["attempts"] == 3  # two failures, then success
        assert {d["event_type"] for d in deliveries} >= {
            "payment_intent.created",
            "charge.succeeded",
            "payment_intent.succeeded",
            "refund.created",
        }


@pytest.mark.asyncio
async def test_startup_endpoint_gets_only_its_enabled_events(receiver: Receiver) -> None:
    """webhook_events is the endpoint's enabled_events: a payment sends created, charge.succeeded and
    succeeded, and an endpoint enabled for payment_intent.succeeded gets that one alone."""
    async with run_stripe_server(
        webhook_endpoints=[(receiver.url, "whsec_only")], webhook_events=["payment_intent.succeeded"]
    ) as server:
        http = stripe.AIOHTTPClient()
        try:
            client = stripe.StripeClient(API_KEY, base_addresses={"api": server.url}, http_client=http)
            pi = await client.v1.payment_intents.create_async(pay())
            assert pi.status == "succeeded"
            payload, signature = await receiver.next_event("payment_intent.succeeded")
        finally:
            await http.close_async()  # type: ignore[no-untyped-call]
        assert stripe.Webhook.construct_event(payload, signature, "whsec_only").data.object["id"] == pi.id
        events = {e["type"] for e in (await sim_state(server))["events"]}
        assert {"payment_intent.created", "charge.succeeded", "payment_intent.succeeded"} <= events
        deliveries = (await sim_state(server))["webhook_deliveries"]
        assert [d["event_type"] for d in deliveries] == ["payment_intent.succeeded"]


# ---------------------------------------------------------------- fault injection
@pytest.mark.asyncio
async def test_injected_503_is_api_error_and_not_saved_under_the_key(
    sim: RunningServer, client: stripe.StripeClient
) -> None:
    await call_test_api(
        sim,
        "POST",
        "/_test/faults",
        json={"status": 503, "count": 1, "path_prefix": "/v1/payment_intents"},
    )
    key = str(uuid.uuid4())
    with pytest.raises(stripe.APIError) as info:
        await client.v1.payment_intents.create_async(pay(), {"idempotency_key": key})
    assert info.value.http_status == 503
    assert info.value.error is not None and info.value.error.type == "api_error"
    # The retry with the same key executes (faults happen in front of the API).
    pi = await client.v1.payment_intents.create_async(pay(), {"idempotency_key": key})
    assert pi.status == "succeeded"
    assert (await sim_state(sim))["counts"]["payment_intents"] == 1


@pytest.mark.asyncio
async def test_injected_429_is_rate_limit_error(sim: RunningServer, client: stripe.StripeClient) -> None:
    await call_test_api(sim, "POST", "/_test/faults", data={"status": "429", "count": "2"})
    for _ in range(2):
        with pytest.raises(stripe.RateLimitError) as info:
            await client.v1.payment_intents.create_async(pay())
        assert info.value.http_status == 429
        assert info.value.error is not None and info.value.error.code == "rate_limit"
    assert (await client.v1.payment_intents.create_async(pay())).status == "succeeded"


@pytest.mark.asyncio
async def test_sdk_retries_through_a_transient_500(sim: RunningServer, make_client: ClientFactory) -> None:
    await call_test_api(sim, "POST", "/_test/faults", json={"status": 500, "count": 1})
    client = make_client(max_network_retries=2)
    pi = await client.v1.payment_intents.create_async(pay())
    assert pi.status == "succeeded"
    state = await sim_state(sim)
    assert state["counts"]["payment_intents"] == 1 and state["faults"] == []


@pytest.mark.asyncio
async def test_reset_clears_state(sim: RunningServer, client: stripe.StripeClient) -> None:
    await client.v1.payment_intents.create_async(pay())
    await call_test_api(sim, "POST", "/_test/reset")
    counts = (await sim_state(sim))["counts"]
    assert counts["payment_intents"] == counts["charges"] == counts["idempotency_keys"] == 0


# ---------------------------------------------------------------- other ways to run it
def test_blocking_sdk_against_threaded_server() -> None:
    """Sync SDK calls (requests) need the server on another loop: StripeServerThread."""
    with StripeServerThread() as server:
        client = stripe.StripeClient(API_KEY, base_addresses={"api": server.url}, max_network_retries=0)
        pi = client.v1.payment_intents.create(pay("pm_card_visa"))
        assert pi.status == "succeeded"
        with pytest.raises(stripe.CardError) as info:
            client.v1.payment_intents.create(pay("pm_card_chargeDeclinedExpiredCard"))
        assert info.value.code == "expired_card"


@pytest.mark.asyncio
async def test_cli_starts_and_serves() -> None:
    """``python -m devservers.stripe_server`` on port 0 logs its URL and answers."""
    env = {**os.environ, "STRIPE_SIM_PORT": "0"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devservers.stripe_server",
        "--host",
        "127.0.0.1",
        env=env,
        cwd=REPO_ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        url = None
        async with asyncio.timeout(DEADLINE):
            while url is None:
                line = (await proc.stderr.readline()).decode()
                assert line, "server exited before listening"
                if match := re.search(r"listening on (http://\S+)", line):
                    url = match.group(1)
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/_test/state") as resp:
                assert resp.status == 200
                assert (await resp.json())["counts"]["payment_intents"] == 0
    finally:
        proc.terminate()
        async with asyncio.timeout(DEADLINE):
            await proc.wait()
