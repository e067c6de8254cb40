"""One saga in the console (/console/sagas/{orderId}): the workflow graph of the definition the saga runs on,
marked with what this saga did, its steps and history as a timeline, and the operator's redrive button and
refund form.

The data is the API's (saga_detail.detail, the body of GET /api/v1/sagas/{orderId}); the definition is the
stored version the saga records (orchestrator/versions.py), the one its transitions use. The redrive form
posts to /console/sagas/{orderId}/redrive, which does what POST /api/v1/sagas/{orderId}/redrive does
(api_actions.redrive: same checks, same audit entry, same metric) and comes back here. The refund form posts to
/console/sagas/{orderId}/refund, which is POST /api/v1/sagas/{orderId}/refund (api_refund.refund); its
Idempotency-Key is made when the page is drawn, so a form posted twice (a double click, a reload) refunds once.
"""

import re
from html import escape

import asyncpg
from aiohttp import web
from pydantic import ValidationError

from orchestrator import api_actions, api_refund, manual_actions, refund_policy, saga_queries
from orchestrator.api_auth import principal_of
from orchestrator.api_models import IDEMPOTENCY_KEY_PATTERN, HistoryEvent, RefundRequest, SagaDetail
from orchestrator.api_sagas import NUDGE, RUNNER, _pool, audit_actor
from orchestrator.cancellation import saga_key
from orchestrator.console import cancel_form, graph
from orchestrator.console.html import page, see_other
from orchestrator.console.list_page import REFRESH_SECONDS, saga_link
from orchestrator.saga_detail import RUN_ENDS, RUN_STARTS, detail
from orchestrator.state import SagaState
from plumbing.envelope import new_id

#: History events that mark their state as where the saga failed (a Task's own failure is its last attempt's).
FAILING_EVENTS = frozenset({"ChoiceStateFailed", "StateDataFailed", "ParallelStateTimedOut"})
MAIN_LANE = "main"
#: History events that open a group of lanes on the lane they are noted on.
GROUP_ENTERED = {"ParallelStateEntered": "Parallel", "MapStateEntered": "Map"}

NOTICES = {
    "redriven": "Redrive requested: the saga goes on from the step that failed.",
    "refused": "Not redriven: see why below.",
    "refund-requested": "Refund requested: its outcome appears in the history (ManualRefundSucceeded or "
    "ManualRefundFailed); reload to see it.",
}


def marks_of(history: list[HistoryEvent]) -> dict[str, graph.Mark]:
    """Per state, by its path (graph's keys): visited, its last run's outcome, its runs (attempts), failed.

    A lane's path prefix comes from the history itself: the group (Parallel or Map) its owner lane entered
    last, and the lane's index in it (branch:<i> under the main flow, <owner>.<i> below)."""
    groups: dict[str, tuple[str, str]] = {}  # owner lane -> (group state, "Parallel" or "Map")
    prefixes: dict[str, str] = {MAIN_LANE: ""}

    def prefix_of(lane: str) -> str:
        if lane not in prefixes:
            owner, _, index = lane.rpartition(".") if "." in lane else (MAIN_LANE, "", lane.split(":", 1)[-1])
            group, kind = groups.get(owner, ("?", "Parallel"))
            prefixes[lane] = f"{prefix_of(owner)}{group}/{0 if kind == 'Map' else index}/"
        return prefixes[lane]

    visited: set[str] = set()
    runs: dict[str, int] = {}
    outcome: dict[str, str] = {}
    failing: set[str] = set()
    for h in history:
        if h.event in GROUP_ENTERED and h.state:
            groups[h.lane] = (h.state, GROUP_ENTERED[h.event])
            prefixes = {MAIN_LANE: ""}  # lane keys are reused by the next group: work them out anew
        if not h.state:
            continue
        path = prefix_of(h.lane) + h.state
        visited.add(path)
        if h.event in RUN_STARTS:
            runs[path] = runs.get(path, 0) + 1
            outcome[path] = "running"
        elif h.event in RUN_ENDS:
            outcome[path] = RUN_ENDS[h.event]
        if h.event in FAILING_EVENTS:
            failing.add(path)
    return {
        path: graph.Mark(
            visited=True,
            outcome=outcome.get(path),
            runs=runs.get(path, 0),
            failed=outcome.get(path) in ("failed", "timed_out") or path in failing,
        )
        for path in visited
    }


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def timeline(saga: SagaDetail) -> str:
    """The history, oldest first: time since the start, event, state and lane, attempt, error, and for the end
    of a run its duration."""
    durations = {a.commandId: a for step in saga.steps for a in step.attempts}
    rows = []
    for h in saga.history:
        run = durations.get(h.commandId or "")
        took = _duration(run.durationSeconds) if run and run.endedAt == h.at else ""
        error = f"{escape(h.error)}: {escape(h.cause or '')}" if h.error else ""
        css = "event failed" if h.error else "event"
        since = _duration((h.at - saga.createdAt).total_seconds()) or "0 ms"
        rows.append(
            f'<li class="{css}" data-event="{escape(h.event)}"><span class="at">+{since}'
            f"</span> <b>{escape(h.event)}</b> {escape(h.state or '')}"
            f"{'' if h.lane == 'main' else f' <i>{escape(h.lane)}</i>'}"
            f"{f' · attempt {h.attempt}' if h.attempt else ''}"
            f"{f' · {took}' if took else ''}{f' <span class=err>{error}</span>' if error else ''}</li>"
        )
    return f'<ol class="timeline" id="timeline">{"".join(rows)}</ol>'


