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

    async def charge(
        self, *, order_id: str, amount: Decimal, currency: str, payment_method: str, idempotency_key: str
    ) -> Any:
        """Create and confirm a PaymentIntent; the same key never charges twice."""
        return await self.client.v1.payment_intents.create_async(
            {
                "amount": to_minor(amount, currency),
                "currency": currency,
                "payment_method": payment_method,
                # Server-side confirmation with no redirect flow: 3-D Secure answers requires_action.
                "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
                "confirm": True,
                "metadata": {"orderId": order_id},
            },
            {"idempotency_key": idempotency_key},
        )

    async def retrieve(self, payment_intent_id: str) -> Any:
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
