"""Stripe's webhook: POST /webhooks/stripe finishes a ProcessPayment that waited for the customer.

The Stripe-Signature header is verified with the endpoint secret by the SDK
(``stripe.WebhookSignature.verify_header``, which also rejects a timestamp
older than the tolerance, so a stale capture cannot be replayed); each event id
is applied once, so a replayed event has no second effect. The deferred reply
goes out through the outbox, in the same transaction as the payment's new status.

Only a verified body is read, into a small typed view (:class:`StripeEvent`)
rather than the SDK's StripeObject tree (``Webhook.construct_event``): four
fields are used, and building the tree cost 0.5 to 0.8 ms per event against
0.02 to 0.04 ms for verifying and ``json.loads``. An endpoint enabled for every
event gets three per payment, most of them acknowledged unread; enabled for the
HANDLED ones (docs/deploy.md), one.

An event is a notification, not the truth: the PaymentIntent it names is
fetched from Stripe and only Stripe's answer is acted on, in every
configuration, so a forged or stale body (even one signed with a leaked
secret) cannot confirm an unpaid order. When that fetch fails the endpoint
answers 503 before anything is recorded, so Stripe delivers the event again.

Most events change nothing: Stripe sends payment_intent.succeeded for every payment, also for those the
charge's own answer already settled. An event that claims the settled status the local record already holds,
for an intent no ProcessPayment waits on, is recorded without asking Stripe (whatever Stripe answered, there
would be nothing to apply), which saves a request to Stripe per payment. A body that claims anything else is
still checked with Stripe first.
"""

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import stripe
from aiohttp import web

from plumbing import outbox
from plumbing.envelope import Envelope
from plumbing.replies import CommandFailed
from plumbing.topology import REPLIES_EXCHANGE
from services.payment.handlers import save_payment
from services.payment.intents import outcome, plain
from services.payment.stripe_gateway import StripeGateway

log = logging.getLogger(__name__)

HANDLED = frozenset({"payment_intent.succeeded", "payment_intent.payment_failed", "payment_intent.canceled"})
TOLERANCE_SECONDS = 300
MAX_BODY = 512 * 1024
#: PaymentIntent statuses that never change again.
SETTLED = frozenset({"succeeded", "canceled"})


class IntentUnavailable(Exception):
    """Stripe could not be asked for the event's PaymentIntent: the event must be delivered again."""


class InvalidEvent(ValueError):
    """A correctly signed body that is not a Stripe event: answered 400, nothing recorded."""


@dataclass(frozen=True, slots=True)
class StripeEvent:
    """The part of a verified Stripe event this endpoint reads."""

    id: str
    """The event's id (``evt_...``): the key that makes a replay a no-op."""
    type: str
    """E.g. ``payment_intent.succeeded``; only :data:`HANDLED` types are acted on."""
    object_id: str | None
    """``data.object.id``: the PaymentIntent the event names (None when absent or not a string)."""
    object_status: str | None
    """``data.object.status`` as the body claims it: a hint, never acted on without asking Stripe."""

    @classmethod
    def parse(cls, body: str) -> "StripeEvent":
        """Read a snapshot event's JSON; :class:`InvalidEvent` names what is missing."""
        try:
            values: Any = json.loads(body)
        except ValueError as exc:
            raise InvalidEvent(f"body is not JSON: {exc}") from exc
        if not isinstance(values, dict):
            raise InvalidEvent("body is not a JSON object")
        event_id, event_type, data = values.get("id"), values.get("type"), values.get("data")
        if not isinstance(event_id, str) or not event_id:
            raise InvalidEvent("event has no id")
        if not isinstance(event_type, str) or not event_type:
            raise InvalidEvent("event has no type")
        obj = data.get("object") if isinstance(data, dict) else None
        if not isinstance(obj, dict):
            raise InvalidEvent("event has no data.object")  # also a v2 thin event, as the SDK refuses it
        object_id, status = obj.get("id"), obj.get("status")
        return cls(
            id=event_id,
            type=event_type,
            object_id=object_id if isinstance(object_id, str) else None,
            object_status=status if isinstance(status, str) else None,
        )


def webhook_route(
    app: web.Application,
    *,
    pool: Callable[[], asyncpg.Pool],
    gateway: StripeGateway,
    secret: str,
    on_committed: Callable[[], None],
) -> None:
    async def receive(request: web.Request) -> web.Response:
        payload = await request.read()
        signature = request.headers.get("Stripe-Signature")
        if not signature:
            return web.json_response({"error": "missing Stripe-Signature"}, status=400)
        if len(payload) > MAX_BODY:
            return web.json_response({"error": "payload too large"}, status=413)
        try:
            body = payload.decode()
            stripe.WebhookSignature.verify_header(body, signature, secret, TOLERANCE_SECONDS)
            event = StripeEvent.parse(body)
        except stripe.SignatureVerificationError as exc:
            log.warning("webhook rejected", extra={"fields": {"reason": str(exc)[:200]}})
            return web.json_response({"error": "invalid signature"}, status=400)
        except ValueError as exc:  # not UTF-8, not JSON, or not an event (InvalidEvent)
            log.warning("webhook payload refused", extra={"fields": {"reason": str(exc)[:200]}})
            return web.json_response({"error": "invalid payload"}, status=400)
        if await settled_already(pool(), event):
            return web.json_response({"received": True, "applied": False})
        try:
            intent = await current_intent(gateway, event)
        except IntentUnavailable as exc:
            # Not a 2xx: Stripe retries the event (for up to 3 days); nothing was recorded, so the retry applies.
            log.warning("webhook deferred", extra={"fields": {"event": event.id, "reason": str(exc)[:200]}})
            return web.json_response({"error": "PaymentIntent could not be fetched from Stripe"}, status=503)
        applied = await apply_event(pool(), event, intent) if intent is not None else False
        if applied:
            on_committed()
        return web.json_response({"received": True, "applied": applied})

    app.router.add_post("/webhooks/stripe", receive)


