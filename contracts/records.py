"""Commands to the orders service (the order record) and its replies."""

from pydantic import Field

from contracts.base import Contract, Currency, Customer, HeaderText, Identifier, Money, OrderId, PricedLine


class CreateOrderRecord(Contract):
    orderId: OrderId
    customer: Customer
    lines: list[PricedLine] = Field(min_length=1)
    amount: Money
    currency: Currency
    paymentIntentId: Identifier


class OrderRecordCreated(Contract):
    orderId: OrderId
    status: str
    created: bool = Field(description="False when a duplicate command updated the existing record.")


class VoidOrderRecord(Contract):
    """Compensation: the order failed after CreateOrderRecord may have run. Voids the record if it exists and
    leaves a tombstone, so a CreateOrderRecord that lands later writes nothing."""

    orderId: OrderId
    reason: HeaderText = Field("", description="Why the record is voided.")


class OrderRecordVoided(Contract):
    voided: bool = Field(description="False when no record existed: the tombstone alone was written.")
