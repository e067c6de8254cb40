"""Errors of the orchestrator's API as RFC 9457 problem details (``application/problem+json``).

Every error the API answers, its own and aiohttp's (404, 405, 413), has this shape, so a client reads one
format. ``type`` stays ``about:blank`` (the title is then the HTTP status phrase); ``detail`` says what to do.
"""

import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger(__name__)


def problem(
    status: int, detail: str | None = None, *, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    """A problem details response; ``extra`` adds extension members (e.g. ``requiredRole``)."""
    body: dict[str, Any] = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return web.json_response(body, status=status, content_type=PROBLEM_JSON, headers=headers)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own HTTP errors (an unknown path, a method not allowed) and crashes as problem details."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate", "retry-after")}
        return problem(exc.status, exc.text if exc.text != f"{exc.status}: {exc.reason}" else None, headers=headers)
    except Exception:
        log.exception("API request failed", extra={"fields": {"path": request.path}})
        return problem(500, "the orchestrator failed to answer; see its log")
