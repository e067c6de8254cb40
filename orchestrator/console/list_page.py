"""The console's saga list (/console/): GET /api/v1/sagas's filters as the page's query string, so a filtered
view is a link to share; counts by status; keyset pages; a table that console.js refreshes every few seconds.

The page runs the API's own query (saga_queries.listing with the API's ListQuery), so what it lists is what
the API lists for the same parameters.
"""

from html import escape
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDict

from orchestrator import saga_queries
from orchestrator.api_auth import principal_of
from orchestrator.api_models import SAGA_STATUSES, ListQuery, SagaPage
from orchestrator.api_sagas import GET_POOL, LIST_PARAMS, BadRequest, _validated
from orchestrator.console import bulk_redrive
from orchestrator.console.html import page, saga_link

#: The text filters of the form, with their labels and hints (status is the row of checkboxes).
TEXT_FILTERS = (
    ("q", "Order id contains", ""),
    ("step", "Step", "ProcessPayment"),
    ("error", "Error", "PaymentDeclined"),
    ("product", "Product", ""),
    ("createdFrom", "Created from", "2026-01-31T00:00:00Z"),
    ("createdTo", "Created before", ""),
    ("updatedFrom", "Updated from", ""),
    ("updatedTo", "Updated before", ""),
)
#: Seconds between refreshes of the table (console.js reads data-live).
REFRESH_SECONDS = 5


def given(request: web.Request) -> MultiDict[str]:
    """The query string without empty values: an empty form field is no filter (the API would refuse it)."""
    return MultiDict((k, v) for k, v in request.rel_url.query.items() if v.strip())


def parse(params: MultiDict[str]) -> ListQuery:
    return _validated(ListQuery, {k: params.getall(k) if k in LIST_PARAMS else params[k] for k in params})


def _link(params: MultiDict[str], **changes: str | None) -> str:
    kept = [(k, v) for k, v in params.items() if k not in changes]
    kept += [(k, v) for k, v in changes.items() if v is not None]
    return "/console/" + ("?" + urlencode(kept) if kept else "")


def _filters(params: MultiDict[str]) -> str:
    chosen = set(params.getall("status", []))
    boxes = "".join(
        f'<label class="check"><input type="checkbox" name="status" value="{s}"'
        f"{' checked' if s in chosen else ''}> {s}</label>"
        for s in SAGA_STATUSES
    )
    fields = "".join(
        f'<label>{label} <input name="{name}" id="f-{name}" value="{escape(params.get(name, ""))}"'
        f' placeholder="{hint}"></label>'
        for name, label, hint in TEXT_FILTERS
    )
    return (
        f'<form method="get" action="/console/" class="filters" id="filters"><fieldset class="statuses">{boxes}'
        f'</fieldset><div class="fields">{fields}</div><button type="submit" id="apply">Filter</button>'
        ' <a href="/console/">Clear</a></form>'
    )


def _counts(params: MultiDict[str], listing: SagaPage) -> str:
    cells = "".join(
        f'<a class="count status-{s}" data-status="{s}" href="{escape(_link(params, status=s, cursor=None))}">'
        f"{s} <b>{listing.counts.get(s, 0)}</b></a>"
        for s in SAGA_STATUSES
    )
    return f'<nav class="counts" id="counts">{cells}<span class="total">{listing.total} matching</span></nav>'


def _table(params: MultiDict[str], listing: SagaPage) -> str:
    rows = "".join(
        f'<tr class="saga" data-order-id="{escape(s.orderId)}"><td><a href="{saga_link(s.orderId)}">'
        f'{escape(s.orderId)}</a></td><td class="status status-{s.status}">{s.status}</td>'
        f"<td>{escape(s.currentStep or '')}</td><td>{escape(s.error.Error if s.error else '')}</td>"
        f"<td>{s.createdAt:%Y-%m-%d %H:%M:%S}</td><td>{s.updatedAt:%Y-%m-%d %H:%M:%S}</td>"
        f"<td>{s.redriveCount or ''}</td></tr>"
        for s in listing.items
    )
    empty = "" if listing.items else '<tr><td colspan="7" class="empty">No saga matches.</td></tr>'
    pages = ""
    if params.get("cursor"):
        pages += f'<a href="{escape(_link(params, cursor=None))}" id="first-page">First page</a> '
    if listing.nextCursor:
        pages += f'<a href="{escape(_link(params, cursor=listing.nextCursor))}" id="next-page">Next page</a>'
    return (
        '<table class="sagas" id="sagas"><thead><tr><th>Order</th><th>Status</th><th>Step</th><th>Error</th>'
        f"<th>Created (UTC)</th><th>Updated (UTC)</th><th>Redriven</th></tr></thead><tbody>{rows}{empty}</tbody>"
        f'</table><p class="pages">{pages}</p>'
    )


async def list_page(request: web.Request) -> web.Response:
    principal = principal_of(request)
    params = given(request)
    who = (principal.name, principal.role)
    operator = principal.may("operator")
    try:
        query = parse(params)
        pool = request.app[GET_POOL]()
        if pool is None:
            raise web.HTTPServiceUnavailable(text="the orchestrator is starting", headers={"Retry-After": "2"})
        async with pool.acquire() as conn:
            listing = await saga_queries.listing(conn, query)
    except (BadRequest, saga_queries.BadCursor) as exc:
        body = f'<h1>Sagas</h1>{_filters(params)}<p class="error" id="filter-error">{escape(str(exc))}</p>'
        return page("Sagas", body, status=400, who=who)
    bulk = bulk_redrive.list_button(params, bulk_redrive.redrivable_count(query, listing)) if operator else ""
    live = (
        f'<section id="live" data-live="{REFRESH_SECONDS}">{_counts(params, listing)}{bulk}{_table(params, listing)}'
        '<p class="refreshed">Refreshed every few seconds.</p></section>'
    )
    return page("Sagas", f"<h1>Sagas</h1>{_filters(params)}{live}", who=who)
