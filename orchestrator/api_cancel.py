"""POST /api/v1/sagas/{orderId}/cancel: an operator cancels a CONFIRMED order for its customer.

The same cancellation workflow a client's CancelOrder starts (orchestrator/cancellation.py), started in the
orchestrator's process, audited like a redrive: in one transaction the order saga's row is locked, the
refusal rules applied, the cancellation saga started and its history given a ``CancelRequested`` entry (who,
from where, why). A refusal is the HTTP answer (404, 409) and writes nothing: no ``order.cancellation_rejected``
is published for it, since the caller is answered directly.
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
from orchestrator.problems import problem
from orchestrator.runner import Runner

#: The history event of the audit entry, in the cancellation saga's history.
CANCEL_REQUESTED = "CancelRequested"
for _outcome in ("done", "refused", "not_found"):
    ACTIONS.labels("cancel", _outcome)


class CancelRequest(Model):
    """Body of a cancellation asked by an operator."""

    reason: Annotated[HeaderText, Field(min_length=1, max_length=400)] = Field(
        description="Why (the customer's words): the refund's and the record's reason."
    )


class CancelResult(BaseModel):
    orderId: str
    cancellation: str = Field(description="The cancellation saga's id: GET /api/v1/sagas/{cancellation}.")
    status: SagaStatus = Field(description="RUNNING: the refund is on its way.")
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
    """Start the cancellation of ``order_id`` with its audit entry, in one transaction; CancelRefused if not."""
    try:
        request = CancelOrder(orderId=order_id, reason=reason)
    except ValidationError:  # not an orderId at all (a cancellation's own key has a space): no such order
        raise CancelRefused("OrderNotFound", "not an order id") from None
    key = cancellation.saga_key(order_id)
    async with conn.transaction():
        refused = await cancellation.begin(runner, conn, request, causation_id=None)
        if refused is not None:
            raise CancelRefused(*refused)
        audit = {"action": "cancel", "by": actor, "reason": reason}
        at = await saga_queries.record_audit(conn, key, event=CANCEL_REQUESTED, state=None, detail=audit)
    return {"orderId": order_id, "cancellation": key, "status": "RUNNING", "auditedAt": at, "by": actor}


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
    ACTIONS.labels("cancel", "done").inc()
    request.app[NUDGE]()
    return answer(CancelResult.model_validate(result))
