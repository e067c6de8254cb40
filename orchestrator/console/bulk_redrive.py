"""The console's bulk redrive: the list page's filter, redriven from the list (operators only).

Two steps, both POST /console/redrive with the list's filter as hidden fields. The list page's button (it shows
how many redrivable sagas the filter matches) asks for the dry run: the API's bulk redrive with dryRun
(api_actions.bulk_redrive), drawn as a page listing the sagas it would restart. Its form, with a confirmation
naming the count, posts again with dryRun=0: the same call for real, each saga redriven in its own transaction
with its own RedriveRequested audit entry (bulk, who, from where, why), and a page saying what was done and what
could not be (a saga that changed in between).
"""

from html import escape
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDict

from orchestrator import api_actions
from orchestrator.api_auth import principal_of
from orchestrator.api_models import REDRIVABLE, BulkRedriveRequest, SagaFilter, SagaPage
from orchestrator.api_sagas import LIST_PARAMS, NUDGE, RUNNER, BadRequest, _pool, _validated, audit_actor
from orchestrator.console.html import page, saga_link

PATH = "/console/redrive"
#: The form's own fields; every other field is the list's filter.
OWN_FIELDS = ("dryRun", "reason")
KINDS = " or ".join(sorted(REDRIVABLE))


def redrivable_count(query: SagaFilter, listing: SagaPage) -> int:
    """How many redrivable sagas the list's filter matches, from its counts by status (no query of its own)."""
    return sum(listing.counts.get(s, 0) for s in REDRIVABLE if not query.status or s in query.status)


def _hidden(params: MultiDict[str]) -> str:
    return "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">'
        for k, v in params.items()
        if k not in (*OWN_FIELDS, "cursor")
    )


def list_button(params: MultiDict[str], count: int) -> str:
    """The list page's button: the dry run of the filter shown, with the count it will list."""
    if count == 0:
        return ""
    return (
        f'<form method="post" action="{PATH}" class="inline bulk" id="bulk-dry-run">{_hidden(params)}'
        '<input type="hidden" name="dryRun" value="1">'
        f'<button type="submit" id="bulk-dry-run-button">Redrive the {count} {KINDS} sagas matching…</button>'
        '<span class="hint"> a dry run first: nothing changes until you confirm</span></form>'
    )


def _list_link(params: MultiDict[str]) -> str:
    """The list with the same filter: where the operator came from."""
    kept = [(k, v) for k, v in params.items() if k not in (*OWN_FIELDS, "cursor")]
    return "/console/" + ("?" + urlencode(kept) if kept else "")


def _ids(order_ids: list[str], element: str) -> str:
    items = "".join(
        f'<li data-order-id="{escape(o)}"><a href="{escape(saga_link(o))}">{escape(o)}</a></li>' for o in order_ids
    )
    return f'<ul class="bulk-ids" id="{element}">{items}</ul>'


async def redrive(request: web.Request) -> web.Response:
    """POST /console/redrive: the dry run (dryRun=1) or the redrive itself, as the API's bulk redrive."""
    principal = principal_of(request)
    who = (principal.name, principal.role)
    form = await request.post()
    params = MultiDict((k, str(v)) for k, v in form.items() if isinstance(v, str) and v.strip())
    dry_run = params.get("dryRun", "1") != "0"
    back = f'<p><a href="{escape(_list_link(params))}" id="bulk-back">Back to the list</a></p>'
    try:
        filters = {k: params.getall(k) if k in LIST_PARAMS else params[k] for k in params if k not in OWN_FIELDS}
        body = _validated(BulkRedriveRequest, {"filter": filters, "dryRun": dry_run, "reason": params.get("reason")})
    except BadRequest as exc:
        return page("Bulk redrive", f'<h1>Bulk redrive</h1><p class="error">{escape(str(exc))}</p>{back}', status=400)
    result = await api_actions.bulk_redrive(
        _pool(request), request.app[RUNNER], body, actor=audit_actor(request), on_written=request.app[NUDGE]
    )
    ids, matched = result["orderIds"], result["matched"]
    more = (
        f" Only the newest {len(ids)} (at most {body.limit}) at a time: run it again for the rest."
        if result["truncated"]
        else ""
    )
    if dry_run:
        if not ids:
            text = f'<p id="bulk-summary">No {KINDS} saga matches this filter: nothing to redrive.</p>'
            return page("Bulk redrive", f"<h1>Bulk redrive</h1>{text}{back}", who=who)
        confirm = f"Redrive these {len(ids)} sagas from the step that failed?"
        body_html = (
            f'<h1>Bulk redrive: dry run</h1><p id="bulk-summary">{matched} {KINDS} sagas match this filter; '
            f"these {len(ids)} would be redriven from the step that failed, newest first.{more}</p>"
            f"{_ids(ids, 'bulk-ids')}"
            f'<form method="post" action="{PATH}" class="confirm" id="bulk-form" data-confirm="{escape(confirm)}">'
            f'{_hidden(params)}<input type="hidden" name="dryRun" value="0">'
            '<input name="reason" id="bulk-reason" maxlength="500" placeholder="Why (for each audit entry)">'
            f'<button type="submit" id="bulk-redrive">Redrive {len(ids)} sagas</button></form>{back}'
        )
        return page("Bulk redrive", body_html, who=who)
    failed = "".join(
        f'<li data-order-id="{escape(f["orderId"])}">{escape(f["orderId"])}: {escape(f["reason"])}</li>'
        for f in result["failed"]
    )
    body_html = (
        f'<h1>Bulk redrive: done</h1><p class="notice" id="bulk-done">Redriven {len(ids)} of the {matched} '
        f"matching {KINDS} sagas; each goes on from the step that failed.{more}</p>{_ids(ids, 'bulk-done-ids')}"
        + (f'<h2>Not redriven</h2><ul id="bulk-failed">{failed}</ul>' if failed else "")
        + back
    )
    return page("Bulk redrive", body_html, who=who)
