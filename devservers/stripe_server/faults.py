"""Injected failures, so tests can prove how clients handle Stripe outages.

A fault models trouble *in front of* the API (load balancer 503, rate
limiter 429): it fires before idempotency handling and is never saved under
an Idempotency-Key, so a retry with the same key executes normally – the
behaviour clients rely on.  A ``delay_ms``-only fault instead slows down the
endpoint while it holds the idempotency lock, which is how tests provoke the
409 "request in progress" answer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ApiError, invalid
from .forms import to_bool, to_int
from .store import new_id

SERVER_ERROR = (
    "Sorry, something went wrong. We've already been notified of the problem, but if you need any help, "
    "you can reach us at support.stripe.com/contact."
)
RATE_LIMIT = "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits."


@dataclass
class Fault:
    """Fail (or slow down) the next ``count`` matching requests."""

    status: int | None
    count: int = 1
    path_prefix: str = "/v1/"
    method: str | None = None
    delay_ms: int = 0
    code: str | None = None
    message: str | None = None
    should_retry: bool | None = None
    id: str = field(default_factory=lambda: new_id("fault", 12))

    def matches(self, method: str, path: str) -> bool:
        """Whether this fault applies to the request."""
        return path.startswith(self.path_prefix) and (self.method is None or self.method == method.upper())

    def error(self) -> ApiError:
        """The Stripe-shaped error response this fault produces."""
        assert self.status is not None
        headers = {} if self.should_retry is None else {"Stripe-Should-Retry": str(self.should_retry).lower()}
        if self.status == 429:
            return ApiError(429, self.message or RATE_LIMIT, code=self.code or "rate_limit", headers=headers)
        if self.status >= 500:
            return ApiError(
                self.status,
                self.message or SERVER_ERROR,
                type_="api_error",
                code=self.code,
                headers=headers,
            )
        return ApiError(self.status, self.message or "Injected failure.", code=self.code, headers=headers)


class FaultInjector:
    """Queue of pending faults, consumed in the order they were added."""

    def __init__(self) -> None:
        self.pending: list[Fault] = []

    def add(self, spec: dict[str, Any]) -> Fault:
        """Validate a ``POST /_test/faults`` body and queue it."""
        status = to_int(spec, "status")
        delay_ms = to_int(spec, "delay_ms") or 0
        if status is None and not delay_ms:
            raise invalid("Provide status (400-599) and/or delay_ms.", param="status")
        if status is not None and not 400 <= status <= 599:
            raise invalid("status must be between 400 and 599.", param="status")
        should_retry = to_bool(spec, "should_retry") if spec.get("should_retry") not in (None, "") else None
        fault = Fault(
            status=status,
            count=to_int(spec, "count", positive=True) or 1,
            path_prefix=str(spec.get("path_prefix") or "/v1/"),
            method=str(spec["method"]).upper() if spec.get("method") else None,
            delay_ms=delay_ms,
            code=spec.get("code") or None,
            message=spec.get("message") or None,
            should_retry=should_retry,
        )
        self.pending.append(fault)
        return fault

    def take(self, method: str, path: str) -> Fault | None:
        """Consume one use of the first fault matching this request."""
        for fault in self.pending:
            if fault.matches(method, path):
                fault.count -= 1
                if fault.count <= 0:
                    self.pending.remove(fault)
                return fault
        return None

    def clear(self) -> None:
        """Drop all pending faults."""
        self.pending.clear()

    def as_json(self) -> list[dict[str, Any]]:
        """Pending faults for inspection."""
        return [asdict(f) for f in self.pending]
