"""The handlers of /api/v1/sagas: list, detail, redrive one, redrive by filter, refund. orchestrator/api_routes.py
maps them to paths; what they read and write is in saga_queries, saga_detail, api_actions and api_refund.

Input is validated by the request models (orchestrator/api_models.py) and refused as a 400 problem naming each
bad parameter; answers are the response models as JSON.
"""

import json
import re
from collections.abc import Callable
from typing import Any, TypeVar, get_origin

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ValidationError

from orchestrator import api_actions, api_refund, refund_policy, saga_queries
from orchestrator.api_auth import actor
from orchestrator.api_models import (
    IDEMPOTENCY_KEY_PATTERN,
    BulkRedriveRequest,
    BulkRedriveResult,
    ListQuery,
    RedriveRequest,
    RedriveResult,
    RefundRequest,
    RefundResult,
    SagaFilter,
)
from orchestrator.problems import problem
from orchestrator.runner import Runner
from orchestrator.saga_detail import detail
from orchestrator.status import saga_view
from plumbing.envelope import new_id

#: What the handlers use of the process: its pool (None until the database is connected), its Runner, and
#: a way to wake its outbox relay once a redrive wrote commands.
GET_POOL = web.AppKey("get_pool", Callable[[], asyncpg.Pool | None])
RUNNER = web.AppKey("runner", Runner)
NUDGE = web.AppKey("nudge", Callable[[], None])
#: Filter parameters that take several values (repeat the parameter: ?status=RUNNING&status=FAILED_CRITICAL).
M = TypeVar("M", bound=BaseModel)
LIST_PARAMS = frozenset(name for name, f in SagaFilter.model_fields.items() if get_origin(f.annotation) is list)


class BadRequest(Exception):
    """Input the request models refuse; ``errors`` name each parameter or field and what is wrong with it."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['name']}: {e['reason']}" for e in errors))
        self.errors = errors


def _pool(request: web.Request) -> asyncpg.Pool:
    pool = request.app[GET_POOL]()
    if pool is None:  # the port opens before the database connects
        raise web.HTTPServiceUnavailable(text="the orchestrator is starting", headers={"Retry-After": "2"})
    return pool


def _validated(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(
            [{"name": ".".join(str(x) for x in e["loc"]) or "body", "reason": e["msg"]} for e in exc.errors()]
        ) from None


async def _body(request: web.Request, model: type[M]) -> M:
    raw = await request.read()
    if not raw.strip():
        return _validated(model, {})
    try:
        return _validated(model, json.loads(raw))
    except json.JSONDecodeError as exc:
        raise BadRequest([{"name": "body", "reason": f"not valid JSON: {exc.msg}"}]) from None


def query_of(request: web.Request) -> ListQuery:
    query = request.rel_url.query
    data = {name: query.getall(name) if name in LIST_PARAMS else query.get(name) for name in query}
    return _validated(ListQuery, data)


def answer(model: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(model.model_dump(mode="json"), status=status)


def audit_actor(request: web.Request) -> dict[str, Any]:
    """Who and from where, for an audit entry: the token, its role, the peer and X-Forwarded-For."""
    who = actor(request)
    return {
        "tokenId": who["tokenId"],
        "token": who["token"],
        "role": who["role"],
        "subject": who["subject"],
        "address": who["from"],
        "forwardedFor": request.headers.get("X-Forwarded-For"),
    }


@web.middleware
async def bad_request_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as exc:
        return problem(400, str(exc), errors=exc.errors)
    except saga_queries.BadCursor as exc:
        return problem(400, str(exc), errors=[{"name": "cursor", "reason": str(exc)}])


async def list_sagas(request: web.Request) -> web.Response:
    query = query_of(request)
    async with _pool(request).acquire() as conn:
        return answer(await saga_queries.listing(conn, query))


async def get_saga(request: web.Request) -> web.Response:
    order_id = request.match_info["orderId"]
    async with _pool(request).acquire() as conn:
        row = await saga_queries.saga_row(conn, order_id)
        if row is None:
            return problem(404, f"no saga for order {order_id!r}", orderId=order_id)
        history = await saga_queries.history(conn, order_id)
    return answer(detail(row, history))


async def redrive_saga(request: web.Request) -> web.Response:
    order_id = request.match_info["orderId"]
    body = await _body(request, RedriveRequest)
    who = audit_actor(request)
    async with _pool(request).acquire() as conn:
        try:
            result = await api_actions.redrive(conn, request.app[RUNNER], order_id, actor=who, reason=body.reason)
        except api_actions.NoSuchSaga:
            return problem(404, f"no saga for order {order_id!r}", orderId=order_id)
        except api_actions.NotRedrivable as exc:
            return problem(409, str(exc), orderId=order_id, sagaStatus=exc.status)
    request.app[NUDGE]()
    return answer(RedriveResult.model_validate(result))


def request_key(request: web.Request) -> str:
    """The client's Idempotency-Key header (a retry with it refunds once), or a new key for this request."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return new_id()
    if not re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key):
        raise BadRequest([{"name": "Idempotency-Key", "reason": "1 to 100 printable ASCII characters without spaces"}])
    return key


async def refund_saga(request: web.Request) -> web.Response:
    order_id = request.match_info["orderId"]
    body = await _body(request, RefundRequest)
    key = request_key(request)
    async with _pool(request).acquire() as conn:
        try:
            result = await api_refund.refund(
                conn, order_id, amount=body.amount, reason=body.reason, request_key=key, actor=audit_actor(request)
            )
        except api_actions.NoSuchSaga:
            return problem(404, f"no saga for order {order_id!r}", orderId=order_id)
        except refund_policy.NotRefundable as exc:
            return problem(409, str(exc), orderId=order_id, sagaStatus=exc.status, error=exc.error)
        except refund_policy.RefundTooLarge as exc:
            return problem(
                422,
                str(exc),
                orderId=order_id,
                error=refund_policy.REFUND_EXCEEDS_CHARGE,
                remaining=float(exc.remaining),
            )
        except api_refund.KeyReused as exc:
            return problem(422, str(exc), orderId=order_id, requestKey=key)
    if not result["replayed"]:
        request.app[NUDGE]()
    return answer(RefundResult.model_validate(result), status=200 if result["replayed"] else 202)


async def bulk_redrive(request: web.Request) -> web.Response:
    body = await _body(request, BulkRedriveRequest)
    result = await api_actions.bulk_redrive(
        _pool(request), request.app[RUNNER], body, actor=audit_actor(request), on_written=request.app[NUDGE]
    )
    return answer(BulkRedriveResult.model_validate(result))


async def get_order(request: web.Request) -> web.Response:
    """The first route (issue 15): the saga as ``orderctl status --json`` prints it in direct mode."""
    order_id = request.match_info["order_id"]
    async with _pool(request).acquire() as conn:
        view = await saga_view(conn, order_id)
    if view is None:
        return problem(404, f"no saga for order {order_id!r}", orderId=order_id)
    return web.json_response(view)
