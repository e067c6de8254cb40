"""Commands an operator sends outside the workflow (the manual refund), and their replies.

Such a command's id is kept in saga_manual_action (migration 0007) with what was asked. Its reply reaches the
runner like any other; ``settle`` finds the id here and records the outcome in the saga's history
(ManualRefundSucceeded or ManualRefundFailed) instead of letting the engine take it for a stale reply, so the
workflow's state never changes by it. Everything here runs in the caller's transaction, after the saga's row
is locked (orchestrator/runner.py ``lock_saga``).

A failure that says nothing of what Stripe did (a transient error: the answer lost after Stripe refunded, the
payment service's database gone before it recorded the refund, Stripe down or throttling) is no outcome: the
refund is asked again, under a new command id and the same Stripe Idempotency-Key, which refunds at most once
and answers with the refund if one was made, up to ``MAX_ASKS`` times; only then is it recorded as failed.
"""

import logging
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
from prometheus_client import Counter

from contracts.payment import RefundPayment
from contracts.registry import BY_NAME
from orchestrator import refund_policy
from orchestrator.state import ReplyReceived
from plumbing import outbox
from plumbing.envelope import Envelope, new_id
from plumbing.errors import (
    DB_CONNECTION,
    DB_DEADLOCK,
    DB_LOCK_TIMEOUT,
    DB_SERIALIZATION,
    DB_TOO_MANY_CONNECTIONS,
    SERVICE_THROTTLED,
    SERVICE_UNAVAILABLE,
)

#: History events of a manual refund: the audit entry when asked, then its outcome when the reply comes.
REFUND_REQUESTED = "ManualRefundRequested"
REFUND_SUCCEEDED = "ManualRefundSucceeded"
REFUND_FAILED = "ManualRefundFailed"

#: Failures after which the refund may or may not exist at Stripe (payment's errors.from_stripe and the
#: database's transient names): asked again under the same Idempotency-Key rather than recorded as failed.
OUTCOME_UNKNOWN = frozenset(
    {
        "Service.ConnectionError",
        SERVICE_UNAVAILABLE,
        SERVICE_THROTTLED,
        DB_CONNECTION,
        DB_DEADLOCK,
        DB_LOCK_TIMEOUT,
        DB_SERIALIZATION,
        DB_TOO_MANY_CONNECTIONS,
    }
)
#: How many times one manual refund is sent in all before a transient failure is recorded as its outcome.
MAX_ASKS = 6
_COMMAND = BY_NAME[RefundPayment.__name__]
log = logging.getLogger(__name__)

MANUAL_REFUNDS = Counter(
    "orderflow_manual_refunds_total",
    "Manual refunds (issue 17) by outcome: requested (sent to the payment service), succeeded (money given "
    "back), failed (the payment service refused or found nothing to refund; no money moved).",
    ["outcome"],
)
for _outcome in ("requested", "succeeded", "failed"):
    MANUAL_REFUNDS.labels(_outcome)


async def held(conn: asyncpg.Connection, order_id: str) -> Decimal:
    """What the saga's manual refunds hold against its charge: those done and those still on their way."""
    return await conn.fetchval(
        """SELECT coalesce(sum(amount), 0) FROM saga_manual_action
           WHERE order_id = $1 AND action = 'refund' AND outcome <> 'failed'""",
        order_id,
    )


async def find(conn: asyncpg.Connection, order_id: str, action: str, request_key: str) -> asyncpg.Record | None:
    """The action an earlier request with this key made, if any."""
    return await conn.fetchrow(
        """SELECT command_id, request, amount, requested_at, outcome, result FROM saga_manual_action
           WHERE order_id = $1 AND action = $2 AND request_key = $3""",
        order_id,
        action,
        request_key,
    )


async def record(
    conn: asyncpg.Connection,
    *,
    command_id: str,
    order_id: str,
    action: str,
    request_key: str,
    request: dict[str, Any],
    amount: Decimal | None,
) -> datetime:
    """Keep a command sent outside the workflow, so its reply is recognised; returns when it was asked."""
    return await conn.fetchval(
        """INSERT INTO saga_manual_action (command_id, order_id, action, request_key, request, amount)
           VALUES ($1, $2, $3, $4, $5::jsonb, $6) RETURNING requested_at""",
        command_id,
        order_id,
        action,
        request_key,
        request,
        amount,
    )


