"""Line-by-line holds (inventory.ReserveInventoryLine) on a real database: one reservation per line, kept by its
idempotency id; an order's lines held side by side; ReleaseInventory, CommitReservation, RestockOrder and the
sweeper act on every line of the order; the release's tombstone keeps a late line from holding stock, and a
release waits for a line in flight."""

import asyncio
import uuid
from decimal import Decimal

import asyncpg
import pytest
from harness import migrated_pool

from contracts.inventory import CommitReservation, ReleaseInventory, ReserveInventoryLine, RestockOrder
from plumbing.envelope import Envelope
from plumbing.errors import Compensated
from plumbing.middleware.delivery import MessageContext
from services.inventory import handlers, maintenance
from services.inventory import repository as repo
from services.inventory.errors import InsufficientStockError, InventoryError
from services.inventory.main import MIGRATIONS

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(servers: None) -> asyncpg.Pool:
    async with migrated_pool("inventory_lines", MIGRATIONS, size=4) as pool:
        yield pool


def ctx(conn: asyncpg.Connection, order_id: str, kind: str) -> MessageContext:
    return MessageContext(
        envelope=Envelope(type=kind, correlationId=order_id, replyTo="orchestrator"), conn=conn, consumer="test"
    )


def line(order_id: str, product: str, quantity: int = 1) -> ReserveInventoryLine:
    return ReserveInventoryLine(
        orderId=order_id, productId=product, quantity=quantity, idempotencyId=f"{order_id}-reserve-{product}"
    )


async def hold(pool: asyncpg.Pool, command: ReserveInventoryLine):
    async with pool.acquire() as conn, conn.transaction():
        return await handlers.reserve_inventory_line(ctx(conn, command.orderId, "ReserveInventoryLine"), command)


async def stock(pool: asyncpg.Pool, product: str) -> int:
    return await pool.fetchval("SELECT stock FROM product WHERE product_id = $1", product)


async def statuses(pool: asyncpg.Pool, order_id: str) -> dict[str, str]:
    rows = await pool.fetch("SELECT idempotency_id, status FROM reservation WHERE order_id = $1", order_id)
    return {r["idempotency_id"]: r["status"] for r in rows}


async def products(pool: asyncpg.Pool, **stocks: int) -> dict[str, str]:
    tag = uuid.uuid4().hex[:6]
    names = {name: f"sku-{tag}-{name}" for name in stocks}
    async with pool.acquire() as conn:
        for name, count in stocks.items():
            await repo.upsert_product(conn, names[name], name=name, stock=count, price=Decimal("1.00"), currency="usd")
    return names


async def test_each_line_is_a_hold_of_its_own_kept_by_its_key(pool: asyncpg.Pool) -> None:
    p = await products(pool, a=5, b=5)
    order_id = "ORDER#lines"
    first = await hold(pool, line(order_id, p["a"], 2))
    await hold(pool, line(order_id, p["b"], 1))
    again = await hold(pool, line(order_id, p["a"], 2))  # a retry of the same line: the same hold, no second take
    assert again == first
    assert [await stock(pool, p["a"]), await stock(pool, p["b"])] == [3, 4]
    assert await statuses(pool, order_id) == {
        f"{order_id}-reserve-{p['a']}": "active",
        f"{order_id}-reserve-{p['b']}": "active",
    }
    with pytest.raises(InventoryError, match="already holds"):
        await hold(pool, line(order_id, p["a"], 3))  # the same key for another quantity is a mistake, named
    with pytest.raises(InsufficientStockError):
        await hold(pool, line("ORDER#other", p["b"], 5))
    with pytest.raises(InventoryError, match="unknown product"):
        await hold(pool, line(order_id, "sku-nowhere"))


