"""The HTTP side of a process: /metrics, /healthz (alive), /readyz (connected, not draining).

Processes add their own routes (the payment webhook) to the same aiohttp application, or serve another
application on a port of its own (a ``Site``: the orchestrator's authenticated API), so that what needs no
credentials (metrics for the scraper, health for the kubelet) never shares a port with what does.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

ReadyCheck = Callable[[], Awaitable[tuple[bool, dict[str, bool]]]]
#: Refreshes gauges read from the database (sagas in flight) just before a scrape.
ScrapeHook = Callable[[], Awaitable[None]]
SCRAPE_HOOKS = web.AppKey("scrape_hooks", list)


@dataclass(frozen=True)
class Site:
    """An HTTP application a process serves besides metrics and health, on its own address and port."""

    name: str
    build: Callable[[], web.Application]
    host: str
    port: int


def make_app(ready: ReadyCheck) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    app[SCRAPE_HOOKS] = []

    async def metrics_view(request: web.Request) -> web.Response:
        for hook in request.app[SCRAPE_HOOKS]:
            try:
                await hook()
            except Exception:  # a database away must not hide the other metrics
                pass
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        ok, checks = await ready()
        return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)

    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve(app: web.Application, host: str, port: int, *, shutdown_timeout: float = 60.0) -> web.AppRunner:
    """Serve ``app``; its cleanup waits up to ``shutdown_timeout`` seconds for requests in progress."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
