"""Commands an operator sends outside the workflow (the manual refund), and their replies.

Such a command's id is kept in saga_manual_action (migration 0007) with what was asked. Its reply reaches the
runner like any other; ``settle`` finds the id here and records the outcome in the saga's history
(ManualRefundSucceeded or ManualRefundFailed) instead of letting the engine take it for a stale reply, so the
workflow's state never changes by it. Everything here runs in the caller's transaction, after the saga's row
is locked (orchestrator/runner.py ``lock_saga``).
"""

from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
from prometheus_client import Counter

from orchestrator import refund_policy
from orchestrator.state import ReplyReceived

#: History events of a manual refund: the audit entry when asked, then its outcome when the reply comes.
REFUND_REQUESTED = "ManualRefundRequested"
REFUND_SUCCEEDED = "ManualRefundSucceeded"
REFUND_FAILED = "ManualRefundFailed"

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
    row = await conn.fetchrow(
        """SELECT action, request_key, request, outcome FROM saga_manual_action
           WHERE command_id = $1 AND order_id = $2 FOR UPDATE""",
        reply.commandId,
        order_id,
    )
    if row is None:
        return False
    if row["outcome"] != "pending":
        return True
    error, cause = (reply.error.Error, reply.error.Cause) if reply.error else (None, None)
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
        reply.commandId,
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
    }
    await conn.execute(
        """INSERT INTO saga_history (order_id, at, event, state, lane, command_id, error, cause, detail)
           VALUES ($1, $2, $3, NULL, 'main', $4, $5, $6, $7::jsonb)""",
        order_id,
        at,
        REFUND_SUCCEEDED if verdict.succeeded else REFUND_FAILED,
        reply.commandId,
        verdict.error,
        verdict.cause,
        detail,
    )
    MANUAL_REFUNDS.labels(outcome).inc()
    return True
