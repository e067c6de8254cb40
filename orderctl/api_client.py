"""orderctl's client of the orchestrator's API (docs/api.md), for ``--api-url`` / ORDERFLOW_API_URL.

A problem (RFC 9457) becomes one of orderctl's errors with its exit code: 404 and 409 are FAILED (1), a bad
request or a refused token USAGE (2, naming ORDERFLOW_API_TOKEN), an API that cannot be reached or answers 5xx
UNREACHABLE (3, naming ORDERFLOW_API_URL).
"""

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from orderctl.config import CtlSettings
from orderctl.errors import CtlError, NotFound, Unreachable, UsageError, is_connect_error, why_unreachable

URL_VARIABLE, TOKEN_VARIABLE = "ORDERFLOW_API_URL", "ORDERFLOW_API_TOKEN"
TIMEOUT_SECONDS = 30
#: How often a command that waits for a saga (refund, cancel) reads it again.
POLL_SECONDS = 0.5


def api_url(settings: CtlSettings, flag: str | None) -> str | None:
    """The API's base URL: ``--api-url``, else ORDERFLOW_API_URL; None: direct mode."""
    url = flag or settings.api_url
    return url.rstrip("/") if url else None


def required_api_url(settings: CtlSettings, flag: str | None, command: str) -> str:
    """The API's base URL for a command that has no direct mode (refund, cancel)."""
    url = api_url(settings, flag)
    if url is None:
        raise UsageError(
            f"{command} goes through the orchestrator's API: set {URL_VARIABLE} or --api-url (and {TOKEN_VARIABLE})"
        )
    return url


async def follow(
    api: "ApiClient", saga_id: str, wait: float, done: Callable[[dict[str, Any]], bool]
) -> tuple[dict[str, Any], bool]:
    """Read the saga every POLL_SECONDS until ``done(saga)`` or ``wait`` seconds passed: the last read, and
    whether it was done."""
    deadline = time.monotonic() + wait
    while True:
        saga = await api.get(saga_path(saga_id))
        if done(saga):
            return saga, True
        if time.monotonic() >= deadline:
            return saga, False
        await asyncio.sleep(POLL_SECONDS)


def saga_path(order_id: str, suffix: str = "") -> str:
    return f"/api/v1/sagas/{quote(order_id, safe='')}{suffix}"


class ApiClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session, self.base_url = session, base_url

    async def get(self, path: str, query: list[tuple[str, str]] | None = None) -> Any:
        return await self._call("GET", path, params=query or [])

    async def post(self, path: str, body: dict[str, Any], *, headers: dict[str, str] | None = None) -> Any:
        return await self._call("POST", path, json=body, headers=headers)

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        where = f"the orchestrator's API at {urlsplit(self.base_url).netloc} ({URL_VARIABLE} or --api-url)"
        try:
            async with self.session.request(method, self.base_url + path, **kwargs) as response:
                raw = await response.read()
                kind = response.headers.get("Content-Type", "")
                status = response.status
        except aiohttp.InvalidURL:
            raise UsageError(f"invalid API URL {self.base_url!r} ({URL_VARIABLE} or --api-url)") from None
        except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
            cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
            reason = why_unreachable(cause) if is_connect_error(cause) else str(exc) or type(exc).__name__
            raise Unreachable(f"cannot reach {where}: {reason}") from exc
        if "json" not in kind:
            raise Unreachable(f"{where} answered {status} without JSON: is that the API port?")
        try:
            body = json.loads(raw)
        except ValueError:
            raise Unreachable(f"{where} answered {status} with malformed JSON") from None
        if status < 400:
            return body
        raise problem_error(status, body if isinstance(body, dict) else {}, where)


def problem_error(status: int, problem: dict[str, Any], where: str) -> CtlError:
    """One line for a problem answer, as the error class of its exit code."""
    detail = problem.get("detail") or problem.get("title") or f"HTTP {status}"
    if status == 401:
        return UsageError(f"{where} refused the token ({TOKEN_VARIABLE}): {detail}")
    if status == 403:
        return UsageError(f"{detail} ({TOKEN_VARIABLE})")
    if status in (400, 422):
        return UsageError(detail)
    if status == 404:
        return NotFound(detail)
    if status >= 500:
        return Unreachable(f"{where} failed: {detail}")
    return CtlError(detail)


@contextlib.asynccontextmanager
async def connect(settings: CtlSettings, base_url: str) -> AsyncIterator[ApiClient]:
    """A client of the API at ``base_url`` with ORDERFLOW_API_TOKEN; without a token, a usage error at once."""
    if settings.api_token is None:
        raise UsageError(f"the API at {base_url} needs a token: set {TOKEN_VARIABLE} (orderctl token create)")
    headers = {"Authorization": f"Bearer {settings.api_token.get_secret_value()}", "Accept": "application/json"}
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        yield ApiClient(session, base_url)
