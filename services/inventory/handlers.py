"""Inventory's command handlers."""

from collections import Counter
from collections.abc import Awaitable, Callable

import asyncpg

from contracts.base import OrderItem, PricedLine
from contracts.inventory import (
    CheckInventory,
    CommitReservation,
    InventoryChecked,
    InventoryLineReserved,
    InventoryReleased,
    InventoryReserved,
    ReleaseInventory,
    ReservationCommitted,
    ReserveInventory,
    ReserveInventoryLine,
    RestockOrder,
    StockRestocked,
)
from contracts.orders import OrderOutcome
from plumbing.consumer import MessageContext
from plumbing.errors import Compensated
from services.inventory import repository as repo
from services.inventory.errors import InsufficientStockError, InventoryError


def _quantities(items: list[OrderItem]) -> dict[str, int]:
    """Sum lines per product; sorted keys give every transaction the same lock order."""
    totals: Counter[str] = Counter()
    for item in items:
        totals[item.productId] += item.quantity
    return dict(sorted(totals.items()))


async def check_inventory(ctx: MessageContext, command: CheckInventory) -> InventoryChecked:
    wanted = _quantities(command.items)
    catalog = await repo.products(ctx.conn, list(wanted))
    unknown = [p for p in wanted if p not in catalog]
    if unknown:
        raise InventoryError(f"unknown products: {', '.join(unknown)}")
    short = [f"{p} (wanted {q}, in stock {catalog[p]['stock']})" for p, q in wanted.items() if catalog[p]["stock"] < q]
    if short:
        raise InsufficientStockError("insufficient stock: " + "; ".join(short))
    other_currency = [p for p in wanted if catalog[p]["currency"] != command.currency]
    if other_currency:
        raise InventoryError(f"products not sold in {command.currency}: {', '.join(other_currency)}")
    lines = [
        PricedLine(
            productId=p,
            name=catalog[p]["name"],
            quantity=q,
            unitPrice=catalog[p]["price"],
            lineTotal=catalog[p]["price"] * q,
        )
        for p, q in wanted.items()
    ]
    return InventoryChecked(lines=lines, amount=sum(line.lineTotal for line in lines), currency=command.currency)


async def reserve_inventory(ctx: MessageContext, command: ReserveInventory) -> InventoryReserved:
    await repo.lock_order(ctx.conn, command.orderId)
    if await repo.is_released(ctx.conn, command.orderId):
        raise Compensated("the order's reservation was released before this command ran; reserving nothing")
    existing = await repo.reservation_by_idempotency(ctx.conn, command.idempotencyId)
    if existing is not None:
        lines = await repo.reservation_lines(ctx.conn, existing["reservation_id"])
        return InventoryReserved(
            reservationId=existing["reservation_id"],
            items=[OrderItem(productId=r["product_id"], quantity=r["quantity"]) for r in lines],
        )
    wanted = _quantities(command.items)
    catalog = await repo.products(ctx.conn, list(wanted))
    unknown = [p for p in wanted if p not in catalog]
    if unknown:
        raise InventoryError(f"unknown products: {', '.join(unknown)}")
    for product_id, quantity in wanted.items():
        if not await repo.take_stock(ctx.conn, product_id, quantity):
            # The failure rolls the transaction back, and with it what was taken: all lines or none.
            raise InsufficientStockError(f"stock of {product_id} changed between check and reserve")
    reservation_id = await repo.create_reservation(ctx.conn, command.orderId, command.idempotencyId, wanted)
    return InventoryReserved(
        reservationId=reservation_id, items=[OrderItem(productId=p, quantity=q) for p, q in wanted.items()]
    )


