"""Every message type by its wire name, with where it travels: the source of the AsyncAPI document."""

from dataclasses import dataclass

from pydantic import BaseModel

from contracts import inventory, notify, orders, payment, records
from plumbing.replies import CommandFailed


@dataclass(frozen=True)
class MessageSpec:
    model: type[BaseModel]
    kind: str  # "event", "command" or "reply"
    exchange: str
    routing_key: str
    summary: str
    from_client: bool = False  # published by outside clients, never by Orderflow


def _doc(model: type[BaseModel]) -> str:
    return (model.__doc__ or model.__name__).strip().splitlines()[0]


def _commands(service: str, *models: type[BaseModel]) -> list[MessageSpec]:
    return [MessageSpec(m, "command", "orderflow.commands", f"{service}.{m.__name__}", _doc(m)) for m in models]


def _replies(*models: type[BaseModel]) -> list[MessageSpec]:
    return [MessageSpec(m, "reply", "orderflow.replies", "orchestrator", _doc(m)) for m in models]


MESSAGES: list[MessageSpec] = [
    MessageSpec(
        orders.OrderRequested, "event", "orders", "order.requested", _doc(orders.OrderRequested), from_client=True
    ),
    MessageSpec(orders.OrderOutcome, "event", "orders", "order.{status}", _doc(orders.OrderOutcome)),
    MessageSpec(orders.OrderRejected, "event", "orders", "order.rejected", _doc(orders.OrderRejected)),
    MessageSpec(
        orders.CancelOrder, "event", "orders", "order.cancel.requested", _doc(orders.CancelOrder), from_client=True
    ),
    MessageSpec(
        orders.CancellationOutcome,
        "event",
        "orders",
        "order.cancellation_{outcome}",
        _doc(orders.CancellationOutcome),
    ),
    MessageSpec(
        orders.CancellationRejected,
        "event",
        "orders",
        "order.cancellation_rejected",
        _doc(orders.CancellationRejected),
    ),
    *_commands(
        "inventory",
        inventory.CheckInventory,
        inventory.ReserveInventory,
        inventory.ReserveInventoryLine,
        inventory.ReleaseInventory,
        inventory.CommitReservation,
        inventory.RestockOrder,
    ),
    *_commands("payment", payment.ProcessPayment, payment.RefundPayment, payment.ScreenOrder),
    *_commands("orders", records.CreateOrderRecord, records.VoidOrderRecord),
    *_commands("notify", notify.NotifyCustomer),
    *_replies(
        inventory.InventoryChecked,
        inventory.InventoryReserved,
        inventory.InventoryLineReserved,
        inventory.InventoryReleased,
        inventory.ReservationCommitted,
        inventory.StockRestocked,
        payment.PaymentProcessed,
        payment.PaymentRefunded,
        payment.OrderScreened,
        records.OrderRecordCreated,
        records.OrderRecordVoided,
        notify.CustomerNotified,
        CommandFailed,
    ),
]

BY_NAME: dict[str, MessageSpec] = {spec.model.__name__: spec for spec in MESSAGES}
