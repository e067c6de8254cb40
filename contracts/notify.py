"""Commands to the notify service and its replies."""

from typing import Literal

from pydantic import Field

from contracts.base import Contract, Currency, Customer, Money, OrderId, PricedLine


class NotifyCustomer(Contract):
    orderId: OrderId
    customer: Customer
    lines: list[PricedLine]
    amount: Money
    currency: Currency
    kind: Literal["confirmation", "cancellation"] = Field(
        "confirmation",
        description="Which message: the order's confirmation, or its cancellation (refund) notice. Each kind is "
        "sent at most once per order and channel.",
    )


class ChannelResult(Contract):
    channel: Literal["email", "sms"]
    status: Literal["sent", "failed", "skipped"]
    detail: str = ""


class CustomerNotified(Contract):
    results: list[ChannelResult]