async def reserve_inventory_line(ctx: MessageContext, command: ReserveInventoryLine) -> InventoryLineReserved:
    """One line's hold, a reservation of its own keyed by idempotencyId ({orderId}-reserve-{productId}). The
    order's tombstone is read under the order's lock as ReserveInventory reads it, so a line that lands after
    the order was released reserves nothing; ReleaseInventory, CommitReservation, RestockOrder and the sweeper
    act on every reservation of the order, so line holds are released, committed and swept as a whole order's."""
    await repo.lock_order(ctx.conn, command.orderId, shared=True)
    await repo.lock_key(ctx.conn, command.idempotencyId)
    if await repo.is_released(ctx.conn, command.orderId):
        raise Compensated("the order's reservation was released before this line ran; reserving nothing")
    existing = await repo.reservation_by_idempotency(ctx.conn, command.idempotencyId)
    if existing is not None:
        held = {
            r["product_id"]: r["quantity"] for r in await repo.reservation_lines(ctx.conn, existing["reservation_id"])
        }
        if held != {command.productId: command.quantity}:
            raise InventoryError(
                f"{command.idempotencyId} already holds {held}, not {command.quantity} of {command.productId}"
            )
        return InventoryLineReserved(
            reservationId=existing["reservation_id"], productId=command.productId, quantity=command.quantity
        )
    if not await repo.products(ctx.conn, [command.productId]):
        raise InventoryError(f"unknown product: {command.productId}")
    if not await repo.take_stock(ctx.conn, command.productId, command.quantity):
        raise InsufficientStockError(f"insufficient stock of {command.productId} for {command.quantity} units")
    reservation_id = await repo.create_reservation(
        ctx.conn, command.orderId, command.idempotencyId, {command.productId: command.quantity}
    )
    return InventoryLineReserved(reservationId=reservation_id, productId=command.productId, quantity=command.quantity)


async def _returned(
    ctx: MessageContext,
    reservation_ids: list[str],
    put_back: Callable[[asyncpg.Connection, str], Awaitable[list[asyncpg.Record]]],
) -> list[OrderItem]:
    """Put each reservation back with ``put_back`` (release or restock); the units returned, by product."""
    returned: Counter[str] = Counter()
    for reservation_id in reservation_ids:
        for line in await put_back(ctx.conn, reservation_id):
            returned[line["product_id"]] += line["quantity"]
    return [OrderItem(productId=p, quantity=q) for p, q in sorted(returned.items())]


async def release_inventory(ctx: MessageContext, command: ReleaseInventory) -> InventoryReleased:
    await repo.lock_order(ctx.conn, command.orderId)
    await repo.mark_released(ctx.conn, command.orderId)  # the tombstone a late ReserveInventory reads
    remembered = await repo.idempotent_result(ctx.conn, command.idempotencyId)
    if remembered is not None:
        return InventoryReleased.model_validate(remembered)
    # The order's own reservation lines are what was taken; release those, whatever items say.
    reservations = await repo.active_reservations(ctx.conn, command.orderId)
    items = await _returned(ctx, reservations, repo.release_reservation)
    result = InventoryReleased(released=bool(items), items=items)
    await repo.remember_result(ctx.conn, command.idempotencyId, "release", result.model_dump(mode="json"))
    return result


async def commit_reservation(ctx: MessageContext, command: CommitReservation) -> ReservationCommitted:
    """The saga's acknowledged commit of a CONFIRMED order's stock: sold, no longer a hold."""
    return ReservationCommitted(committed=await repo.commit_reservations(ctx.conn, command.orderId))


async def restock_order(ctx: MessageContext, command: RestockOrder) -> StockRestocked:
    """A cancelled CONFIRMED order's sold stock goes back: its committed reservation, or an active one whose
    commit never landed, turns restocked and its units return to stock, once per order (idempotencyId). No
    tombstone is needed: every command that could still land for this order after it (CommitReservation, the
    order.confirmed event, ReleaseInventory, the sweeper) acts on active reservations only, and none is left;
    a late ReserveInventory finds the order's reservation by its idempotency id and takes nothing."""
    await repo.lock_order(ctx.conn, command.orderId)
    remembered = await repo.idempotent_result(ctx.conn, command.idempotencyId)
    if remembered is not None:
        return StockRestocked.model_validate(remembered)
    items = await _returned(ctx, await repo.sold_reservations(ctx.conn, command.orderId), repo.restock_reservation)
    result = StockRestocked(restocked=bool(items), items=items)
    await repo.remember_result(ctx.conn, command.idempotencyId, "restock", result.model_dump(mode="json"))
    return result


async def record_outcome(ctx: MessageContext, event: OrderOutcome) -> None:
    """order.<status>: remember how the saga ended, which is what lets the sweeper release a hold. A confirmed
    order's reservation is committed here too, in case the event overtakes the saga's CommitReservation."""
    await repo.record_outcome(ctx.conn, event.orderId, event.status)
    if event.status == "CONFIRMED":
        await repo.commit_reservations(ctx.conn, event.orderId)
