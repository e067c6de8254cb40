"""Ways to run the simulator: in the current event loop, in a thread, or forever.

Tests pick :func:`run_stripe_server` when their code under test is async (the
SDK's ``*_async`` methods), and :class:`StripeServerThread` when it makes
blocking SDK calls, which would otherwise deadlock a server sharing their
loop.  Both bind port 0 so parallel test runs never collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiohttp import web

from .app import STATE, SimState, make_app

log = logging.getLogger("devservers.stripe_server")


@dataclass
class RunningServer:
    """A started simulator; ``url`` is what goes into ``base_addresses["api"]``."""

    app: web.Application
    host: str
    port: int

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321``."""
        return f"http://{self.host}:{self.port}"

    @property
    def state(self) -> SimState:
        """Direct access to store, faults, webhooks (same loop only)."""
        return self.app[STATE]


@asynccontextmanager
async def run_stripe_server(host: str = "127.0.0.1", port: int = 0, **app_kwargs: Any) -> AsyncIterator[RunningServer]:
    """Serve a fresh simulator in the running loop until the block exits."""
    app = make_app(**app_kwargs)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = int(runner.addresses[0][1])
        yield RunningServer(app, host, bound_port)
    finally:
        await runner.cleanup()


async def serve_forever(host: str, port: int, **app_kwargs: Any) -> None:
    """CLI entry: run until SIGINT/SIGTERM, then shut down cleanly (docker stop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # e.g. Windows
            loop.add_signal_handler(sig, stop.set)
    async with run_stripe_server(host, port, **app_kwargs) as server:
        log.info("Stripe simulator listening on %s", server.url)
        for endpoint in server.state.webhooks.endpoints:
            log.info("webhook endpoint %s secret=%s", endpoint.url, endpoint.secret)
        await stop.wait()
        log.info("Stripe simulator stopping")


class StripeServerThread:
    """Run the simulator on its own event loop in a daemon thread.

    Usage::

        with StripeServerThread() as server:
            client = stripe.StripeClient("sk_test_x", base_addresses={"api": server.url})
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **app_kwargs: Any) -> None:
        self._host, self._port, self._kwargs = host, port, app_kwargs
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.server: RunningServer | None = None

    def start(self, timeout: float = 10.0) -> RunningServer:
        """Start and wait (bounded) until the port is bound."""
        self._thread = threading.Thread(target=self._run, name="stripe-sim", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("Stripe simulator did not start in time")
        if self._error is not None or self.server is None:
            raise RuntimeError("Stripe simulator failed to start") from self._error
        return self.server

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def main() -> None:
            self._stop = asyncio.Event()
            async with run_stripe_server(self._host, self._port, **self._kwargs) as server:
                self.server = server
                self._ready.set()
                await self._stop.wait()

        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # surfaced to start()
            self._error = exc
        finally:
            self._ready.set()
            loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down and join the thread."""
        if self._loop is not None and self._stop is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # loop already closed: the server is gone
                pass
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> RunningServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
