"""aiohttp application: routing, auth, faults, idempotency, logging.

One middleware wraps every ``/v1`` call in the same order Stripe's edge does:
authenticate the secret key, apply injected faults, decode the form body,
then run the endpoint under the Idempotency-Key lock.  ``/_test`` routes are
simulator controls, unauthenticated and never idempotent.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from .errors import ApiError
from .faults import FaultInjector
from .forms import decode, parse_pairs
from .idempotency import IdempotencyCache
from .intents import PaymentIntents
from .listing import created_matches, list_page, newest_first
from .refunds import create_refund
from .search import PAYMENT_INTENT_FIELDS, search_page
from .store import REQUEST_CONTEXT, Store, new_id
from .webhooks import DEFAULT_RETRY_DELAYS, WebhookDispatcher

log = logging.getLogger("devservers.stripe_server")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FALLBACK_API_VERSION = "2026-10-28.endive"
NO_KEY = (
    "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer "
    "auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for "
    "details, or we can help at https://support.stripe.com/."
)
# URL collection -> (id prefix, param named in Stripe's 404 for that object)
RETRIEVABLE = {
    "payment_intents": ("pi", "intent"),
    "charges": ("ch", "charge"),
    "refunds": ("re", "id"),
    "payment_methods": ("pm", "payment_method"),
    "events": ("evt", "id"),
}


def default_api_version() -> str:
    """The version the installed SDK pins, so events look like production's."""
    try:
        import stripe

        return str(stripe.api_version)
    except Exception:  # pragma: no cover - SDK absent
        return FALLBACK_API_VERSION


@dataclass
class SimState:
    """Everything one simulator instance owns."""

    store: Store
    intents: PaymentIntents
    idempotency: IdempotencyCache
    faults: FaultInjector
    webhooks: WebhookDispatcher
    api_version: str


STATE = web.AppKey("stripe_sim_state", SimState)
PARAMS = web.RequestKey("stripe_sim_params", dict[str, Any])  # decoded form/query params
API_VERSION = web.RequestKey("stripe_sim_api_version", str)
#: Compact, so the C encoder runs: ``indent=2`` (how api.stripe.com prints) takes Python's own encoder,
#: about three times the CPU; clients parse JSON, and none reads the layout.
_dumps = json.dumps


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.json_response(obj, status=status, dumps=_dumps)


