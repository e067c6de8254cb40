"""Stripe's errors, raised by the official SDK against the local Stripe-compatible server, named as the
reference guide names them; transient faults get the names the definition retries."""

import asyncio
import uuid
from decimal import Decimal

import pytest
from harness import free_port, http_json

from devservers.stripe_server import run_stripe_server
from plumbing.errors import TransientError
from services.payment import errors
from services.payment.stripe_gateway import StripeGateway

pytestmark = pytest.mark.integration


@pytest.fixture
async def gateway():
    async with run_stripe_server() as server:
        client = StripeGateway(api_key="sk_test_orderflow", api_base=server.url)
        yield client, server.url
        await client.close()


async def charge(gateway: StripeGateway, *, order_id: str, amount: Decimal, payment_method: str, key: str):
    """What ProcessPayment does: create the intent unconfirmed under the step's key, then confirm it."""
    intent = await gateway.create_intent(
        order_id=order_id, amount=amount, currency="usd", payment_method=payment_method, idempotency_key=key
    )
    return await gateway.confirm(intent["id"], idempotency_key=f"{key}-confirm")


async def charge_error(gateway: StripeGateway, payment_method: str) -> Exception:
    order_id = f"ORDER#{uuid.uuid4().hex[:8]}"
    try:
        key = f"{order_id}-payment"
        await charge(gateway, order_id=order_id, amount=Decimal("10.00"), payment_method=payment_method, key=key)
    except Exception as exc:  # the SDK's exception, as the handler sees it
        return errors.from_stripe(exc)
    raise AssertionError(f"{payment_method} was charged")


@pytest.mark.parametrize(
    ("payment_method", "error_name"),
    [
        ("pm_card_chargeDeclined", "PaymentDeclined"),
        ("pm_card_chargeDeclinedInsufficientFunds", "InsufficientFunds"),
        ("pm_card_chargeDeclinedExpiredCard", "CardError"),
        ("pm_card_chargeDeclinedIncorrectCvc", "CardError"),
        ("pm_card_chargeDeclinedProcessingError", "CardError"),
        ("pm_card_does_not_exist", "PaymentFailed"),
    ],
)
async def test_card_and_request_errors_map_to_the_guides_names(gateway, payment_method: str, error_name: str) -> None:
    client, _ = gateway
    error = await charge_error(client, payment_method)
    assert error.error_name == error_name
    assert not isinstance(error, TransientError)


@pytest.mark.parametrize(
    ("status", "error_name"),
    [(429, "Service.Throttled"), (500, "Service.Unavailable"), (503, "Service.Unavailable")],
)
async def test_rate_limits_and_server_errors_are_transient(gateway, status: int, error_name: str) -> None:
    client, url = gateway
    # The server runs in this event loop: call it from a thread.
    await asyncio.to_thread(http_json, f"{url}/_test/faults", method="POST", body={"status": status, "count": 1})
    error = await charge_error(client, "pm_card_visa")
    assert isinstance(error, TransientError) and error.error_name == error_name


async def test_connection_errors_are_transient() -> None:
    client = StripeGateway(api_key="sk_test_orderflow", api_base=f"http://127.0.0.1:{free_port()}")
    try:
        error = await charge_error(client, "pm_card_visa")
    finally:
        await client.close()
    assert isinstance(error, TransientError) and error.error_name == "Service.ConnectionError"


async def test_the_same_idempotency_key_charges_once(gateway) -> None:
    client, url = gateway
    first = await charge(
        client, order_id="ORDER#idem", amount=Decimal("3.00"), payment_method="pm_card_visa", key="ORDER#idem-payment"
    )
    again = await charge(
        client, order_id="ORDER#idem", amount=Decimal("3.00"), payment_method="pm_card_visa", key="ORDER#idem-payment"
    )
    assert first["id"] == again["id"] and first["status"] == "succeeded"
    _, state = await asyncio.to_thread(http_json, f"{url}/_test/state")
    assert [c["amount"] for c in state["charges"]] == [300]
