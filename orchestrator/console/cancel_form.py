"""The console's Cancel button on a RUNNING saga's or a CONFIRMED order's page, and the link between an order
and its cancellation.

The form posts to /console/sagas/{orderId}/cancel, which does what POST /api/v1/sagas/{orderId}/cancel does
(api_cancel.cancel: the same refusal rules, the same CancelRequested audit entry, the same metric) and then
shows the saga that carries the cancellation out: a stopped saga's own page, which refreshes itself while its
compensation runs, or the cancellation saga's, while the refund, restock and void run.
"""

from html import escape

import asyncpg
from aiohttp import web
from pydantic import ValidationError

from orchestrator import api_cancel, cancellation
from orchestrator.api_actions import ACTIONS
from orchestrator.api_models import SagaDetail
from orchestrator.api_sagas import NUDGE, RUNNER, _pool, audit_actor
from orchestrator.console.html import see_other
from orchestrator.console.list_page import saga_link
from orchestrator.definition import Workflow
from orchestrator.engine_cancel import cancel_refusal
from orchestrator.state import RUNNING, SagaState
from orchestrator.versions import ORDER_WORKFLOW


def stop_form(saga: SagaDetail, state: SagaState, workflow: Workflow | None) -> str:
    """The Cancel form of a RUNNING order saga its definition lets an operator stop (engine_cancel's rules)."""
    if workflow is None or (saga.workflow.name or ORDER_WORKFLOW) != ORDER_WORKFLOW:
        return ""
    if cancel_refusal(workflow, state) is not None:
        return ""
    action = escape(saga_link(saga.orderId) + "/cancel")
    step = escape(state.main.current or "")
    return (
        f'<form method="post" action="{action}" class="confirm" id="cancel-form" '
        f'data-confirm="Stop {escape(saga.orderId)} at {step} and compensate what may have taken effect?">'
        '<input name="reason" id="cancel-reason" maxlength="400" required placeholder="Why (for the audit entry)">'
        f'<button type="submit" id="cancel">Stop and compensate</button></form>'
    )


async def related(
    conn: asyncpg.Connection,
    saga: SagaDetail,
    *,
    operator: bool,
    state: SagaState | None = None,
    workflow: Workflow | None = None,
) -> str:
    """For an order saga: a link to its cancellation if it has one, else (for an operator) the Cancel form of a
    CONFIRMED order, or of a RUNNING saga that may be stopped (``state`` and ``workflow``: its own). For a
    cancellation saga: a link back to its order. Empty otherwise."""
    if saga.workflow.name == cancellation.CANCELLATION_WORKFLOW:
        order_id = saga.orderId.removesuffix(cancellation.saga_key(""))
        return f'<p class="hint">Cancels order <a href="{escape(saga_link(order_id))}">{escape(order_id)}</a>.</p>'
    if saga.status == RUNNING:
        return stop_form(saga, state, workflow) if operator and state is not None else ""
    key = cancellation.saga_key(saga.orderId)
    existing = await conn.fetchval("SELECT status FROM saga WHERE order_id = $1", key)
    if existing is not None:
        link = f'<a id="cancellation-link" href="{escape(saga_link(key))}">{escape(existing)}</a>'
        return f'<p class="hint">Cancellation: {link}.</p>'
    if not operator or cancellation.refusal(saga.status, saga.workflow.name, None) is not None:
        return ""
    action = escape(saga_link(saga.orderId) + "/cancel")
    return (
        f'<form method="post" action="{action}" class="confirm" id="cancel-form" '
        f'data-confirm="Cancel {escape(saga.orderId)}: refund it in full, restock it and tell the customer?">'
        '<input name="reason" id="cancel-reason" maxlength="400" required placeholder="Why (the customer\'s words)">'
        '<button type="submit" id="cancel">Cancel order</button></form>'
    )


async def cancel(request: web.Request) -> web.StreamResponse:
    """The Cancel button: api_cancel.cancel as the API runs it, then the cancellation saga's page; a refusal is
    the order's page again with why (409; 400 for a reason that is missing or not one line)."""
    from orchestrator.console.saga_page import saga_page  # the page imports this module

    order_id = request.match_info["orderId"]
    try:
        body = api_cancel.CancelRequest.model_validate(
            {"reason": str((await request.post()).get("reason", "")).strip()}
        )
    except ValidationError as exc:
        why = "; ".join(e["msg"] for e in exc.errors())
        return await saga_page(request, notice=f"Not cancelled: reason: {why}", status=400)
    async with _pool(request).acquire() as conn:
        try:
            result = await api_cancel.cancel(
                conn, request.app[RUNNER], order_id, reason=body.reason, actor=audit_actor(request)
            )
        except api_cancel.CancelRefused as exc:
            if exc.reason == "OrderNotFound":
                ACTIONS.labels("cancel", "not_found").inc()
                raise web.HTTPNotFound(text=f"no saga for order {order_id!r}") from None
            ACTIONS.labels("cancel", "refused").inc()
            return await saga_page(request, notice=f"Not cancelled: {exc}", status=409)
    ACTIONS.labels("cancel", "stopped" if result.get("stoppedAt") else "done").inc()
    request.app[NUDGE]()
    return see_other(saga_link(result["cancellation"]))
