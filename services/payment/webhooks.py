"""Stripe's webhook: POST /webhooks/stripe finishes a ProcessPayment that waited for the customer.

The Stripe-Signature header is verified with the endpoint secret by the SDK
(which also rejects a timestamp older than the tolerance, so a stale capture
cannot be replayed); each event id is applied once, so a replayed event has
no second effect. The deferred reply goes out through the outbox, in the same
transaction as the payment's new status.
"""

import logging
from collections.abc import Callable

import asyncpg
import stripe
from aiohttp import web

from plumbing import outbox
from plumbing.envelope import Envelope
from plumbing.replies import CommandFailed
from plumbing.topology import REPLIES_EXCHANGE
from services.payment.handlers import save_payment
from services.payment.intents import outcome

log = logging.getLogger(__name__)

HANDLED = frozenset({"payment_intent.succeeded", "payment_intent.payment_failed", "payment_intent.canceled"})
TOLERANCE_SECONDS = 300
MAX_BODY = 512 * 1024


def webhook_route(
    app: web.Application, *, pool: Callable[[], asyncpg.Pool], secret: str, on_committed: Callable[[], None]
) -> None:
    async def receive(request: web.Request) -> web.Response:
        payload = await request.read()
        signature = request.headers.get("Stripe-Signature")
        if not signature:
            return web.json_response({"error": "missing Stripe-Signature"}, status=400)
        if len(payload) > MAX_BODY:
            return web.json_response({"error": "payload too large"}, status=413)
        try:
            event = stripe.Webhook.construct_event(payload.decode(), signature, secret, tolerance=TOLERANCE_SECONDS)
        except stripe.SignatureVerificationError as exc:
            log.warning("webhook rejected", extra={"fields": {"reason": str(exc)[:200]}})
            return web.json_response({"error": "invalid signature"}, status=400)
        except ValueError:
            return web.json_response({"error": "invalid payload"}, status=400)
        applied = await apply_event(pool(), event)
        if applied:
            on_committed()
        return web.json_response({"received": True, "applied": applied})

    app.router.add_post("/webhooks/stripe", receive)


async def apply_event(pool: asyncpg.Pool, event: stripe.Event) -> bool:
    """Apply one verified event once; True when it answered a waiting ProcessPayment."""
    if event.type not in HANDLED:
        return False
    intent = event.data.object
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