async def test_release_commit_and_restock_act_on_every_line(pool: asyncpg.Pool) -> None:
    p = await products(pool, a=5, b=5)
    released, sold = "ORDER#released", "ORDER#sold"
    for order_id in (released, sold):
        await hold(pool, line(order_id, p["a"]))
        await hold(pool, line(order_id, p["b"], 2))
    async with pool.acquire() as conn, conn.transaction():
        command = ReleaseInventory(orderId=released, idempotencyId=f"{released}-release")
        result = await handlers.release_inventory(ctx(conn, released, "ReleaseInventory"), command)
    assert result.released and {(i.productId, i.quantity) for i in result.items} == {(p["a"], 1), (p["b"], 2)}
    async with pool.acquire() as conn, conn.transaction():
        commit = await handlers.commit_reservation(
            ctx(conn, sold, "CommitReservation"), CommitReservation(orderId=sold)
        )
    assert commit.committed == 2
    assert set((await statuses(pool, released)).values()) == {"released"}
    assert set((await statuses(pool, sold)).values()) == {"committed"}
    assert [await stock(pool, p["a"]), await stock(pool, p["b"])] == [4, 3]
    async with pool.acquire() as conn, conn.transaction():
        command = RestockOrder(orderId=sold, idempotencyId=f"{sold}-restock")
        restocked = await handlers.restock_order(ctx(conn, sold, "RestockOrder"), command)
    assert restocked.restocked and [await stock(pool, p["a"]), await stock(pool, p["b"])] == [5, 5]


async def test_a_line_after_the_release_holds_nothing(pool: asyncpg.Pool) -> None:
    p = await products(pool, a=5, b=5)
    order_id = "ORDER#late"
    await hold(pool, line(order_id, p["a"]))
    async with pool.acquire() as conn, conn.transaction():
        command = ReleaseInventory(orderId=order_id, idempotencyId=f"{order_id}-release")
        await handlers.release_inventory(ctx(conn, order_id, "ReleaseInventory"), command)
    with pytest.raises(Compensated):
        await hold(pool, line(order_id, p["b"]))
    assert [await stock(pool, p["a"]), await stock(pool, p["b"])] == [5, 5]


async def test_lines_go_side_by_side_and_a_release_waits_for_them(pool: asyncpg.Pool) -> None:
    """One line's transaction is left open: another line of the same order is held meanwhile (the order lock is
    shared between lines), and a release waits until the open line commits, then releases it too."""
    p = await products(pool, a=5, b=5)
    order_id = "ORDER#side"
    async with pool.acquire() as open_conn:
        tx = open_conn.transaction()
        await tx.start()
        await handlers.reserve_inventory_line(ctx(open_conn, order_id, "ReserveInventoryLine"), line(order_id, p["a"]))
        await asyncio.wait_for(hold(pool, line(order_id, p["b"])), timeout=10)

        async def release():
            async with pool.acquire() as conn, conn.transaction():
                command = ReleaseInventory(orderId=order_id, idempotencyId=f"{order_id}-release")
                return await handlers.release_inventory(ctx(conn, order_id, "ReleaseInventory"), command)

        releasing = asyncio.ensure_future(release())
        done, _ = await asyncio.wait([releasing], timeout=0.5)
        assert not done, "the release did not wait for the line in flight"
        await tx.commit()
    result = await asyncio.wait_for(releasing, timeout=10)
    assert {i.productId for i in result.items} == {p["a"], p["b"]}
    assert set((await statuses(pool, order_id)).values()) == {"released"}
    assert [await stock(pool, p["a"]), await stock(pool, p["b"])] == [5, 5]


async def test_the_sweeper_releases_the_stale_lines_of_an_order_that_failed(pool: asyncpg.Pool) -> None:
    p = await products(pool, a=5, b=5)
    order_id = "ORDER#stale"
    await hold(pool, line(order_id, p["a"]))
    await hold(pool, line(order_id, p["b"]))
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE reservation SET created_at = now() - interval '2 hours' WHERE order_id = $1", order_id
        )
        await repo.record_outcome(conn, order_id, "FAILED_CRITICAL")
    assert await maintenance.sweep_once(pool, max_age_seconds=3600) == 2
    assert set((await statuses(pool, order_id)).values()) == {"released"}
    assert [await stock(pool, p["a"]), await stock(pool, p["b"])] == [5, 5]
