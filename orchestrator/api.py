"""The orchestrator's API: order data and operator actions, behind bearer tokens, on its own port (API_PORT).

It is a separate aiohttp application from the metrics and health one (HTTP_PORT), which stays open to the
scraper and the kubelet: nothing on that port returns order data, and nothing here is public but the OpenAPI
document. The routes are orchestrator/api_routes.py's table; docs/api.md describes them. The web console
(orchestrator/console/, docs/console.md) is served here too, under /console/.
"""

from collections.abc import Callable

import asyncpg
from aiohttp import web

from orchestrator import api_tokens, console, openapi
from orchestrator.api_auth import TOKEN_LOOKUP, bearer_auth, with_oidc
from orchestrator.api_oidc import OidcVerifier
from orchestrator.api_routes import OPENAPI_DOCUMENT, PUBLIC_PATHS, ROUTES
from orchestrator.api_sagas import GET_POOL, NUDGE, RUNNER, bad_request_middleware
from orchestrator.console.session import COOKIE, PREFIX, console_middleware
from orchestrator.problems import problem_middleware
from orchestrator.runner import Runner

PoolGetter = Callable[[], asyncpg.Pool | None]


def make_api_app(
    get_pool: PoolGetter,
    runner: Runner,
    *,
    nudge: Callable[[], None] = lambda: None,
    oidc: OidcVerifier | None = None,
) -> web.Application:
    """The API application: ``get_pool`` gives the process's pool once it is connected, ``runner`` applies
    redrives, ``nudge`` wakes the process's outbox relay after one; ``oidc``, when configured, verifies JWTs."""

    async def opaque_lookup(token: str) -> api_tokens.Principal | None:
        pool = get_pool()
        if pool is None:
            raise web.HTTPServiceUnavailable(text="the orchestrator is starting", headers={"Retry-After": "2"})
        async with pool.acquire() as conn:
            return await api_tokens.authenticate(conn, token)

    lookup = with_oidc(opaque_lookup, oidc)

    app = web.Application(
        client_max_size=64 * 1024,
        # Problems outermost, so the auth middleware's own errors and aiohttp's 404s share one format.
        # The console's guards (Origin check, login redirect) see the auth middleware's answers; the session
        # cookie counts only under the console's prefix (docs/console.md).
        middlewares=[
            problem_middleware,
            console_middleware,
            bearer_auth(lookup, public=PUBLIC_PATHS | console.PUBLIC_PATHS, cookie=(PREFIX, COOKIE)),
            bad_request_middleware,
        ],
    )
    app[GET_POOL], app[RUNNER], app[NUDGE], app[TOKEN_LOOKUP] = get_pool, runner, nudge, lookup
    app[OPENAPI_DOCUMENT] = openapi.document()
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    console.add_routes(app)
    return app
