"""Commands to the payment service and its replies."""

from typing import Annotated

from pydantic import Field

from contracts.base import Contract, Currency, HeaderText, Identifier, Money, OrderId


class ProcessPayment(Contract):
    orderId: OrderId
    amount: Money
    currency: Currency
    paymentMethodId: Identifier
    idempotencyKey: Identifier = Field(description="{orderId}-payment: Stripe's Idempotency-Key.")


class PaymentProcessed(Contract):
    paymentIntentId: Identifier
    status: str
    amount: Money


class RefundPayment(Contract):
    """Compensation: refund the order's payment (all of it unless amount is given)."""

    orderId: OrderId
    paymentIntentId: Identifier | None = Field(None, description="Looked up by orderId when absent.")
    amount: Money | None = None
    reason: Annotated[HeaderText, Field(max_length=400)] = Field(
        "Order processing failed", description="Kept in the refund's Stripe metadata (up to 500 characters)."
    )
    idempotencyKey: Identifier = Field(description="{orderId}-refund")


class PaymentRefunded(Contract):
    refunded: bool = Field(description="False when there was no payment to refund: a no-op success.")
    refundId: Identifier | None = None
    amount: Money | None = None
    alreadyRefunded: bool = False
