"""The web console at /console/, served by the orchestrator's API application (docs/console.md).

Server-rendered HTML, one stylesheet and one small script shipped in this package (static/): nothing is fetched
from elsewhere. Its pages read what the API reads (saga_queries, saga_detail) and its actions, redrive (one, or
those the list's filter matches), refund and cancel, run the API's (api_actions, api_refund, api_cancel). It
authenticates with the session cookie session.py sets from an API token; the roles are the API's (GET needs
viewer, POST operator), enforced by the same middleware.
"""

from importlib.resources import files

from aiohttp import web

from orchestrator.console import bulk_redrive, cancel_form, list_page, saga_page, session

STATIC_DIR = files(__package__) / "static"
ASSETS = {"console.css": "text/css", "console.js": "text/javascript"}
#: Served without a session: the login and logout forms and the two assets (no order data in any of them).
PUBLIC_PATHS = frozenset(
    {session.LOGIN_PATH, session.LOGOUT_PATH, *(f"{session.PREFIX}static/{name}" for name in ASSETS)}
)


async def _asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    body = (STATIC_DIR / name).read_text(encoding="utf-8")
    return web.Response(text=body, content_type=ASSETS[name], headers={"Cache-Control": "max-age=300"})


async def _to_list(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently(session.PREFIX)


def add_routes(app: web.Application) -> None:
    """Register the console's routes on the API application."""
    app.router.add_get("/console", _to_list)
    app.router.add_get(session.PREFIX, list_page.list_page)
    app.router.add_get(session.LOGIN_PATH, session.login_page)
    app.router.add_post(session.LOGIN_PATH, session.login)
    app.router.add_post(session.LOGOUT_PATH, session.logout)
    app.router.add_get(session.PREFIX + "static/{name}", _asset)
    app.router.add_get(session.PREFIX + "sagas/{orderId}", saga_page.saga_page)
    app.router.add_post(session.PREFIX + "sagas/{orderId}/redrive", saga_page.redrive)
    app.router.add_post(session.PREFIX + "sagas/{orderId}/refund", saga_page.refund)
    app.router.add_post(session.PREFIX + "sagas/{orderId}/cancel", cancel_form.cancel)
    app.router.add_post(bulk_redrive.PATH, bulk_redrive.redrive)
