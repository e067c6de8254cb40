"""Commands to the notify service and its replies."""

from typing import Literal

from contracts.base import Contract, Currency, Customer, Money, OrderId, PricedLine


class NotifyCustomer(Contract):
    orderId: OrderId
    customer: Customer
    lines: list[PricedLine]
    amount: Money
    currency: Currency


class ChannelResult(Contract):
    channel: Literal["email", "sms"]
    status: Literal["sent", "failed", "skipped"]
    detail: str = ""


class CustomerNotified(Contract):
    results: list[ChannelResult]
