"""Payment's command handlers."""

from dataclasses import dataclass

import stripe

from contracts.payment import PaymentProcessed, PaymentRefunded, ProcessPayment, RefundPayment
from plumbing.consumer import MessageContext
from services.payment import errors
from services.payment.money import from_minor, to_minor
from services.payment.stripe_gateway import StripeGateway


@dataclass
class PaymentHandlers:
    gateway: StripeGateway

    async def process_payment(self, ctx: MessageContext, command: ProcessPayment) -> PaymentProcessed:
        done = await ctx.conn.fetchrow(
            "SELECT payment_intent_id, status, amount_minor, currency FROM payment WHERE order_id = $1",
            command.orderId,
        )
        if done is not None and done["status"] == "succeeded":
            return PaymentProcessed(
                paymentIntentId=done["payment_intent_id"],
                status="succeeded",
                amount=from_minor(done["amount_minor"], done["currency"]),
            )
        try:
            intent = await self.gateway.charge(
                order_id=command.orderId,
                amount=command.amount,
                currency=command.currency,
                payment_method=command.paymentMethodId,
                idempotency_key=command.idempotencyKey,
            )
        except stripe.StripeError as exc:
            raise errors.from_stripe(exc) from exc
        await ctx.conn.execute(
            """INSERT INTO payment (order_id, payment_intent_id, amount_minor, currency, status)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, updated_at = now()""",
            command.orderId,
            intent.id,
            intent.amount,
            intent.currency,
            intent.status,
        )
        if intent.status != "succeeded":
            # Needs customer action or still processing; waiting for Stripe's webhook is not built yet.
            raise errors.PaymentFailed(f"PaymentIntent {intent.id} is {intent.status}")
        return PaymentProcessed(
            paymentIntentId=intent.id, status=intent.status, amount=from_minor(intent.amount, intent.currency)
        )

    async def refund_payment(self, ctx: MessageContext, command: RefundPayment) -> PaymentRefunded:
        payment = await ctx.conn.fetchrow(
            "SELECT payment_intent_id, currency, status FROM payment WHERE order_id = $1", command.orderId
        )
        intent_id = command.paymentIntentId or (payment["payment_intent_id"] if payment else None)
        if intent_id is None:
            return PaymentRefunded(refunded=False)  # nothing was charged: a no-op success
        currency = payment["currency"] if payment else "usd"
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
            if payment is None or payment["status"] != "succeeded":
                # The PaymentIntent was never charged (declined, or abandoned): nothing to refund.
                return PaymentRefunded(refunded=False)
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
