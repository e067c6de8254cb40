"""POST /api/v1/sagas/{orderId}/cancel: an operator stops a RUNNING saga, or cancels a CONFIRMED order.

A RUNNING order saga is stopped where it stands (orchestrator/engine_cancel.py): in one transaction its row is
locked, the refusal rules applied (ended, already compensating, past its point of no return), a
``CancelRequested`` audit entry written to its history (who, from where, why) and the engine's Cancelled event
applied: the step in flight is abandoned and its Catch taken as for ``CancelledByOperator``, so the compensation
the definition prescribes runs, the in-flight step's included. The saga ends where that path ends (FAILED,
FAILED_COMPENSATED, or FAILED_CRITICAL if a compensation fails), with CancelledByOperator as its error, and
publishes its outcome event as any end does.

A CONFIRMED order is cancelled by the same cancellation workflow a client's CancelOrder starts
(orchestrator/cancellation.py), started in the orchestrator's process and audited the same way, in the
cancellation saga's history. A refusal is the HTTP answer (404, 409) and writes nothing: no
``order.cancellation_rejected`` is published for it, since the caller is answered directly.
"""

from datetime import datetime
from typing import Annotated, Any

import asyncpg
from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from contracts.base import HeaderText
from contracts.orders import CancelOrder
from orchestrator import cancellation, saga_queries
from orchestrator.api_actions import ACTIONS
from orchestrator.api_models import Actor, Model, SagaStatus
from orchestrator.api_sagas import NUDGE, RUNNER, _body, _pool, answer, audit_actor
from orchestrator.engine_cancel import SAGA_FINISHED, cancel_refusal
from orchestrator.problems import problem
from orchestrator.runner import Runner, lock_saga
from orchestrator.state import RUNNING, Cancelled, SagaState
from orchestrator.versions import ORDER_WORKFLOW

#: The history event of the audit entry: in the stopped saga's history, or the cancellation saga's.
CANCEL_REQUESTED = "CancelRequested"
#: ``stopped``: a RUNNING saga stopped and sent down its compensation; ``done``: a cancellation workflow started.
for _outcome in ("done", "stopped", "refused", "not_found"):
    ACTIONS.labels("cancel", _outcome)


class CancelRequest(Model):
    """Body of a cancellation asked by an operator."""

    reason: Annotated[HeaderText, Field(min_length=1, max_length=400)] = Field(
        description="Why (the customer's words): the refund's and the record's reason."
    )


class CancelResult(BaseModel):
    orderId: str
    cancellation: str = Field(
        description="The saga that carries the cancellation out, GET /api/v1/sagas/{cancellation} for its "
        "progress: the cancellation workflow's '{orderId} cancel' for a CONFIRMED order; the order's own saga "
        "when a RUNNING one was stopped."
    )
    status: SagaStatus = Field(
        description="RUNNING: the refund (or the compensation) is on its way; a stopped saga with nothing to "
        "compensate has ended already (FAILED)."
    )
    stoppedAt: str | None = Field(
        None, description="A RUNNING saga stopped: the step it was stopped at (its command abandoned)."
    )
    compensation: str | None = Field(
        None,
        description="A RUNNING saga stopped: the state its definition's Catch led to for CancelledByOperator "
        "(the compensation that runs), or its end state when there is nothing to compensate.",
    )
    auditedAt: datetime
    by: Actor


class CancelRefused(Exception):
    """The order may not be cancelled; ``reason`` is the refusal's name (cancellation.refusal)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


async def cancel(
    conn: asyncpg.Connection, runner: Runner, order_id: str, *, reason: str, actor: dict[str, Any]
) -> dict[str, Any]:
    """Stop ``order_id``'s RUNNING saga, or start the cancellation of its CONFIRMED order, with the audit entry,
    in one transaction; CancelRefused if neither may be done."""
    try:
        request = CancelOrder(orderId=order_id, reason=reason)
    except ValidationError:  # not an orderId at all (a cancellation's own key has a space): no such order
        raise CancelRefused("OrderNotFound", "not an order id") from None
    key = cancellation.saga_key(order_id)
    async with conn.transaction():
        row = await lock_saga(conn, order_id)
        if row is not None and (row["workflow_name"] or ORDER_WORKFLOW) == ORDER_WORKFLOW:
            if row["status"] == RUNNING:
                return await stop(conn, runner, order_id, row, reason=reason, actor=actor)
            if row["status"] != cancellation.CANCELLABLE:
                raise CancelRefused(
                    SAGA_FINISHED,
                    f"the saga has ended: it is {row['status']}; only a RUNNING saga is stopped, or a "
                    f"{cancellation.CANCELLABLE} order cancelled",
                )
        refused = await cancellation.begin(runner, conn, request, causation_id=None)
        if refused is not None:
            raise CancelRefused(*refused)
        audit = {"action": "cancel", "by": actor, "reason": reason}
        at = await saga_queries.record_audit(conn, key, event=CANCEL_REQUESTED, state=None, detail=audit)
    return {"orderId": order_id, "cancellation": key, "status": "RUNNING", "auditedAt": at, "by": actor}


async def stop(
    conn: asyncpg.Connection,
    runner: Runner,
    order_id: str,
    row: Any,
    *,
    reason: str,
    actor: dict[str, Any],
) -> dict[str, Any]:
    """Stop the RUNNING saga whose locked row is ``row`` and send it down its compensation, audited; in the
    caller's transaction. CancelRefused (nothing written) when its definition's rules refuse."""
    saga = SagaState.model_validate(row["state"])
    workflow = await runner.workflow_of(conn, row["workflow_name"], row["workflow_version"])
    refused = cancel_refusal(workflow, saga)
    if refused is not None:
        raise CancelRefused(*refused)
    step = saga.main.current
    audit = {"action": "cancel", "by": actor, "reason": reason, "stoppedAt": step}
    at = await saga_queries.record_audit(conn, order_id, event=CANCEL_REQUESTED, state=step, detail=audit)
    decision = await runner.apply(conn, order_id, Cancelled(reason=reason, by=actor), causation_id=None)
    assert decision is not None, "the row is locked: the saga is there"
    caught = next((h for h in decision.history if h.event == "Caught"), None)
    return {
        "orderId": order_id,
        "cancellation": order_id,
        "status": decision.state.status,
        "stoppedAt": step,
        "compensation": (caught.detail or {}).get("next") if caught else decision.state.main.current,
        "auditedAt": at,
        "by": actor,
    }


async def cancel_saga(request: web.Request) -> web.Response:
    order_id = request.match_info["orderId"]
    body = await _body(request, CancelRequest)
    who = audit_actor(request)
    async with _pool(request).acquire() as conn:
        try:
            result = await cancel(conn, request.app[RUNNER], order_id, reason=body.reason, actor=who)
        except CancelRefused as exc:
            if exc.reason == "OrderNotFound":
                ACTIONS.labels("cancel", "not_found").inc()
                return problem(404, f"no saga for order {order_id!r}", orderId=order_id)
            ACTIONS.labels("cancel", "refused").inc()
            return problem(409, str(exc), orderId=order_id, refusal=exc.reason)
    ACTIONS.labels("cancel", "stopped" if result.get("stoppedAt") else "done").inc()
    request.app[NUDGE]()
    return answer(CancelResult.model_validate(result))
