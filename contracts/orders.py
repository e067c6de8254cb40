"""The public contract on the ``orders`` exchange: what clients publish and what they hear back."""

from typing import Annotated, Literal

from pydantic import Field

from contracts.base import (
    Contract,
    Currency,
    Customer,
    ErrorInfo,
    Identifier,
    Money,
    OrderId,
    OrderItem,
    PricedLine,
)

#: Terminal statuses of an order; the outcome's routing key is ``order.<status lower case>``.
OrderStatus = Literal["CONFIRMED", "CANCELLED", "FAILED", "FAILED_COMPENSATED", "FAILED_CRITICAL"]


class OrderRequested(Contract):
    """Published by a client with routing key ``order.requested`` to start an order's saga."""

    orderId: OrderId
    customer: Customer
    items: list[OrderItem] = Field(min_length=1, max_length=100)
    paymentMethodId: Annotated[Identifier, Field(max_length=200)] = Field(description="Stripe PaymentMethod id.")
    currency: Currency = "usd"


class OrderOutcome(Contract):
    """Published with routing key ``order.<status>`` when the saga ends."""

    orderId: OrderId
    status: OrderStatus
    amount: Money | None = None
    currency: Currency | None = None
    lines: list[PricedLine] = Field(default_factory=list)
    error: ErrorInfo | None = Field(None, description="Why the order did not succeed.")
    notificationError: ErrorInfo | None = Field(None, description="Set when only the notification failed.")


class OrderRejected(Contract):
    """Published with routing key ``order.rejected`` for an OrderRequested that cannot start."""

    orderId: str | None = None
    reasons: list[str]