# ---------------------------------------------------------------- middleware
def _api_key(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    key = ""
    if header.startswith("Bearer "):
        key = header[len("Bearer ") :].strip()
    elif header.startswith("Basic "):  # curl -u sk_test_...:
        try:
            key = base64.b64decode(header[len("Basic ") :]).decode().split(":", 1)[0]
        except ValueError:
            key = ""
    challenge = {"WWW-Authenticate": 'Bearer realm="Stripe"'}
    if not key:
        raise ApiError(401, NO_KEY, headers=challenge)
    if not key.startswith("sk_test_"):
        masked = key[:8] + "*" * max(len(key) - 12, 0) + key[-4:]
        raise ApiError(401, f"Invalid API Key provided: {masked}", headers=challenge)
    return key


def _unrecognized(request: web.Request) -> ApiError:
    return ApiError(
        404,
        f"Unrecognized request URL ({request.method}: {request.path}). Please see https://stripe.com/docs or we "
        "can help at https://support.stripe.com/.",
    )


async def _api_call(request: web.Request, handler: Handler, req_id: str, idem_key: str | None) -> web.StreamResponse:
    state = request.app[STATE]
    api_key = _api_key(request)
    fault = state.faults.take(request.method, request.path)
    if fault is not None and fault.status is not None:
        if fault.delay_ms:
            await asyncio.sleep(fault.delay_ms / 1000)
        raise fault.error()
    body = await request.text() if request.method == "POST" else request.query_string
    pairs = parse_pairs(body)
    request[PARAMS] = decode(pairs)
    version = request.headers.get("Stripe-Version") or state.api_version
    request[API_VERSION] = version

    async def execute() -> tuple[web.Response, bool]:
        if fault is not None and fault.delay_ms:
            await asyncio.sleep(fault.delay_ms / 1000)
        cacheable = True
        try:
            response = await handler(request)
            assert isinstance(response, web.Response)
        except ApiError as exc:
            response, cacheable = exc.to_response(), exc.cacheable
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
            response, cacheable = _unrecognized(request).to_response(), False
        response.headers["Request-Id"] = req_id
        response.headers["Stripe-Version"] = version
        if idem_key:
            response.headers["Idempotency-Key"] = idem_key
        return response, cacheable

    if request.method == "POST" and idem_key:
        return await state.idempotency.run((api_key, idem_key), request.path, tuple(sorted(pairs)), execute)
    return (await execute())[0]


@web.middleware
async def stripe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Auth, faults, idempotency and one log line per request."""
    started = time.monotonic()
    req_id = new_id("req", 14)
    idem_key = request.headers.get("Idempotency-Key") if request.method == "POST" else None
    token = REQUEST_CONTEXT.set({"id": req_id, "idempotency_key": idem_key})
    try:
        if request.path.startswith("/v1/"):
            response = await _api_call(request, handler, req_id, idem_key)
        else:
            response = await handler(request)
    except ApiError as exc:
        response = exc.to_response()
    except web.HTTPException as exc:  # unknown /_test route etc.: still JSON, still logged
        response = _json({"error": {"message": exc.reason, "type": "invalid_request_error"}}, exc.status)
    finally:
        REQUEST_CONTEXT.reset(token)
    response.headers["Request-Id"] = req_id
    log.info(
        "%s %s -> %d %.1fms%s%s",
        request.method,
        request.path_qs,
        response.status,
        (time.monotonic() - started) * 1000,
        f" idempotency_key={idem_key}" if idem_key else "",
        " (replayed)" if response.headers.get("Idempotent-Replayed") else "",
    )
    return response


# ---------------------------------------------------------------- /v1 handlers
def _expand(request: web.Request) -> list[str]:
    raw = request[PARAMS].get("expand") or []
    return [str(x) for x in (raw if isinstance(raw, list) else [raw])]


async def create_payment_intent(request: web.Request) -> web.Response:
    """POST /v1/payment_intents"""
    state = request.app[STATE]
    pi = state.intents.create(request[PARAMS], request[API_VERSION])
    return _json(state.store.view(pi, _expand(request)))


async def payment_intent_action(request: web.Request) -> web.Response:
    """POST /v1/payment_intents/{id}/{confirm|cancel|capture}"""
    state = request.app[STATE]
    action = getattr(state.intents, request.match_info["action"])
    pi = action(request.match_info["id"], request[PARAMS])
    return _json(state.store.view(pi, _expand(request)))


async def post_refund(request: web.Request) -> web.Response:
    """POST /v1/refunds"""
    state = request.app[STATE]
    refund = create_refund(state.store, request[PARAMS])
    return _json(state.store.view(refund, _expand(request)))


async def list_payment_intents(request: web.Request) -> web.Response:
    """GET /v1/payment_intents, optionally of one ``customer``."""
    store, params = request.app[STATE].store, request[PARAMS]
    customer = params.get("customer")
    found = [
        pi
        for pi in newest_first(store.payment_intents.values())
        if created_matches(pi, params) and (not customer or pi.get("customer") == customer)
    ]
    return _json(list_page(store, found, params, url="/v1/payment_intents", noun="payment_intent"))


async def search_payment_intents(request: web.Request) -> web.Response:
    """GET /v1/payment_intents/search?query=metadata['orderId']:'ORDER#1'"""
    store = request.app[STATE].store
    found = newest_first(store.payment_intents.values())
    page = search_page(store, found, request[PARAMS], url="/v1/payment_intents/search", fields=PAYMENT_INTENT_FIELDS)
    return _json(page)


async def list_refunds(request: web.Request) -> web.Response:
    """GET /v1/refunds, optionally of one ``payment_intent`` or ``charge``."""
    store, params = request.app[STATE].store, request[PARAMS]
    if params.get("payment_intent"):
        store.get("pi", str(params["payment_intent"]), param="payment_intent")
    if params.get("charge"):
        store.get("ch", str(params["charge"]), param="charge")
    found = [
        r
        for r in newest_first(store.refunds.values())
        if created_matches(r, params)
        and all(not params.get(key) or r[key] == params[key] for key in ("payment_intent", "charge"))
    ]
    return _json(list_page(store, found, params, url="/v1/refunds", noun="refund"))


async def retrieve(request: web.Request) -> web.Response:
    """GET /v1/{payment_intents|charges|refunds|payment_methods|events}/{id}"""
    kind = RETRIEVABLE.get(request.match_info["collection"])
    if kind is None:
        raise _unrecognized(request)
    store = request.app[STATE].store
    obj = store.get(kind[0], request.match_info["id"], param=kind[1], status=404)
    return _json(store.view(obj, _expand(request)))


# ---------------------------------------------------------------- /_test handlers
async def _test_params(request: web.Request) -> dict[str, Any]:
    if request.content_type == "application/json":
        data = await request.json()
        return data if isinstance(data, dict) else {}
    return decode(parse_pairs(await request.text()))


async def test_state(request: web.Request) -> web.Response:
    """GET /_test/state: objects, counts, events and webhook deliveries."""
    state = request.app[STATE]
    snapshot = state.store.snapshot()
    snapshot["webhook_deliveries"] = state.webhooks.deliveries_json()
    snapshot["counts"]["idempotency_keys"] = len(state.idempotency)
    snapshot["faults"] = state.faults.as_json()
    return _json(snapshot)


async def test_reset(request: web.Request) -> web.Response:
    """POST /_test/reset: drop objects, saved idempotent responses and faults."""
    state = request.app[STATE]
    state.store.reset()
    state.idempotency.clear()
    state.faults.clear()
    state.webhooks.deliveries.clear()
    return _json({"reset": True})


async def test_authenticate(request: web.Request) -> web.Response:
    """POST /_test/payment_intents/{id}/authenticate with outcome=succeed|fail."""
    state = request.app[STATE]
    params = await _test_params(request)
    pi = state.intents.authenticate(request.match_info["id"], str(params.get("outcome") or "succeed"))
    return _json(state.store.view(pi))


def _endpoint_json(state: SimState) -> list[dict[str, Any]]:
    return [asdict(e) for e in state.webhooks.endpoints]


async def test_webhook_endpoints(request: web.Request) -> web.Response:
    """GET/POST/DELETE /_test/webhook_endpoints[/{id}]."""
    state = request.app[STATE]
    if request.method == "POST":
        params = await _test_params(request)
        if not params.get("url"):
            raise ApiError(400, "Missing required param: url.", param="url", code="parameter_missing")
        events = params.get("enabled_events")
        endpoint = state.webhooks.add_endpoint(
            str(params["url"]),
            params.get("secret"),
            [str(e) for e in events] if isinstance(events, list) else None,
        )
        return _json(asdict(endpoint))
    if request.method == "DELETE":
        return _json({"deleted": state.webhooks.remove_endpoint(request.match_info.get("id"))})
    return _json({"data": _endpoint_json(state)})


async def test_faults(request: web.Request) -> web.Response:
    """GET/POST/DELETE /_test/faults."""
    faults = request.app[STATE].faults
    if request.method == "POST":
        fault = faults.add(await _test_params(request))
        return _json(asdict(fault))
    if request.method == "DELETE":
        faults.clear()
    return _json({"data": faults.as_json()})


# ---------------------------------------------------------------- factory
def make_app(
    *,
    webhook_endpoints: Iterable[tuple[str, str | None]] = (),
    webhook_events: list[str] | None = None,
    webhook_retry_delays: Iterable[float] = DEFAULT_RETRY_DELAYS,
    api_version: str | None = None,
) -> web.Application:
    """Build a fresh simulator; ``webhook_endpoints`` are ``(url, secret)`` pairs, subscribed to
    ``webhook_events`` (every event when None), as a Stripe webhook endpoint's ``enabled_events``."""
    webhooks = WebhookDispatcher(retry_delays=tuple(webhook_retry_delays))
    for url, secret in webhook_endpoints:
        webhooks.add_endpoint(url, secret, webhook_events)
    version = api_version or default_api_version()
    store = Store(version, on_event=webhooks.enqueue)
    app = web.Application(middlewares=[stripe_middleware])
    app[STATE] = SimState(store, PaymentIntents(store), IdempotencyCache(), FaultInjector(), webhooks, version)

    async def close_webhooks(_: web.Application) -> None:
        await webhooks.close()

    app.on_cleanup.append(close_webhooks)
    r = app.router
    r.add_post("/v1/payment_intents", create_payment_intent)
    r.add_post(r"/v1/payment_intents/{id}/{action:confirm|cancel|capture}", payment_intent_action)
    r.add_post("/v1/refunds", post_refund)
    r.add_get("/v1/payment_intents", list_payment_intents)
    r.add_get("/v1/payment_intents/search", search_payment_intents)  # before /v1/{collection}/{id}
    r.add_get("/v1/refunds", list_refunds)
    r.add_get("/v1/{collection}/{id}", retrieve)
    r.add_get("/_test/state", test_state)
    r.add_post("/_test/reset", test_reset)
    r.add_post("/_test/payment_intents/{id}/authenticate", test_authenticate)
    for path in ("/_test/webhook_endpoints", "/_test/webhook_endpoints/{id}"):
        r.add_route("*", path, test_webhook_endpoints)
    r.add_route("*", "/_test/faults", test_faults)
    return app
