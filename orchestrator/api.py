"""The orchestrator's API: order data, behind bearer tokens, on its own port (API_PORT).

It is a separate aiohttp application from the metrics and health one (HTTP_PORT), which stays open to the
scraper and the kubelet: nothing on that port returns order data, and nothing here is public. Issue 17's
operator console adds its routes (and its OpenAPI document, as a public path) to this application.
"""

from collections.abc import Callable

import asyncpg
from aiohttp import web

from orchestrator import api_tokens
from orchestrator.api_auth import bearer_auth
from orchestrator.problems import problem, problem_middleware
from orchestrator.status import saga_view

PoolGetter = Callable[[], asyncpg.Pool | None]


def _pool(get_pool: PoolGetter) -> asyncpg.Pool:
    pool = get_pool()
    if pool is None:  # the port opens before the database connects
        raise web.HTTPServiceUnavailable(text="the orchestrator is starting", headers={"Retry-After": "2"})
    return pool


def make_api_app(get_pool: PoolGetter) -> web.Application:
    """The API application; ``get_pool`` gives the process's pool once it is connected."""

    async def lookup(token: str) -> api_tokens.Principal | None:
        async with _pool(get_pool).acquire() as conn:
            return await api_tokens.authenticate(conn, token)

    async def get_order(request: web.Request) -> web.Response:
        order_id = request.match_info["order_id"]
        async with _pool(get_pool).acquire() as conn:
            view = await saga_view(conn, order_id)
        if view is None:
            return problem(404, f"no saga for order {order_id!r}", orderId=order_id)
        return web.json_response(view)

    app = web.Application(
        client_max_size=64 * 1024,
        # Problems outermost, so the auth middleware's own errors and aiohttp's 404s share one format.
        middlewares=[problem_middleware, bearer_auth(lookup)],
    )
    app.router.add_get("/orders/{order_id}", get_order)
    return app