async def settled_already(pool: asyncpg.Pool, event: StripeEvent) -> bool:
    """Record ``event`` and say True when it can change nothing: it claims the settled status the local record
    of its intent holds, and no ProcessPayment waits on that intent. One statement, no request to Stripe."""
    intent_id, status = event.object_id, event.object_status
    if event.type not in HANDLED or intent_id is None or status not in SETTLED:
        return False
    async with pool.acquire() as conn:
        return bool(
            await conn.fetchval(
                """WITH known AS (
                       SELECT 1 FROM payment p
                       WHERE p.payment_intent_id = $1 AND p.status = $2
                         AND NOT EXISTS (SELECT 1 FROM pending_reply r WHERE r.order_id = p.order_id)),
                   recorded AS (
                       INSERT INTO webhook_event (event_id, type) SELECT $3, $4 FROM known
                       ON CONFLICT DO NOTHING)
                   SELECT EXISTS (SELECT 1 FROM known)""",
                intent_id,
                status,
                event.id,
                event.type,
            )
        )


async def current_intent(gateway: StripeGateway, event: StripeEvent) -> dict | None:
    """The PaymentIntent a handled event names, as Stripe holds it now; None for an event not handled here or
    for an intent Stripe does not know (nothing to apply, and asking again will not change that)."""
    if event.type not in HANDLED:
        return None
    intent_id = event.object_id
    if intent_id is None or not intent_id.startswith("pi_"):
        log.warning("webhook names no PaymentIntent", extra={"fields": {"event": event.id}})
        return None
    try:
        intent = plain(await gateway.retrieve(intent_id))
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 404:
            log.warning("webhook names an unknown PaymentIntent", extra={"fields": {"event": event.id}})
            return None
        raise IntentUnavailable(f"{type(exc).__name__}: {exc.user_message or exc}") from exc
    except stripe.StripeError as exc:  # unreachable, 5xx, rate-limited, refused key: try again later
        raise IntentUnavailable(f"{type(exc).__name__}: {exc.user_message or exc}") from exc
    if intent.get("id") != intent_id:
        raise IntentUnavailable(f"Stripe answered intent {intent.get('id')!r} for {intent_id!r}")
    if event.object_status != intent.get("status"):
        # Normal when events arrive late or out of order; a forged body shows up here too.
        log.info(
            "webhook body differs from Stripe",
            extra={"fields": {"event": event.id, "claimed": event.object_status, "status": intent.get("status")}},
        )
    return intent


async def apply_event(pool: asyncpg.Pool, event: StripeEvent, intent: dict) -> bool:
    """Apply one verified event once, with ``intent`` as Stripe returned it (never the event's copy); True when
    it answered a waiting ProcessPayment."""
    async with pool.acquire() as conn, conn.transaction():
        fresh = await conn.fetchval(
            "INSERT INTO webhook_event (event_id, type) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING 1",
            event.id,
            event.type,
        )
        if not fresh:
            return False  # a replay: applied before
        order_id = await conn.fetchval("SELECT order_id FROM payment WHERE payment_intent_id = $1", intent["id"])
        if order_id is None:
            return False
        await save_payment(conn, order_id, intent)
        pending = await conn.fetchrow(
            "DELETE FROM pending_reply WHERE order_id = $1 AND payment_intent_id = $2 RETURNING *",
            order_id,
            intent["id"],
        )
        if pending is None:
            return False
        result = outcome(intent)
        if result.waiting:
            await conn.execute(
                "INSERT INTO pending_reply SELECT $1, $2, $3, $4, $5",
                order_id,
                intent["id"],
                pending["command_id"],
                pending["reply_to"],
                pending["attempt"],
            )
            return False
        reply = result.reply or CommandFailed(Error=result.error.error_name, Cause=result.error.cause)  # type: ignore[union-attr]
        envelope = Envelope(
            type=type(reply).__name__,
            correlationId=order_id,
            causationId=pending["command_id"],
            attempt=pending["attempt"],
        )
        await outbox.enqueue(
            conn, exchange=REPLIES_EXCHANGE, routing_key=pending["reply_to"], envelope=envelope, payload=reply
        )
    log.info("webhook answered payment", extra={"fields": {"event": event.type, "orderId": order_id}})
    return True
