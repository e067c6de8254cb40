"""The CreateOrderRecord handler: a conditional insert that falls back to an update, never a second order."""

from contracts.records import CreateOrderRecord, OrderRecordCreated
from plumbing.consumer import MessageContext
from plumbing.errors import BusinessError


class OrderRecordError(BusinessError):
    error_name = "OrderRecordError"


async def create_order_record(ctx: MessageContext, command: CreateOrderRecord) -> OrderRecordCreated:
    created = await ctx.conn.fetchval(
        """INSERT INTO order_record (order_id, status, customer_email, customer_phone, lines, amount, currency,
                                     payment_intent_id)
           VALUES ($1, 'CONFIRMED', $2, $3, $4, $5, $6, $7)
           ON CONFLICT (order_id) DO UPDATE SET status = 'CONFIRMED', lines = excluded.lines,
               amount = excluded.amount, currency = excluded.currency,
               payment_intent_id = excluded.payment_intent_id, updated_at = now()
           RETURNING (xmax = 0)""",
        command.orderId,
        command.customer.email,
        command.customer.phone,
        [line.model_dump(mode="json") for line in command.lines],
        command.amount,
        command.currency,
        command.paymentIntentId,
    )
    return OrderRecordCreated(orderId=command.orderId, status="CONFIRMED", created=bool(created))