async def settle(conn: asyncpg.Connection, order_id: str, reply: ReplyReceived, *, at: datetime) -> bool:
    """Record the reply to a manual action in the saga's history; False when ``reply`` answers no manual
    action (the engine's to apply). A reply delivered again changes nothing."""
    # A refund asked again keeps its first command id (the one the API answered and the history names); the
    # command on its way is the request's askedAs.
    row = await conn.fetchrow(
        """SELECT command_id, action, request_key, request, outcome FROM saga_manual_action
           WHERE order_id = $2 AND action = 'refund' AND (command_id = $1 OR request ->> 'askedAs' = $1)
           FOR UPDATE""",
        reply.commandId,
        order_id,
    )
    if row is None:
        return False
    if row["outcome"] != "pending":
        return True
    error, cause = (reply.error.Error, reply.error.Cause) if reply.error else (None, None)
    if not reply.ok and error in OUTCOME_UNKNOWN:
        if reply.commandId != row["request"].get("askedAs", row["command_id"]):
            return True  # an earlier ask's failure, answered by a later ask already
        if row["request"].get("asks", 1) < MAX_ASKS:
            await _ask_again(conn, order_id, row["command_id"], row["request_key"], row["request"])
            return True
    verdict = refund_policy.settled(reply.ok, reply.result, error, cause)
    outcome = "succeeded" if verdict.succeeded else "failed"
    result = {
        "amount": None if verdict.amount is None else float(verdict.amount),
        "refundId": verdict.refundId,
        "error": verdict.error,
        "cause": verdict.cause,
    }
    await conn.execute(
        """UPDATE saga_manual_action SET outcome = $2, settled_at = $3, result = $4::jsonb,
               amount = CASE WHEN $2 = 'succeeded' THEN coalesce($5::numeric, amount) ELSE amount END
           WHERE command_id = $1""",
        row["command_id"],
        outcome,
        at,
        result,
        verdict.amount,
    )
    request = row["request"]
    detail = {
        "action": row["action"],
        "requestKey": row["request_key"],
        "amount": result["amount"],
        "asked": request.get("amount"),
        "currency": request.get("currency"),
        "refundId": verdict.refundId,
        "by": request.get("by"),
        "asks": request.get("asks", 1),
    }
    await conn.execute(
        """INSERT INTO saga_history (order_id, at, event, state, lane, command_id, error, cause, detail)
           VALUES ($1, $2, $3, NULL, 'main', $4, $5, $6, $7::jsonb)""",
        order_id,
        at,
        REFUND_SUCCEEDED if verdict.succeeded else REFUND_FAILED,
        row["command_id"],
        verdict.error,
        verdict.cause,
        detail,
    )
    MANUAL_REFUNDS.labels(outcome).inc()
    return True


async def _ask_again(
    conn: asyncpg.Connection, order_id: str, command_id: str, request_key: str, request: dict[str, Any]
) -> None:
    """Send the refund first asked as ``command_id`` again, as a new command with the same Stripe
    Idempotency-Key; the action's request names the command on its way (askedAs) and counts the asks."""
    from orchestrator.api_refund import idempotency_key  # the API's module imports this one
    from orchestrator.runner import REPLY_KEY

    state = await conn.fetchval("SELECT state FROM saga WHERE order_id = $1", order_id)
    charge = refund_policy.charge_of(state or {})
    again = new_id()
    asks = request.get("asks", 1) + 1
    await conn.execute(
        "UPDATE saga_manual_action SET request = $2::jsonb WHERE command_id = $1",
        command_id,
        {**request, "asks": asks, "askedAs": again},
    )
    asked = request.get("amount")
    command = RefundPayment(
        orderId=order_id,
        paymentIntentId=charge.paymentIntentId if charge is not None else None,
        amount=None if asked is None else Decimal(str(asked)),
        reason=request.get("reason") or "",
        idempotencyKey=idempotency_key(order_id, request_key),
    )
    envelope = Envelope(messageId=again, type=_COMMAND.model.__name__, correlationId=order_id, replyTo=REPLY_KEY)
    await outbox.enqueue(
        conn, exchange=_COMMAND.exchange, routing_key=_COMMAND.routing_key, envelope=envelope, payload=command
    )
    log.warning(
        "manual refund's outcome unknown; asked again under its Idempotency-Key",
        extra={"fields": {"orderId": order_id, "requestKey": request_key, "asks": asks, "commandId": again}},
    )
