"""The orders service's handlers: CreateOrderRecord (a conditional insert that falls back to an update, never a
second order) and its compensation VoidOrderRecord (a tombstone that the create reads, so the void wins)."""

import asyncpg

from contracts.records import CreateOrderRecord, OrderRecordCreated, OrderRecordVoided, VoidOrderRecord
from plumbing.consumer import MessageContext
from plumbing.errors import BusinessError, Compensated


class OrderRecordError(BusinessError):
    error_name = "OrderRecordError"


async def lock_order(conn: asyncpg.Connection, order_id: str) -> None:
    """Serialize one order's create and void: whichever commits second sees the first."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 3))", order_id)


async def create_order_record(ctx: MessageContext, command: CreateOrderRecord) -> OrderRecordCreated:
    await lock_order(ctx.conn, command.orderId)
    if await ctx.conn.fetchval("SELECT 1 FROM order_void WHERE order_id = $1", command.orderId):
        raise Compensated("the order was compensated (its record voided) before this command ran; writing nothing")
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


async def void_order_record(ctx: MessageContext, command: VoidOrderRecord) -> OrderRecordVoided:
    await lock_order(ctx.conn, command.orderId)
    await ctx.conn.execute(
        "INSERT INTO order_void (order_id, reason) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        command.orderId,
        command.reason,
    )
    voided = await ctx.conn.execute(
        "UPDATE order_record SET status = 'VOIDED', updated_at = now() WHERE order_id = $1 AND status <> 'VOIDED'",
        command.orderId,
    )
    return OrderRecordVoided(voided=voided != "UPDATE 0")
