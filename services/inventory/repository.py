"""Inventory's SQL. Stock moves only by conditional UPDATEs, so it can never go negative."""

import json
import uuid
from decimal import Decimal
from typing import Any, Literal

import asyncpg


async def products(conn: asyncpg.Connection, product_ids: list[str]) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch(
        "SELECT product_id, name, price, currency, stock FROM product WHERE product_id = ANY($1::text[])",
        product_ids,
    )
    return {r["product_id"]: r for r in rows}


async def upsert_product(
    conn: asyncpg.Connection, product_id: str, *, name: str, stock: int, price: Decimal | None, currency: str
) -> None:
    await conn.execute(
        """INSERT INTO product (product_id, name, price, currency, stock)
           VALUES ($1, $2, coalesce($3::numeric, 0), $4, $5)
           ON CONFLICT (product_id) DO UPDATE SET stock = excluded.stock, name = excluded.name,
               price = coalesce($3::numeric, product.price), currency = excluded.currency, updated_at = now()""",
        product_id,
        name,
        price,
        currency,
        stock,
    )


async def list_products(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT p.product_id, p.name, p.price, p.currency, p.stock,
                  coalesce(sum(l.quantity) FILTER (WHERE r.status = 'active'), 0) AS reserved
           FROM product p
           LEFT JOIN reservation_line l ON l.product_id = p.product_id
           LEFT JOIN reservation r ON r.reservation_id = l.reservation_id
           GROUP BY p.product_id ORDER BY p.product_id"""
    )


async def reservation_by_idempotency(conn: asyncpg.Connection, idempotency_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT reservation_id, status FROM reservation WHERE idempotency_id = $1", idempotency_id
    )


async def reservation_lines(conn: asyncpg.Connection, reservation_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT product_id, quantity FROM reservation_line WHERE reservation_id = $1 ORDER BY product_id",
        reservation_id,
    )


async def take_stock(conn: asyncpg.Connection, product_id: str, quantity: int) -> bool:
    """Decrement stock if enough is left; False otherwise. The row lock serializes racing orders."""
    left = await conn.fetchval(
        """UPDATE product SET stock = stock - $2, updated_at = now()
           WHERE product_id = $1 AND stock >= $2 RETURNING stock""",
        product_id,
        quantity,
    )
    return left is not None


async def create_reservation(
    conn: asyncpg.Connection, order_id: str, idempotency_id: str, lines: dict[str, int]
) -> str:
    reservation_id = "res_" + uuid.uuid4().hex
    await conn.execute(
        "INSERT INTO reservation (reservation_id, order_id, idempotency_id, status) VALUES ($1, $2, $3, 'active')",
        reservation_id,
        order_id,
        idempotency_id,
    )
    await conn.executemany(
        "INSERT INTO reservation_line (reservation_id, product_id, quantity) VALUES ($1, $2, $3)",
        [(reservation_id, p, q) for p, q in sorted(lines.items())],
    )
    return reservation_id


async def active_reservations(conn: asyncpg.Connection, order_id: str) -> list[str]:
    rows = await conn.fetch(
        """SELECT reservation_id FROM reservation WHERE order_id = $1 AND status = 'active'
           ORDER BY reservation_id FOR UPDATE""",
        order_id,
    )
    return [r["reservation_id"] for r in rows]


async def release_reservation(conn: asyncpg.Connection, reservation_id: str) -> list[asyncpg.Record]:
    """Put the reservation's stock back and mark it released, in the caller's transaction."""
    return await _return_to_stock(conn, reservation_id, "released")


async def _return_to_stock(
    conn: asyncpg.Connection, reservation_id: str, status: Literal["released", "restocked"]
) -> list[asyncpg.Record]:
    """Put the reservation's units back in stock and give it ``status``; its lines. The UPDATE sets only stock:
    the stock ledger's invariant holds (migration 0004)."""
    lines = await reservation_lines(conn, reservation_id)
    for line in lines:
        await conn.execute(
            "UPDATE product SET stock = stock + $2, updated_at = now() WHERE product_id = $1",
            line["product_id"],
            line["quantity"],
        )
    await conn.execute(
        "UPDATE reservation SET status = $2, updated_at = now() WHERE reservation_id = $1", reservation_id, status
    )
    return lines


async def sold_reservations(conn: asyncpg.Connection, order_id: str) -> list[str]:
    """The order's sold stock: its committed reservations, and an active one of a CONFIRMED order (its commit
    has not landed yet; a cancellation is only started for a CONFIRMED order)."""
    rows = await conn.fetch(
        """SELECT reservation_id FROM reservation WHERE order_id = $1 AND status IN ('committed', 'active')
           ORDER BY reservation_id FOR UPDATE""",
        order_id,
    )
    return [r["reservation_id"] for r in rows]


async def restock_reservation(conn: asyncpg.Connection, reservation_id: str) -> list[asyncpg.Record]:
    """Put a sold reservation's units back on the shelf and mark it restocked, in the caller's transaction."""
    return await _return_to_stock(conn, reservation_id, "restocked")


async def idempotent_result(conn: asyncpg.Connection, idempotency_id: str) -> dict[str, Any] | None:
    return await conn.fetchval("SELECT result FROM idempotency_record WHERE idempotency_id = $1", idempotency_id)


async def remember_result(conn: asyncpg.Connection, idempotency_id: str, operation: str, result: Any) -> None:
    await conn.execute(
        "INSERT INTO idempotency_record (idempotency_id, operation, result) VALUES ($1, $2, $3)",
        idempotency_id,
        operation,
        json.loads(json.dumps(result, default=str)),
    )


async def commit_reservations(conn: asyncpg.Connection, order_id: str) -> int:
    """A confirmed order's stock is sold: its active reservation becomes committed."""
    result = await conn.execute(
        "UPDATE reservation SET status = 'committed', updated_at = now() WHERE order_id = $1 AND status = 'active'",
        order_id,
    )
    return int(result.split()[-1])


async def stale_reservations(conn: asyncpg.Connection, max_age_seconds: float, limit: int) -> list[str]:
    """Active reservations past their age whose order is known to have ended otherwise than CONFIRMED: a
    running saga's hold and a confirmed order's sold stock are never released by age alone."""
    rows = await conn.fetch(
        """SELECT r.reservation_id FROM reservation r
           JOIN order_outcome o ON o.order_id = r.order_id AND o.status <> 'CONFIRMED'
           WHERE r.status = 'active' AND r.created_at < now() - make_interval(secs => $1)
           ORDER BY r.created_at LIMIT $2 FOR UPDATE OF r SKIP LOCKED""",
        max_age_seconds,
        limit,
    )
    return [r["reservation_id"] for r in rows]


async def unresolved_reservations(conn: asyncpg.Connection, max_age_seconds: float) -> int:
    """Active reservations past their age with no known outcome (or a CONFIRMED one not yet committed): held,
    not released, and counted so an operator is told."""
    return await conn.fetchval(
        """SELECT count(*) FROM reservation r LEFT JOIN order_outcome o ON o.order_id = r.order_id
           WHERE r.status = 'active' AND r.created_at < now() - make_interval(secs => $1)
             AND (o.status IS NULL OR o.status = 'CONFIRMED')""",
        max_age_seconds,
    )


async def lock_order(conn: asyncpg.Connection, order_id: str, *, shared: bool = False) -> None:
    """Serialize one order's reserve and release: a release never races the reservation it compensates. Line
    reservations take it shared, so an order's lines are reserved side by side and a release (exclusive) waits
    for every line in flight, then leaves the tombstone each later line reads."""
    lock = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    await conn.execute(f"SELECT {lock}(hashtextextended($1, 2))", order_id)


async def lock_key(conn: asyncpg.Connection, idempotency_id: str) -> None:
    """One hold per idempotency id: two deliveries of the same line (a retry beside a redelivery) take turns, and
    the second finds the first's reservation instead of taking the stock again."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 3))", idempotency_id)


async def is_released(conn: asyncpg.Connection, order_id: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM order_released WHERE order_id = $1", order_id))


async def mark_released(conn: asyncpg.Connection, order_id: str) -> None:
    await conn.execute("INSERT INTO order_released (order_id) VALUES ($1) ON CONFLICT DO NOTHING", order_id)


async def record_outcome(conn: asyncpg.Connection, order_id: str, status: str) -> None:
    await conn.execute(
        """INSERT INTO order_outcome (order_id, status) VALUES ($1, $2)
           ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, recorded_at = now()""",
        order_id,
        status,
    )
