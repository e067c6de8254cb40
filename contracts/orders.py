"""The public contract on the ``orders`` exchange: what clients publish and what they hear back."""

from typing import Annotated, Literal

from pydantic import Field

from contracts.base import (
    Contract,
    Currency,
    Customer,
    ErrorInfo,
    HeaderText,
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


#: Terminal statuses of a cancellation saga (orchestrator/cancellation.json); the outcome's routing key is
#: ``order.cancellation_<outcome>``: ``order.cancellation_completed`` or ``order.cancellation_failed``.
CancellationStatus = Literal["CANCELLED_BY_CUSTOMER", "CANCELLATION_FAILED"]
#: Why a CancelOrder changed nothing (``order.cancellation_rejected``).
CancellationRefusal = Literal["InvalidRequest", "OrderNotFound", "OrderNotConfirmed", "CancellationAlreadyRequested"]


class CancelOrder(Contract):
    """Published by a client with routing key ``order.cancel.requested`` to cancel a CONFIRMED order: its payment
    is refunded, its stock returned, its record voided and the customer told (the cancellation workflow)."""

    orderId: OrderId
    reason: Annotated[HeaderText, Field(max_length=400)] = Field(
        "Cancelled by customer", description="Kept with the refund and the voided record."
    )


class CancellationOutcome(Contract):
    """Published with routing key ``order.cancellation_completed`` or ``order.cancellation_failed`` when a
    cancellation saga ends."""

    orderId: OrderId
    outcome: Literal["completed", "failed"] = Field(description="The routing key's end: completed or failed.")
    status: CancellationStatus
    amount: Money | None = Field(None, description="What was refunded.")
    currency: Currency | None = None
    refundId: Identifier | None = None
    error: ErrorInfo | None = Field(None, description="Why the cancellation did not complete.")
    notificationError: ErrorInfo | None = Field(None, description="Set when only the notification failed.")


class CancellationRejected(Contract):
    """Published with routing key ``order.cancellation_rejected`` for a CancelOrder that changed nothing."""

    orderId: str | None = None
    reason: CancellationRefusal
    detail: str = ""


class OrderRejected(Contract):
    """Published with routing key ``order.rejected`` for an OrderRequested that cannot start."""

    orderId: str | None = None
    reasons: list[str]
