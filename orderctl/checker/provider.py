"""Reading the payment provider through the official Stripe SDK: every PaymentIntent of an order, and its refunds.

The payment service sets ``metadata.orderId`` on every PaymentIntent it creates, so an order's intents are a
search away (``metadata['orderId']:'ORDER#1'``), whatever answers were lost on the way. Refunds are listed per
intent that received money. Every read is paged and bounded, and at most ``concurrency`` requests are in
flight. The same code reads api.stripe.com (a restricted key with read access to PaymentIntents and Refunds
is enough) and the local Stripe-compatible server.

Stripe's search index lags its writes (under a minute, Stripe says, longer during incidents): against real
Stripe, judge orders that ended more than a few minutes ago.
"""

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import stripe

from orderctl.checker.model import CheckError, Intent, Refund

#: The payment service's local key (services/payment/main.py): what a Stripe-compatible server is read with
#: when only its address is given.
LOCAL_API_KEY = "sk_test_orderflow_local"
#: Objects per page (Stripe's maximum) and pages per order or intent: more is itself a finding, not a list to walk.
PAGE = 100
MAX_PAGES = 10


@dataclass(frozen=True)
class ProviderConfig:
    """Where the provider is and how hard to ask it."""

    api_key: str
    #: None: api.stripe.com.
    api_base: str | None = None
    #: Requests in flight at once.
    concurrency: int = 8
    #: The SDK retries reads (429, 5xx, lost connections) with its own backoff; a read has no side effect.
    max_network_retries: int = 2

    @property
    def where(self) -> str:
        return self.api_base or "api.stripe.com"


def search_query(order_id: str) -> str:
    """Stripe's query for an order's PaymentIntents; a quote or backslash in the id is escaped."""
    escaped = order_id.replace("\\", "\\\\").replace("'", "\\'")
    return f"metadata['orderId']:'{escaped}'"


def _ours(refund: Any) -> bool:
    """The payment service made it: it sets the order's id in every refund's metadata."""
    return bool(refund.metadata and refund.metadata.to_dict().get("orderId"))


def _intent(pi: Any, refunds: list[Refund]) -> Intent:
    return Intent(
        id=pi.id,
        status=pi.status,
        amount=pi.amount,
        amount_received=pi.amount_received or 0,
        currency=pi.currency,
        refunds=tuple(refunds),
    )


class ProviderReader:
    """One SDK client for one read of many orders."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.limit = asyncio.Semaphore(config.concurrency)

    async def _call(self, method: Any, params: dict[str, Any]) -> Any:
        async with self.limit:
            try:
                return await method(params)
            except stripe.StripeError as exc:
                raise CheckError(f"payment provider ({self.config.where}): {exc.user_message or exc}") from exc

    async def intents(self, client: stripe.StripeClient, order_id: str) -> list[Intent]:
        params: dict[str, Any] = {"query": search_query(order_id), "limit": PAGE}
        found: list[Any] = []
        for _ in range(MAX_PAGES):
            page = await self._call(client.v1.payment_intents.search_async, params)
            found.extend(page.data)
            if not page.has_more or not page.next_page:
                break
            params = {**params, "page": page.next_page}
        else:
            raise CheckError(f"payment provider: more than {PAGE * MAX_PAGES} PaymentIntents for {order_id}")
        # A search answers what matches; an intent of another order never is this order's.
        mine = [pi for pi in found if pi.metadata and pi.metadata.to_dict().get("orderId") == order_id]
        refunds = await asyncio.gather(*(self.refunds(client, pi.id) for pi in mine if pi.amount_received))
        by_intent = dict(zip((pi.id for pi in mine if pi.amount_received), refunds, strict=True))
        return [_intent(pi, by_intent.get(pi.id, [])) for pi in mine]

    async def refunds(self, client: stripe.StripeClient, intent_id: str) -> list[Refund]:
        params: dict[str, Any] = {"payment_intent": intent_id, "limit": PAGE}
        found: list[Refund] = []
        for _ in range(MAX_PAGES):
            page = await self._call(client.v1.refunds.list_async, params)
            found.extend(Refund(r.id, r.amount, r.status or "", ours=_ours(r)) for r in page.data)
            if not page.has_more or not page.data:
                return found
            params = {**params, "starting_after": page.data[-1].id}
        raise CheckError(f"payment provider: more than {PAGE * MAX_PAGES} refunds for {intent_id}")

    async def read(self, order_ids: Iterable[str]) -> dict[str, list[Intent]]:
        """Every order's PaymentIntents (an order with none maps to an empty list)."""
        http = stripe.AIOHTTPClient()
        client = stripe.StripeClient(
            self.config.api_key,
            base_addresses={"api": self.config.api_base} if self.config.api_base else None,
            http_client=http,
            max_network_retries=self.config.max_network_retries,
        )
        try:
            async with asyncio.TaskGroup() as group:
                tasks = {o: group.create_task(self.intents(client, o)) for o in sorted(set(order_ids))}
        except* CheckError as failed:  # the first failure cancels the other reads; report it alone
            raise failed.exceptions[0] from None
        finally:
            await http.close_async()
        return {order_id: task.result() for order_id, task in tasks.items()}


async def read_provider(config: ProviderConfig, order_ids: Iterable[str]) -> dict[str, list[Intent]]:
    """Every PaymentIntent (with its refunds) the provider holds for each of ``order_ids``."""
    return await ProviderReader(config).read(order_ids)
