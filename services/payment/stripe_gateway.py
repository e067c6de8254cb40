"""The Stripe calls Orderflow makes, through the official SDK's async client."""

from decimal import Decimal
from typing import Any

import stripe

from services.payment.money import to_minor


class StripeGateway:
    def __init__(self, *, api_key: str, api_base: str | None, max_network_retries: int = 0) -> None:
        self.http = stripe.AIOHTTPClient()
        self.client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else None,
            http_client=self.http,
            # Retries belong to the workflow definition, so they are counted and visible.
            max_network_retries=max_network_retries,
        )

    async def close(self) -> None:
        await self.http.close_async()

    async def create_intent(
        self, *, order_id: str, amount: Decimal, currency: str, payment_method: str, idempotency_key: str
    ) -> Any:
        """Create a PaymentIntent without confirming it: no money moves until ``confirm``. The same key replays
        the same intent, so a create whose answer was lost is found again by asking with its key."""
        return await self.client.v1.payment_intents.create_async(
            {
                "amount": to_minor(amount, currency),
                "currency": currency,
                "payment_method": payment_method,
                # Server-side confirmation with no redirect flow: 3-D Secure answers requires_action.
                "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
                "metadata": {"orderId": order_id},
            },
            {"idempotency_key": idempotency_key},
        )

    async def confirm(self, payment_intent_id: str, *, idempotency_key: str) -> Any:
        """Charge: the only call that moves money, made once the intent's id is known."""
        return await self.client.v1.payment_intents.confirm_async(
            payment_intent_id, {}, {"idempotency_key": idempotency_key}
        )

    async def intents_of_order(self, order_id: str) -> list[Any]:
        """Every PaymentIntent the provider holds for the order, found by its metadata: what a compensation
        must settle when no answer ever told us an intent's id."""
        escaped = order_id.replace("\\", "\\\\").replace("'", "\\'")
        found: list[Any] = []
        params: dict[str, Any] = {"query": f"metadata['orderId']:'{escaped}'", "limit": 100}
        while True:
            page = await self.client.v1.payment_intents.search_async(params)
            found.extend(page.data)
            if not page.has_more or not page.next_page:
                return found
            params = {**params, "page": page.next_page}

    async def retrieve(self, payment_intent_id: str) -> Any:
        """The PaymentIntent as Stripe holds it now: what a webhook acts on, never the event's copy of it."""
        return await self.client.v1.payment_intents.retrieve_async(payment_intent_id)

    async def cancel(self, payment_intent_id: str, *, idempotency_key: str) -> Any:
        return await self.client.v1.payment_intents.cancel_async(
            payment_intent_id, {"cancellation_reason": "abandoned"}, {"idempotency_key": idempotency_key}
        )

    async def refund(
        self, *, payment_intent_id: str, amount_minor: int | None, reason: str, order_id: str, idempotency_key: str
    ) -> Any:
        params: dict[str, Any] = {
            "payment_intent": payment_intent_id,
            "metadata": {"orderId": order_id, "reason": reason[:400]},
        }
        if amount_minor is not None:
            params["amount"] = amount_minor
        return await self.client.v1.refunds.create_async(params, {"idempotency_key": idempotency_key})
