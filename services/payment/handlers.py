"""Payment's command handlers.

Money moves only at ``confirm``, and only once the PaymentIntent's id is in hand: ProcessPayment creates the
intent unconfirmed under the step's idempotency key (a create whose answer was lost is found again by asking
with that key), then confirms it. When the confirmation's answer is lost, the intent's id is committed with
the failure reply instead of being rolled back with it, so the compensation knows what to refund. A
compensation that finds no local record asks the provider for every intent of the order (by metadata)
before it concludes that nothing was charged, and always leaves a tombstone that a late ProcessPayment reads.
"""

import logging
from dataclasses import dataclass
from typing import Any

import asyncpg
import stripe

from contracts.payment import PaymentProcessed, PaymentRefunded, ProcessPayment, RefundPayment
from plumbing.commands import fail
from plumbing.consumer import MessageContext
from plumbing.errors import Compensated
from services.payment import errors
from services.payment.intents import CANCELABLE, outcome, plain
from services.payment.money import from_minor, to_minor
from services.payment.stripe_gateway import StripeGateway

log = logging.getLogger(__name__)


async def lock_order(conn: asyncpg.Connection, order_id: str) -> None:
    """Serialize one order's payment commands: a refund never races the charge it compensates."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 1))", order_id)


async def save_payment(conn: asyncpg.Connection, order_id: str, intent: Any) -> None:
    await conn.execute(
        """INSERT INTO payment (order_id, payment_intent_id, amount_minor, currency, status)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, updated_at = now()""",
        order_id,
        intent["id"],
        intent["amount"],
        intent["currency"],
        intent["status"],
    )


async def is_compensated(conn: asyncpg.Connection, order_id: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM payment_void WHERE order_id = $1", order_id))


@dataclass
class PaymentHandlers:
    gateway: StripeGateway

    async def process_payment(self, ctx: MessageContext, command: ProcessPayment) -> PaymentProcessed | None:
        """Charge once per order; None when the intent waits for the customer (the webhook answers)."""
        await lock_order(ctx.conn, command.orderId)
        if await is_compensated(ctx.conn, command.orderId):
            raise Compensated("the order was compensated before this payment ran; not charging")
        row = await ctx.conn.fetchrow(
            "SELECT payment_intent_id, status, amount_minor, currency FROM payment WHERE order_id = $1",
            command.orderId,
        )
        if row is not None and row["status"] == "succeeded":
            return PaymentProcessed(
                paymentIntentId=row["payment_intent_id"],
                status="succeeded",
                amount=from_minor(row["amount_minor"], row["currency"]),
            )
        try:
            if row is None:
                intent = await self.gateway.create_intent(
                    order_id=command.orderId,
                    amount=command.amount,
                    currency=command.currency,
                    payment_method=command.paymentMethodId,
                    idempotency_key=command.idempotencyKey,
                )
            else:
                # A retry: ask for the intent's status today rather than replay an earlier answer.
                intent = await self.gateway.retrieve(row["payment_intent_id"])
        except stripe.StripeError as exc:
            raise errors.from_stripe(exc) from exc  # no intent known yet: nothing can have been charged
        await save_payment(ctx.conn, command.orderId, intent)
        if intent["status"] == "requires_confirmation":
            try:
                intent = await self.gateway.confirm(intent["id"], idempotency_key=f"{command.idempotencyKey}-confirm")
            except stripe.StripeError as exc:
                declined = getattr(getattr(exc, "error", None), "payment_intent", None)
                if declined is not None:
                    await save_payment(ctx.conn, command.orderId, plain(declined))
                # No rollback: the intent's record must survive (a lost confirmation may have moved money).
                await fail(ctx, error=errors.from_stripe(exc))
                return None
            await save_payment(ctx.conn, command.orderId, intent)
        result = outcome(intent)
        if result.error is not None:
            await fail(ctx, error=result.error)  # the declined intent's record stays, as above
            return None
        if result.waiting:
            assert ctx.envelope.replyTo
            await ctx.conn.execute(
                """INSERT INTO pending_reply (order_id, payment_intent_id, command_id, reply_to, attempt)
                   VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (order_id) DO UPDATE SET payment_intent_id = excluded.payment_intent_id,
                       command_id = excluded.command_id, reply_to = excluded.reply_to, attempt = excluded.attempt,
                       created_at = now()""",
                command.orderId,
                intent["id"],
                ctx.envelope.messageId,
                ctx.envelope.replyTo,
                ctx.envelope.attempt,
            )
            log.info("payment waits for the customer", extra={"fields": {"status": intent["status"]}})
            return None
        return result.reply

    async def refund_payment(self, ctx: MessageContext, command: RefundPayment) -> PaymentRefunded:
        """Undo whatever the provider holds for the order: refund what succeeded, cancel what could still be
        charged. The tombstone is written first, in this transaction, so a ProcessPayment that lands later
        charges nothing."""
        await lock_order(ctx.conn, command.orderId)
        await ctx.conn.execute(
            "INSERT INTO payment_void (order_id) VALUES ($1) ON CONFLICT DO NOTHING", command.orderId
        )
        payment = await ctx.conn.fetchrow(
            "SELECT payment_intent_id, currency, status FROM payment WHERE order_id = $1", command.orderId
        )
        intent_id = command.paymentIntentId or (payment["payment_intent_id"] if payment else None)
        try:
            if intent_id is not None:
                intents = [plain(await self.gateway.retrieve(intent_id))]
            else:
                # No answer ever told us an intent's id (lost, or never sent): ask the provider, never assume.
                intents = [plain(i) for i in await self.gateway.intents_of_order(command.orderId)]
        except stripe.StripeError as exc:
            raise errors.from_stripe(exc) from exc
        await ctx.conn.execute("DELETE FROM pending_reply WHERE order_id = $1", command.orderId)
        reply = PaymentRefunded(refunded=False)
        for index, intent in enumerate(intents):
            key = command.idempotencyKey if index == 0 else f"{command.idempotencyKey}-{intent['id']}"
            amount = command.amount if index == 0 else None
            settled = await self._settle(ctx, command, intent, amount=amount, idempotency_key=key)
            if settled is not None and (not reply.refunded or reply.alreadyRefunded):
                reply = settled
        return reply

    async def _settle(
        self, ctx: MessageContext, command: RefundPayment, intent: dict[str, Any], *, amount: Any, idempotency_key: str
    ) -> PaymentRefunded | None:
        """Refund one intent if it succeeded, cancel it if it can still be charged; None when nothing moved."""
        await save_payment(ctx.conn, command.orderId, intent)
        status = intent["status"]
        if status == "processing":
            # Neither refundable nor cancelable yet: fail so the definition retries the compensation.
            raise errors.RefundFailed(f"PaymentIntent {intent['id']} is still processing")
        if status in CANCELABLE:
            try:
                canceled = await self.gateway.cancel(intent["id"], idempotency_key=f"{command.orderId}-cancel")
            except stripe.StripeError as exc:
                raise errors.from_stripe(exc) from exc
            await save_payment(ctx.conn, command.orderId, plain(canceled))
            return None
        if status != "succeeded":
            return None  # canceled: nothing held
        amount_minor = to_minor(amount, intent["currency"]) if amount is not None else None
        try:
            refund = await self.gateway.refund(
                payment_intent_id=intent["id"],
                amount_minor=amount_minor,
                reason=command.reason,
                order_id=command.orderId,
                idempotency_key=idempotency_key,
            )
        except stripe.InvalidRequestError as exc:
            if exc.code == "charge_already_refunded":
                return PaymentRefunded(refunded=True, alreadyRefunded=True)
            if exc.code == "amount_too_large":
                raise errors.RefundExceedsCharge(str(exc.user_message or exc)) from exc
            raise errors.RefundFailed(str(exc.user_message or exc)) from exc
        except stripe.CardError as exc:
            raise errors.RefundFailed(str(exc.user_message or exc)) from exc
        except stripe.StripeError as exc:
            raise errors.from_stripe(exc) from exc
        await ctx.conn.execute(
            """INSERT INTO refund (refund_id, order_id, payment_intent_id, amount_minor, status)
               VALUES ($1, $2, $3, $4, $5) ON CONFLICT (refund_id) DO NOTHING""",
            refund.id,
            command.orderId,
            intent["id"],
            refund.amount,
            refund.status,
        )
        return PaymentRefunded(refunded=True, refundId=refund.id, amount=from_minor(refund.amount, refund.currency))
