"""The console's page shell: one HTML document around a page's body, its own stylesheet and script only."""

from html import escape
from urllib.parse import quote

from aiohttp import web

STATIC = "/console/static/"


def page(title: str, body: str, *, status: int = 200, who: tuple[str, str] | None = None) -> web.Response:
    """A whole page; ``who`` (token name, role) shows the signed-in principal and the logout button."""
    account = ""
    if who is not None:
        account = (
            f'<span class="who" id="who" data-role="{escape(who[1])}">{escape(who[0])} · {escape(who[1])}</span>'
            '<form method="post" action="/console/logout" class="inline"><button id="logout">Log out</button></form>'
        )
    document = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · Orderflow</title><link rel="stylesheet" href="{STATIC}console.css">
<script src="{STATIC}console.js" defer></script></head>
<body><header><a href="/console/" class="brand">Orderflow</a>{account}</header>
<main>{body}</main></body></html>"""
    return web.Response(text=document, status=status, content_type="text/html", charset="utf-8")


def saga_link(order_id: str) -> str:
    """A saga's console page (the order id URL-encoded: ORDER#123 is ORDER%23123)."""
    return "/console/sagas/" + quote(order_id, safe="")


def see_other(location: str) -> web.Response:
    """A 303 to ``location`` (after a form's POST, the browser GETs it: no resubmission on reload)."""
    return web.Response(status=303, headers={"Location": location})
