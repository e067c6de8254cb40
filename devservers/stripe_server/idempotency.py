"""Stripe's ``Idempotency-Key`` semantics for POST requests.

Rules reproduced (https://docs.stripe.com/api/idempotent_requests):

* the first response (status + body, errors included) is saved and replayed
  for 24h with ``Idempotent-Replayed: true``;
* nothing is saved when the request failed validation before the endpoint
  ran (our handlers mark those errors ``cacheable=False``), nor for injected
  faults, which model failures in front of the API;
* reusing a key with other parameters, or on another endpoint, is a 400
  ``idempotency_error``;
* keys are scoped to the API key;
* while the first request still runs, a second one gets 409
  ``idempotency_key_in_use`` instead of executing – an ``asyncio.Lock`` per
  key guarantees the two never both run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from .errors import ApiError

TTL_SECONDS = 24 * 3600
# The SDK puts a fresh key on *every* POST, so bound memory for long dev/bench runs
# by forgetting the oldest saved responses first (Stripe's 24h window is a floor).
MAX_SAVED = 50_000
MAX_KEY_LENGTH = 255
_REUSE_HINT = "Try using a key other than '{key}' if you meant to execute a different request."

Scope = tuple[str, str]  # (api key, idempotency key)
Fingerprint = tuple[tuple[str, str], ...]
Execute = Callable[[], Awaitable[tuple[web.Response, bool]]]


@dataclass
class Saved:
    """The first response for a key, kept verbatim for replays."""

    endpoint: str
    fingerprint: Fingerprint
    status: int
    body: bytes
    headers: dict[str, str]
    saved_at: float = field(default_factory=time.monotonic)


class IdempotencyCache:
    """Saved responses and in-flight locks, keyed by (API key, Idempotency-Key)."""

    def __init__(self) -> None:
        self._saved: dict[Scope, Saved] = {}
        self._locks: dict[Scope, asyncio.Lock] = {}

    def clear(self) -> None:
        """Forget saved responses (in-flight locks are left to finish)."""
        self._saved.clear()

    def __len__(self) -> int:
        return len(self._saved)

    async def run(self, scope: Scope, endpoint: str, fingerprint: Fingerprint, execute: Execute) -> web.Response:
        """Execute once per key, replaying or rejecting every later use."""
        key = scope[1]
        if len(key) > MAX_KEY_LENGTH:
            raise ApiError(400, f"Idempotency-Key must be at most {MAX_KEY_LENGTH} characters long.")
        lock = self._locks.setdefault(scope, asyncio.Lock())
        if lock.locked():
            raise ApiError(
                409,
                "There is currently another in-progress request using this Idempotent Key (that probably means "
                f"you submitted twice, and the other request is still going through): {key}. "
                "Please try again later.",
                type_="idempotency_error",
                code="idempotency_key_in_use",
            )
        async with lock:  # uncontended, so acquired without yielding: no race with the check above
            try:
                saved = self._lookup(scope)
                if saved is not None:
                    return self._replay(saved, key, endpoint, fingerprint)
                response, cacheable = await execute()
                if cacheable:
                    while len(self._saved) >= MAX_SAVED:
                        del self._saved[next(iter(self._saved))]
                    self._saved[scope] = Saved(
                        endpoint=endpoint,
                        fingerprint=fingerprint,
                        status=response.status,
                        body=response.body if isinstance(response.body, bytes) else b"",
                        headers={k: v for k, v in response.headers.items() if k.lower() != "content-length"},
                    )
                return response
            finally:
                self._locks.pop(scope, None)

    def _lookup(self, scope: Scope) -> Saved | None:
        saved = self._saved.get(scope)
        if saved is not None and time.monotonic() - saved.saved_at > TTL_SECONDS:
            del self._saved[scope]
            return None
        return saved

    @staticmethod
    def _replay(saved: Saved, key: str, endpoint: str, fingerprint: Fingerprint) -> web.Response:
        if saved.endpoint != endpoint:
            raise ApiError(
                400,
                "Keys for idempotent requests can only be used for the same endpoint they were first used for "
                f"('{endpoint}' vs '{saved.endpoint}'). " + _REUSE_HINT.format(key=key),
                type_="idempotency_error",
            )
        if saved.fingerprint != fingerprint:
            raise ApiError(
                400,
                "Keys for idempotent requests can only be used with the same parameters they were first used "
                "with. " + _REUSE_HINT.format(key=key),
                type_="idempotency_error",
            )
        headers = dict(saved.headers)
        headers["Original-Request"] = headers.get("Request-Id", "")
        headers["Idempotent-Replayed"] = "true"
        return web.Response(status=saved.status, body=saved.body, headers=headers)
