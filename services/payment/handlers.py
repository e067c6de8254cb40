"""Payment's command handlers."""

import logging
from dataclasses import dataclass

import asyncpg
import stripe

from contracts.payment import PaymentProcessed, PaymentRefunded, ProcessPayment, RefundPayment
from plumbing.consumer import MessageContext
from services.payment import errors
from services.payment.intents import CANCELABLE, outcome
from services.payment.money import from_minor, to_minor
from services.payment.stripe_gateway import StripeGateway

log = logging.getLogger(__name__)


async def lock_order(conn: asyncpg.Connection, order_id: str) -> None:
    """Serialize one order's payment commands: a refund never races the charge it compensates."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 1))", order_id)


async def save_payment(conn: asyncpg.Connection, order_id: str, intent: object) -> None:
    await conn.execute(
        """INSERT INTO payment (order_id, payment_intent_id, amount_minor, currency, status)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, updated_at = now()""",
        order_id,
        intent["id"],
        intent["amount"],
        intent["currency"],
        intent["status"],  # type: ignore[index]
    )


@dataclass
class PaymentHandlers:
    gateway: StripeGateway

    async def process_payment(self, ctx: MessageContext, command: ProcessPayment) -> PaymentProcessed | None:
        """Charge once per order; None when the intent waits for the customer (the webhook answers)."""
        await lock_order(ctx.conn, command.orderId)
        if await ctx.conn.fetchval("SELECT 1 FROM payment_void WHERE order_id = $1", command.orderId):
            raise errors.PaymentFailed("the order was compensated before this payment ran; not charging")
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
            if row is not None:
                # A retry: the idempotency key would replay the first answer; ask for today's status.
                intent = await self.gateway.retrieve(row["payment_intent_id"])
            else:
                intent = await self.gateway.charge(
                    order_id=command.orderId,
                    amount=command.amount,
                    currency=command.currency,
                    payment_method=command.paymentMethodId,
                    idempotency_key=command.idempotencyKey,
                )
        except stripe.StripeError as exc:
            raise errors.from_stripe(exc) from exc
        await save_payment(ctx.conn, command.orderId, intent)
        result = outcome(intent)
        if result.error is not None:
            raise result.error
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
        await lock_order(ctx.conn, command.orderId)
        payment = await ctx.conn.fetchrow(
            "SELECT payment_intent_id, currency, status FROM payment WHERE order_id = $1", command.orderId
        )
        intent_id = command.paymentIntentId or (payment["payment_intent_id"] if payment else None)
        if intent_id is None:
            # Nothing was charged: a no-op success, remembered so a late ProcessPayment cannot charge.
            await ctx.conn.execute(
                "INSERT INTO payment_void (order_id) VALUES ($1) ON CONFLICT DO NOTHING", command.orderId
            )
            return PaymentRefunded(refunded=False)
        currency = payment["currency"] if payment else "usd"
        if payment is not None and payment["status"] != "succeeded":
            if not await self._settle_unfinished(ctx, command.orderId, intent_id):
                return PaymentRefunded(refunded=False)
        amount_minor = to_minor(command.amount, currency) if command.amount is not None else None
        try:
            refund = await self.gateway.refund(
                payment_intent_id=intent_id,
                amount_minor=amount_minor,
                reason=command.reason,
                order_id=command.orderId,
                idempotency_key=command.idempotencyKey,
            )
        except stripe.InvalidRequestError as exc:
            if exc.code == "charge_already_refunded":
                return PaymentRefunded(refunded=True, alreadyRefunded=True)
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
            intent_id,
            refund.amount,
            refund.status,
        )
        return PaymentRefunded(refunded=True, refundId=refund.id, amount=from_minor(refund.amount, refund.currency))

    async def _settle_unfinished(self, ctx: MessageContext, order_id: str, intent_id: str) -> bool:
        """Before refunding an intent we never saw succeed: True if it did succeed after all (refund it);
        otherwise cancel it when Stripe allows, so a late 3-D Secure completion cannot charge a failed order."""
        try:
            intent = await self.gateway.retrieve(intent_id)
            await save_payment(ctx.conn, order_id, intent)
            if intent["status"] == "succeeded":
                return True
            if intent["status"] in CANCELABLE:
                intent = await self.gateway.cancel(intent_id, idempotency_key=f"{order_id}-cancel")
                await save_payment(ctx.conn, order_id, intent)
        except stripe.StripeError as exc:
            raise errors.from_stripe(exc) from exc
        await ctx.conn.execute("DELETE FROM pending_reply WHERE order_id = $1", order_id)
        if intent["status"] == "processing":
            # Neither refundable nor cancelable yet: fail so the definition retries the compensation.
            raise errors.RefundFailed(f"PaymentIntent {intent_id} is still processing")
        return False
