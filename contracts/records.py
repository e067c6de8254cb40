"""Commands to the orders service (the order record) and its replies."""

from pydantic import Field

from contracts.base import Contract, Currency, Customer, Money, OrderId, PricedLine


class CreateOrderRecord(Contract):
    orderId: OrderId
    customer: Customer
    lines: list[PricedLine] = Field(min_length=1)
    amount: Money
    currency: Currency
    paymentIntentId: str


class OrderRecordCreated(Contract):
    orderId: OrderId
    status: str
    created: bool = Field(description="False when a duplicate command updated the existing record.")
