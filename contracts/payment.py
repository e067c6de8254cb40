"""Commands to the payment service and its replies."""

from pydantic import Field

from contracts.base import Contract, Currency, Money, OrderId


class ProcessPayment(Contract):
    orderId: OrderId
    amount: Money
    currency: Currency
    paymentMethodId: str
    idempotencyKey: str = Field(description="{orderId}-payment: Stripe's Idempotency-Key.")


class PaymentProcessed(Contract):
    paymentIntentId: str
    status: str
    amount: Money


class RefundPayment(Contract):
    """Compensation: refund the order's payment (all of it unless amount is given)."""

    orderId: OrderId
    paymentIntentId: str | None = Field(None, description="Looked up by orderId when absent.")
    amount: Money | None = None
    reason: str = "Order processing failed"
    idempotencyKey: str = Field(description="{orderId}-refund")


class PaymentRefunded(Contract):
    refunded: bool = Field(description="False when there was no payment to refund: a no-op success.")
    refundId: str | None = None
    amount: Money | None = None
    alreadyRefunded: bool = False
