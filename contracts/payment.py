"""Commands to the payment service and its replies."""

from typing import Annotated

from pydantic import Field

from contracts.base import Contract, Currency, Customer, HeaderText, Identifier, Money, OrderId, PricedLine


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


class ScreenOrder(Contract):
    """Screen an order for fraud before anything is taken: approved, or refused with ``FraudCheck.Rejected``
    (a business error a Catch routes). The decision follows the payment service's rules (settings) and is
    kept by ``idempotencyKey``: asked again, the same order gets the same answer."""

    orderId: OrderId
    amount: Money
    currency: Currency
    customer: Customer
    lines: list[PricedLine] = Field(min_length=1, max_length=100, description="The order's priced lines.")
    idempotencyKey: Identifier = Field(description="{orderId}-screen")


class OrderScreened(Contract):
    """The order passed every fraud rule (a refusal is the failure reply ``FraudCheck.Rejected``)."""

    rules: list[str] = Field(description="The rules the order was checked against and passed, by name.")
