"""Stripe-shaped API errors.

The stripe SDK picks its exception class from the HTTP status and reads
``type``/``code``/``decline_code``/``param``/``message`` from the JSON body, so
every error we return goes through :class:`ApiError` to keep that shape
identical to api.stripe.com.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

DOCS = "https://stripe.com/docs/error-codes/"


class ApiError(Exception):
    """An error response in Stripe's ``{"error": {...}}`` format.

    ``cacheable`` mirrors Stripe's idempotency rule: results are saved only
    once an endpoint has started executing, so parameter-validation failures
    are *not* replayed, while business outcomes (declines, refund limits) are.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        cacheable: bool = False,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.cacheable = cacheable
        self.headers = headers or {}
        body: dict[str, Any] = {"message": message, "type": type_}
        if code:
            body["code"] = code
            body["doc_url"] = DOCS + code.replace("_", "-")
        if param:
            body["param"] = param
        body.update({k: v for k, v in extra.items() if v is not None})
        self.error = body

    def body(self) -> dict[str, Any]:
        """The full JSON document Stripe would send."""
        return {"error": self.error}

    def to_response(self) -> web.Response:
        """Render as an aiohttp response."""
        return web.Response(
            status=self.status,
            text=json.dumps(self.body(), indent=2),
            content_type="application/json",
            headers=self.headers,
        )


def invalid(message: str, *, param: str | None = None, code: str | None = None, cacheable: bool = False) -> ApiError:
    """400 invalid_request_error (validation errors are not cached by default)."""
    return ApiError(400, message, param=param, code=code, cacheable=cacheable)


def missing_param(param: str) -> ApiError:
    """Stripe's ``parameter_missing`` error."""
    return invalid(f"Missing required param: {param}.", param=param, code="parameter_missing")


def no_such(kind: str, obj_id: str, *, param: str, status: int = 400) -> ApiError:
    """``resource_missing``: 404 for the URL's object, 400 for a referenced one."""
    return ApiError(status, f"No such {kind}: '{obj_id}'", code="resource_missing", param=param)


def unexpected_state(message: str) -> ApiError:
    """``payment_intent_unexpected_state``; the endpoint ran, so it is cached."""
    return invalid(message, code="payment_intent_unexpected_state", cacheable=True)
