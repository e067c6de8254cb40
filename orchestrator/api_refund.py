"""The manual refund (issue 17): customer service gives back part or all of what an order was charged.

The guide's "manual refund (customer service)": a RefundPayment sent outside the workflow, with an idempotency
key of its own per request ({orderId}-manual-refund-{requestKey}). In one transaction: the saga's row is
locked, the request checked against what the saga charged and what was refunded or is being refunded
(orchestrator/refund_policy.py), the command kept in saga_manual_action, the audit entry written
(ManualRefundRequested: who, role, from where, amount, reason) and the command put in the outbox. The reply is
recorded in the saga's history when it comes (orchestrator/manual_actions.py); the workflow's state never
changes. A request repeated with the same Idempotency-Key finds the first one's row and sends nothing.
"""

from decimal import Decimal
from typing import Any

import asyncpg

from contracts.payment import RefundPayment
from contracts.registry import BY_NAME
from orchestrator import manual_actions, refund_policy, saga_queries
from orchestrator.api_actions import ACTIONS, NoSuchSaga
from orchestrator.cancellation import saga_key
from orchestrator.runner import REPLY_KEY, lock_saga
from plumbing import outbox
from plumbing.envelope import Envelope, new_id

ACTION = "refund"
_COMMAND = BY_NAME[RefundPayment.__name__]
for _outcome in ("done", "replayed", "refused", "not_found"):
    ACTIONS.labels(ACTION, _outcome)


class KeyReused(Exception):
    """The Idempotency-Key was used for a different refund of this saga (422): nothing was sent."""


def idempotency_key(order_id: str, request_key: str) -> str:
    """Stripe's Idempotency-Key for a manual refund: one per request, never the compensation's {orderId}-refund."""
    return f"{order_id}-manual-refund-{request_key}"


def _money(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _view(order_id: str, request_key: str, row: Any, *, replayed: bool) -> dict[str, Any]:
    """A refund as the API answers it (RefundResult's fields), from its saga_manual_action row."""
    request, result = row["request"], row["result"] or {}
    return {
        "orderId": order_id,
        "requestKey": request_key,
        "commandId": row["command_id"],
        "idempotencyKey": idempotency_key(order_id, request_key),
        "status": row["outcome"],
        "amount": request.get("amount"),
        "expected": request.get("expected"),
        "currency": request.get("currency"),
        "reason": request.get("reason"),
        "refunded": result.get("amount"),
        "refundId": result.get("refundId"),
        "error": result.get("error"),
        "cause": result.get("cause"),
        "requestedAt": row["requested_at"],
        "by": request.get("by"),
        "replayed": replayed,
    }


async def refund(
    conn: asyncpg.Connection,
    order_id: str,
    *,
    amount: Decimal | None,
    reason: str,
    request_key: str,
    actor: dict[str, Any],
) -> dict[str, Any]:
    """Ask the payment service for a refund of ``amount`` (None: all that remains), audited, in one
    transaction; or answer the earlier request with the same ``request_key``."""
    asked = {"amount": _money(amount), "reason": reason}
    try:
        async with conn.transaction():
            row = await lock_saga(conn, order_id)
            if row is None:
                raise NoSuchSaga(order_id)
            earlier = await manual_actions.find(conn, order_id, ACTION, request_key)
            if earlier is not None:
                if {k: earlier["request"].get(k) for k in asked} != asked:
                    raise KeyReused(
                        f"Idempotency-Key {request_key!r} was used for another refund of this order "
                        f"({earlier['request'].get('amount') or 'in full'}, {earlier['request'].get('reason')!r}); "
                        "use a new key for a new refund"
                    )
                ACTIONS.labels(ACTION, "replayed").inc()
                return _view(order_id, request_key, earlier, replayed=True)
            state = row["state"]
            # The cancellation workflow's start locks this row too, so neither can begin while the other decides.
            cancelling = await conn.fetchval("SELECT status FROM saga WHERE order_id = $1", saga_key(order_id))
            plan = refund_policy.plan(
                state.get("status"),
                state,
                asked=amount,
                held=await manual_actions.held(conn, order_id),
                cancellation=cancelling,
            )
            command_id = new_id()
            key = idempotency_key(order_id, request_key)
            request = {
                **asked,
                "expected": _money(plan.holds),
                "currency": plan.charge.currency,
                "charged": _money(plan.charge.amount),
                "remaining": _money(plan.remaining),
                "by": actor,
            }
            await manual_actions.record(
                conn,
                command_id=command_id,
                order_id=order_id,
                action=ACTION,
                request_key=request_key,
                request=request,
                amount=plan.holds,
            )
            audit = {"action": ACTION, **request, "requestKey": request_key, "commandId": command_id}
            await saga_queries.record_audit(
                conn,
                order_id,
                event=manual_actions.REFUND_REQUESTED,
                state=state["main"].get("current"),
                detail=audit | {"idempotencyKey": key},
            )
            command = RefundPayment(
                orderId=order_id,
                paymentIntentId=plan.charge.paymentIntentId,
                amount=plan.send,
                reason=reason,
                idempotencyKey=key,
            )
            # No deadline: nobody waits on this reply, and a refund done late is still the refund asked for.
            envelope = Envelope(
                messageId=command_id, type=_COMMAND.model.__name__, correlationId=order_id, replyTo=REPLY_KEY
            )
            await outbox.enqueue(
                conn, exchange=_COMMAND.exchange, routing_key=_COMMAND.routing_key, envelope=envelope, payload=command
            )
            created = await manual_actions.find(conn, order_id, ACTION, request_key)
    except NoSuchSaga:
        ACTIONS.labels(ACTION, "not_found").inc()
        raise
    except (refund_policy.NotRefundable, refund_policy.RefundTooLarge, KeyReused):
        ACTIONS.labels(ACTION, "refused").inc()
        raise
    ACTIONS.labels(ACTION, "done").inc()
    manual_actions.MANUAL_REFUNDS.labels("requested").inc()
    return _view(order_id, request_key, created, replayed=False)