def steps_table(saga: SagaDetail) -> str:
    rows = "".join(
        f'<tr class="outcome-{s.outcome}"><td>{escape(s.step)}</td><td>{escape(s.lane)}</td><td>{s.outcome}</td>'
        f"<td>{len(s.attempts)}</td><td>{_duration(sum(a.durationSeconds or 0 for a in s.attempts))}</td>"
        f"<td>{escape(s.attempts[-1].error or '')}</td></tr>"
        for s in saga.steps
    )
    return (
        '<table class="steps"><thead><tr><th>Step</th><th>Lane</th><th>Outcome</th><th>Attempts</th>'
        f"<th>Time</th><th>Last error</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def redrive_form(saga: SagaDetail) -> str:
    action = escape(saga_link(saga.orderId) + "/redrive")
    return (
        f'<form method="post" action="{action}" class="confirm" id="redrive-form" '
        f'data-confirm="Redrive {escape(saga.orderId)} from the step that failed?">'
        '<input name="reason" id="redrive-reason" maxlength="500" placeholder="Why (for the audit entry)">'
        '<button type="submit" id="redrive">Redrive</button></form>'
    )


def refund_form(saga: SagaDetail, plan: refund_policy.RefundPlan) -> str:
    """The operator's refund form: an amount (empty: all that remains), a reason, the request's key."""
    action = escape(saga_link(saga.orderId) + "/refund")
    currency = escape(plan.charge.currency.upper())
    return (
        f'<form method="post" action="{action}" class="confirm" id="refund-form" '
        f'data-confirm="Refund {{amount}} {currency} of {escape(saga.orderId)} to the customer?">'
        f'<input name="amount" id="refund-amount" inputmode="decimal" pattern="[0-9]+([.][0-9]{{1,2}})?" '
        f'placeholder="Amount in {currency} (empty: all {plan.remaining})">'
        '<input name="reason" id="refund-reason" maxlength="400" required placeholder="Why (for the audit entry)">'
        f'<input type="hidden" name="key" value="{new_id()}">'
        f'<button type="submit" id="refund">Refund</button></form>'
        f'<p class="hint">Charged {plan.charge.amount} {currency}; {plan.remaining} {currency} may be refunded.</p>'
    )


async def refund_plan(conn: asyncpg.Connection, row: asyncpg.Record, order_id: str) -> refund_policy.RefundPlan | None:
    """What a full refund would give back now, or None when the saga allows none (no form then)."""
    cancelling = await conn.fetchval("SELECT status FROM saga WHERE order_id = $1", saga_key(order_id))
    try:
        held = await manual_actions.held(conn, order_id)
        return refund_policy.plan(row["status"], row["state"], asked=None, held=held, cancellation=cancelling)
    except refund_policy.NotRefundable:
        return None


def summary(saga: SagaDetail, *, operator: bool, refund: refund_policy.RefundPlan | None = None) -> str:
    error = f"{escape(saga.error.Error)}: {escape(saga.error.Cause or '')}" if saga.error else "none"
    actions = redrive_form(saga) if operator and saga.redrive.redrivable else ""
    actions += refund_form(saga, refund) if operator and refund is not None else ""
    why = "" if saga.redrive.redrivable else f'<p class="hint">{escape(saga.redrive.reason or "")}</p>'
    return (
        f'<dl class="summary"><dt>Status</dt><dd id="saga-status" class="status status-{saga.status}">'
        f"{saga.status}</dd><dt>Step</dt><dd>{escape(saga.currentStep or '')}</dd><dt>Error</dt><dd>{error}</dd>"
        f"<dt>Workflow</dt><dd>{escape(saga.workflow.name or '')} {escape(saga.workflow.version or '')}</dd>"
        f"<dt>Started</dt><dd>{saga.createdAt:%Y-%m-%d %H:%M:%S} UTC</dd><dt>Took</dt>"
        f"<dd>{_duration(saga.durationSeconds) or 'running'}</dd><dt>Redriven</dt><dd>{saga.redriveCount}</dd></dl>"
        f"{actions}{why}"
    )


async def saga_page(request: web.Request, *, notice: str | None = None, status: int = 200) -> web.Response:
    """The page; ``notice`` (text, escaped here) and ``status`` when an action was refused and the page says why."""
    order_id = request.match_info["orderId"]
    principal = principal_of(request)
    who = (principal.name, principal.role)
    async with _pool(request).acquire() as conn:
        row = await saga_queries.saga_row(conn, order_id)
        if row is None:
            return page("Not found", f'<p class="error">No saga for order {escape(order_id)}.</p>', status=404, who=who)
        saga = detail(row, await saga_queries.history(conn, order_id))
        refund = await refund_plan(conn, row, order_id) if principal.may("operator") else None
        workflow = None
        try:
            workflow = await request.app[RUNNER].workflow_of(conn, row["workflow_name"], row["workflow_version"])
            drawing = graph.render(workflow.StartAt, workflow.States, marks_of(saga.history))
        except LookupError as exc:  # a version no longer stored: the rest of the page still helps
            drawing = f'<p class="error">No graph: {escape(str(exc))}</p>'
        state = SagaState.model_validate(row["state"])
        operator = principal.may("operator")
        cancelling = await cancel_form.related(conn, saga, operator=operator, state=state, workflow=workflow)
    notice = escape(notice) if notice is not None else NOTICES.get(request.query.get("notice", ""), "")
    live = f' data-live="{REFRESH_SECONDS}"' if saga.status == "RUNNING" else ""
    body = (
        f"<h1>{escape(order_id)}</h1>{f'<p class=notice id=notice>{notice}</p>' if notice else ''}"
        f'<section id="live"{live}><div class="saga-view">'
        f'<div class="graph">{drawing}</div>'
        f'<div class="side">{summary(saga, operator=principal.may("operator"), refund=refund)}{cancelling}'
        f"<h2>Steps</h2>{steps_table(saga)}"
        f"<h2>History</h2>{timeline(saga)}</div></div></section>"
    )
    return page(order_id, body, who=who, status=status)


async def redrive(request: web.Request) -> web.StreamResponse:
    """The redrive button: api_actions.redrive as the API runs it, then back to the saga's page."""
    order_id = request.match_info["orderId"]
    reason = str((await request.post()).get("reason", "")).strip()[:500] or None
    async with _pool(request).acquire() as conn:
        try:
            await api_actions.redrive(conn, request.app[RUNNER], order_id, actor=audit_actor(request), reason=reason)
        except api_actions.NoSuchSaga:
            raise web.HTTPNotFound(text=f"no saga for order {order_id!r}") from None
        except api_actions.NotRedrivable:
            return see_other(saga_link(order_id) + "?notice=refused")
    request.app[NUDGE]()
    return see_other(saga_link(order_id) + "?notice=redriven")


async def refund(request: web.Request) -> web.StreamResponse:
    """The refund form: api_refund.refund as the API runs it, then back to the saga's page; a refusal is the
    page again with why (409, 422; 400 for a bad amount or reason)."""
    order_id = request.match_info["orderId"]
    form = await request.post()
    key = str(form.get("key", ""))
    amount = str(form.get("amount", "")).strip()
    data = {"reason": str(form.get("reason", "")).strip()} | ({"amount": amount} if amount else {})
    try:
        body = RefundRequest.model_validate(data)
    except ValidationError as exc:
        why = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        return await saga_page(request, notice=f"Not refunded: {why}", status=400)
    async with _pool(request).acquire() as conn:
        try:
            await api_refund.refund(
                conn,
                order_id,
                amount=body.amount,
                reason=body.reason,
                request_key=key if re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key) else new_id(),
                actor=audit_actor(request),
            )
        except api_actions.NoSuchSaga:
            raise web.HTTPNotFound(text=f"no saga for order {order_id!r}") from None
        except refund_policy.NotRefundable as exc:
            return await saga_page(request, notice=f"Not refunded: {exc}", status=409)
        except (refund_policy.RefundTooLarge, api_refund.KeyReused) as exc:
            return await saga_page(request, notice=f"Not refunded: {exc}", status=422)
    request.app[NUDGE]()
    return see_other(saga_link(order_id) + "?notice=refund-requested")
