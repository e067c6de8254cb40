"""The cancellation workflow's edges: who may start one, with what input, and what its end publishes.

A CancelOrder (``order.cancel.requested``) starts a saga of ``cancellation.json`` for a CONFIRMED order. The
saga is keyed ``"<orderId> cancel"``: an orderId holds no space (contracts.base.ORDER_ID_PATTERN), so the key
can never be another order's, and the order's own saga (keyed by its orderId) keeps its row and history. One
key per order also makes a second cancellation impossible by construction: it finds the first one's row.

The cancellation's input is read from the order saga's state (what was charged, with which PaymentIntent,
which lines, for which customer), never from the request: a client names the order and a reason, nothing more.
A request that cannot start (no such order, not CONFIRMED, already cancelled or cancelling, unreadable) is
answered with ``order.cancellation_rejected`` and a named reason, and writes nothing else.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg

from contracts.orders import CancellationOutcome, CancellationRejected, CancelOrder
from orchestrator.state import SagaState
from plumbing import outbox
from plumbing.envelope import Envelope
from plumbing.topology import EVENTS_EXCHANGE

if TYPE_CHECKING:
    from orchestrator.runner import Runner

CANCELLATION_WORKFLOW = "cancellation"
DEFINITION_FILE = Path(__file__).parent / "cancellation.json"
COMPLETED, FAILED = "CANCELLED_BY_CUSTOMER", "CANCELLATION_FAILED"
REJECTED_KEY = "order.cancellation_rejected"
#: The only status of an order saga that may be cancelled.
CANCELLABLE = "CONFIRMED"


def saga_key(order_id: str) -> str:
    """The cancellation saga's key (saga.order_id, the correlation id of its commands and replies)."""
    return f"{order_id} cancel"


def input_of(order_saga: dict[str, Any], request: CancelOrder) -> dict[str, Any]:
    """The cancellation's input, from the CONFIRMED order saga's state document."""
    data = order_saga["main"]["data"]
    inventory = data.get("inventory") or {}
    return {
        "orderId": request.orderId,
        "reason": request.reason,
        "customer": data["customer"],
        "lines": inventory.get("lines") or [],
        "amount": inventory.get("amount"),
        "currency": inventory.get("currency") or data.get("currency"),
        "paymentIntentId": (data.get("payment") or {}).get("paymentIntentId"),
    }


def refusal(
    order_status: str | None, order_workflow: str | None, cancellation_status: str | None
) -> tuple[str, str] | None:
    """Why a CancelOrder must change nothing, as (reason, detail); None when it may start. ``order_status`` is the
    order saga's (None: no such saga), ``cancellation_status`` that of the order's cancellation saga if any."""
    if order_status is None or (order_workflow or "order") != "order":
        return "OrderNotFound", "no order saga"
    if cancellation_status is not None:
        return "CancellationAlreadyRequested", f"its cancellation is {cancellation_status}"
    if order_status != CANCELLABLE:
        return "OrderNotConfirmed", f"the order is {order_status}; only a {CANCELLABLE} order is cancelled"
    return None


async def begin(
    runner: "Runner", conn: asyncpg.Connection, request: CancelOrder, *, causation_id: str | None
) -> tuple[str, str] | None:
    """Start the cancellation of ``request.orderId`` in the caller's transaction; the refusal (reason, detail)
    when it may not start, with nothing written. The order saga's row lock serializes two cancellations of one
    order: the second sees the first's saga."""
    order = await conn.fetchrow(
        "SELECT state, status, workflow_name FROM saga WHERE order_id = $1 FOR UPDATE", request.orderId
    )
    key = saga_key(request.orderId)
    existing = await conn.fetchval("SELECT status FROM saga WHERE order_id = $1", key)
    refused = refusal(order and order["status"], order and order["workflow_name"], existing)
    if refused is not None or order is None:
        return refused or ("OrderNotFound", "no order saga")
    document = input_of(order["state"], request)
    if not await runner.start_workflow(conn, CANCELLATION_WORKFLOW, key, document, causation_id=causation_id):
        return "CancellationAlreadyRequested", "started meanwhile"  # cannot happen under the lock; said, not assumed
    return None


async def start(runner: "Runner", conn: asyncpg.Connection, request: CancelOrder, *, causation_id: str | None) -> str:
    """A client's CancelOrder: start the cancellation, or answer on order.cancellation_rejected; returns
    'started' or the refusal's reason."""
    refused = await begin(runner, conn, request, causation_id=causation_id)
    if refused is None:
        return "started"
    return await refuse(conn, request.orderId, *refused, causation_id)


async def refuse(
    conn: asyncpg.Connection,
    order_id: str | None,
    reason: str,
    detail: str,
    causation_id: str | None,
    *,
    correlation: str = "",
) -> str:
    """Answer a CancelOrder that changes nothing with ``order.cancellation_rejected``; returns ``reason``."""
    payload = CancellationRejected(orderId=order_id, reason=reason, detail=detail[:500])  # type: ignore[arg-type]
    envelope = Envelope(
        type="CancellationRejected", correlationId=correlation or order_id or "", causationId=causation_id
    )
    await outbox.enqueue(conn, exchange=EVENTS_EXCHANGE, routing_key=REJECTED_KEY, envelope=envelope, payload=payload)
    return reason


def outcome(saga: SagaState) -> tuple[str, CancellationOutcome]:
    """The routing key and payload a cancellation saga's end publishes. A saga that ended otherwise than
    CANCELLED_BY_CUSTOMER (a Catch's CANCELLATION_FAILED, or an error no Catch took) is a failed cancellation."""
    data = saga.main.data
    completed = saga.status == COMPLETED
    error = None if completed or saga.error is None else saga.error.model_dump()
    payload = CancellationOutcome(
        orderId=saga.orderId,
        outcome="completed" if completed else "failed",
        status=COMPLETED if completed else FAILED,
        # What the refund gave back (all that remained of the charge), not the order's total.
        amount=(data.get("refund") or {}).get("amount") if completed else None,
        currency=data.get("currency"),
        refundId=(data.get("refund") or {}).get("refundId"),
        error=error,
        notificationError=data.get("notificationError"),
    )
    return f"order.cancellation_{payload.outcome}", payload
