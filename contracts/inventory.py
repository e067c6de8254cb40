"""Commands to the inventory service and its replies."""

from pydantic import Field

from contracts.base import Contract, Currency, Identifier, Money, OrderId, OrderItem, PricedLine, ProductId


class CheckInventory(Contract):
    orderId: OrderId
    items: list[OrderItem] = Field(min_length=1)
    currency: Currency = "usd"


class InventoryChecked(Contract):
    """Every line is in stock; prices and the total come from the catalog."""

    lines: list[PricedLine]
    amount: Money
    currency: Currency


class ReserveInventory(Contract):
    orderId: OrderId
    items: list[OrderItem] = Field(min_length=1)
    idempotencyId: Identifier = Field(description="The orderId: one reservation per order.")


class InventoryReserved(Contract):
    reservationId: Identifier
    items: list[OrderItem]


class ReserveInventoryLine(Contract):
    """Reserve one line of an order, on its own: a Map over the order's lines sends one per line. Each line is
    a hold of its own, kept by ``idempotencyId``; ReleaseInventory, CommitReservation, RestockOrder and the
    sweeper act on every hold of the order, one line or many."""

    orderId: OrderId
    productId: ProductId
    quantity: int = Field(gt=0, le=10_000, strict=True, description="Units of the line.")
    idempotencyId: Identifier = Field(description="{orderId}-reserve-{productId}: one hold per line.")


class InventoryLineReserved(Contract):
    reservationId: Identifier
    productId: ProductId
    quantity: int


class ReleaseInventory(Contract):
    """Compensation: put reserved stock back. Without items, the order's active reservations are found."""

    orderId: OrderId
    items: list[OrderItem] | None = None
    action: str = "release"
    idempotencyId: Identifier = Field(description="{orderId}-release")


class InventoryReleased(Contract):
    released: bool = Field(description="False when nothing was reserved: a no-op success.")
    items: list[OrderItem] = Field(default_factory=list)


class CommitReservation(Contract):
    """The order is CONFIRMED: its reservation is sold, no longer a hold. Acknowledged, so it is retried."""

    orderId: OrderId


class ReservationCommitted(Contract):
    committed: int = Field(description="Reservations turned committed now; 0 when already committed.")


class RestockOrder(Contract):
    """A CONFIRMED order was cancelled: its sold stock (committed, or still active if the commit never landed)
    goes back on the shelf. Idempotent per order by idempotencyId."""

    orderId: OrderId
    idempotencyId: Identifier = Field(description="{orderId}-restock")


class StockRestocked(Contract):
    restocked: bool = Field(description="False when the order held no sold stock: a no-op success.")
    items: list[OrderItem] = Field(default_factory=list)
