"""The invariant checker: clean states pass, each kind of violation is reported by exactly its rule.

States are written directly in SQL into a fresh set of databases (stock through the inventory
repository, as the service moves it, so the stock ledger's trigger sees the real statements); the
last test runs the checker against the session's stack after real orders.
"""

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from harness import (
    Stack,
    create_databases,
    drop_databases,
    new_id,
    order_body,
    outcome_of,
    publish_raw,
    seed,
    settings_for,
)

from orchestrator import definition
from orderctl.checker import RULES, Report, check
from orderctl.config import SERVICES, CtlSettings
from plumbing.db import connect
from services.inventory import repository as inventory_repo

pytestmark = pytest.mark.integration

TABLES = {
    "orchestrator": "saga_history, saga_timer, saga",
    "inventory": "reservation_line, reservation, product",
    "payment": "payment, refund",
    "orders": "order_record",
    "notify": "notification",
}


@pytest.fixture(scope="module")
async def fresh(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[CtlSettings]:
    settings = settings_for(amqp_url, tmp=tmp_path_factory.mktemp("checker"))
    await create_databases(settings)
    try:
        yield settings
    finally:
        await drop_databases(settings)


#: The history of ReleaseReservedInventory run once, successfully.
RELEASED = (
    ("TaskScheduled", "main", "ReleaseReservedInventory"),
    ("TaskSucceeded", "main", "ReleaseReservedInventory"),
)


class World:
    """Writes the rows each service would write, one order at a time."""

    def __init__(self, settings: CtlSettings) -> None:
        self.settings = settings
        self.conns: dict[str, asyncpg.Connection] = {}

    async def conn(self, service: str) -> asyncpg.Connection:
        """One connection per database for the whole test, with the service's own URL."""
        if service not in self.conns:
            self.conns[service] = await connect(self.settings.database_url(service))
        return self.conns[service]

    async def close(self) -> None:
        for conn in self.conns.values():
            await conn.close()

    async def sql(self, service: str, query: str, *args: Any) -> None:
        await (await self.conn(service)).execute(query, *args)

    async def clear(self) -> None:
        for service, tables in TABLES.items():
            await self.sql(service, f"TRUNCATE {tables}")

    async def saga(
        self, order_id: str, status: str, *, history: tuple[tuple[str, str, str], ...] = (), **data: Any
    ) -> None:
        """A saga row and its history: (event, lane, state) entries, then the execution's end."""
        state = {"orderId": order_id, "status": status, "main": {"key": "main", "current": None, "data": data}}
        await self.sql(
            "orchestrator",
            "INSERT INTO saga (order_id, status, state, request_hash) VALUES ($1, $2, $3::jsonb, 'h')",
            order_id,
            status,
            state,
        )
        entries = [("ExecutionStarted", "main", None, None), *((e, lane, s, None) for e, lane, s in history)]
        if status != "RUNNING":
            end = "ExecutionSucceeded" if status == "CONFIRMED" else "ExecutionFailed"
            entries.append((end, "main", None, {"status": status}))
        for event, lane, step, detail in entries:
            await self.sql(
                "orchestrator",
                """INSERT INTO saga_history (order_id, at, event, state, lane, detail)
                   VALUES ($1, $2, $3, $4, $5, $6::jsonb)""",
                order_id,
                datetime.now(UTC),
                event,
                step,
                lane,
                detail,
            )

    async def product(self, product_id: str, stock: int) -> None:
        await inventory_repo.upsert_product(
            await self.conn("inventory"),
            product_id,
            name=product_id,
            stock=stock,
            price=Decimal("5.00"),
            currency="usd",
        )

    async def reserve(self, order_id: str, product_id: str, quantity: int, then: str = "active") -> None:
        """Take stock as ReserveInventory does; then leave it active, commit it or release it."""
        conn = await self.conn("inventory")
        async with conn.transaction():
            assert await inventory_repo.take_stock(conn, product_id, quantity)
            reservation = await inventory_repo.create_reservation(conn, order_id, order_id, {product_id: quantity})
        if then == "committed":
            await inventory_repo.commit_reservations(conn, order_id)
        elif then == "released":
            async with conn.transaction():
                await inventory_repo.release_reservation(conn, reservation)

    async def payment(self, order_id: str, amount: int, status: str = "succeeded") -> None:
        await self.sql(
            "payment",
            """INSERT INTO payment (order_id, payment_intent_id, amount_minor, currency, status)
               VALUES ($1, $2, $3, 'usd', $4)""",
            order_id,
            f"pi_{order_id}",
            amount,
            status,
        )

    async def refund(self, order_id: str, amount: int) -> None:
        await self.sql(
            "payment",
            """INSERT INTO refund (refund_id, order_id, payment_intent_id, amount_minor, status)
               VALUES ($1, $2, $3, $4, 'succeeded')""",
            f"re_{uuid.uuid4().hex}",
            order_id,
            f"pi_{order_id}",
            amount,
        )

    async def record(self, order_id: str) -> None:
        await self.sql(
            "orders",
            """INSERT INTO order_record (order_id, status, customer_email, lines, amount, currency, payment_intent_id)
               VALUES ($1, 'CONFIRMED', 'ada@example.com', '[]'::jsonb, 10.00, 'usd', $2)""",
            order_id,
            f"pi_{order_id}",
        )

    async def notified(self, order_id: str, status: str = "sent") -> None:
        await self.sql(
            "notify", "INSERT INTO notification (order_id, channel, status) VALUES ($1, 'email', $2)", order_id, status
        )

    # -- whole orders, as each path of the guide leaves them --------------------------------------
    async def confirmed(self, order_id: str, *, committed: bool = True) -> None:
        await self.reserve(order_id, "sku-a", 2, then="committed" if committed else "active")
        await self.payment(order_id, 1000)
        await self.record(order_id)
        await self.notified(order_id)
        await self.saga(order_id, "CONFIRMED")

    async def payment_failed(self, order_id: str) -> None:
        await self.reserve(order_id, "sku-a", 1, then="released")
        await self.saga(order_id, "FAILED", history=RELEASED)

    async def compensated(self, order_id: str) -> None:
        await self.reserve(order_id, "sku-a", 1, then="released")
        await self.payment(order_id, 500)
        await self.refund(order_id, 500)
        branches = (
            ("TaskScheduled", "branch:0", "RefundPayment"),
            ("TaskScheduled", "branch:1", "ReleaseInventory"),
            ("TaskSucceeded", "branch:1", "ReleaseInventory"),
            ("TaskScheduled", "branch:0", "RefundPayment"),  # a retry
            ("TaskSucceeded", "branch:0", "RefundPayment"),
        )
        await self.saga(order_id, "FAILED_COMPENSATED", history=branches)

    async def clean(self) -> dict[str, str]:
        """One order of every path, each consistent: the base every violation test spoils once."""
        await self.product("sku-a", 20)
        orders = {s: f"ORDER#{s.lower()}-{uuid.uuid4().hex[:6]}" for s in ("CONFIRMED", "FAILED", "FAILED_COMPENSATED")}
        orders["CANCELLED"] = f"ORDER#cancelled-{uuid.uuid4().hex[:6]}"
        orders["NOTIFY"] = f"ORDER#notify-{uuid.uuid4().hex[:6]}"
        await self.confirmed(orders["CONFIRMED"])
        await self.payment_failed(orders["FAILED"])
        await self.compensated(orders["FAILED_COMPENSATED"])
        await self.saga(orders["CANCELLED"], "CANCELLED")
        # A notification failure: caught, the order stays CONFIRMED, the email row says failed.
        await self.reserve(orders["NOTIFY"], "sku-a", 1, then="committed")
        await self.payment(orders["NOTIFY"], 500)
        await self.record(orders["NOTIFY"])
        await self.notified(orders["NOTIFY"], "failed")
        await self.saga(orders["NOTIFY"], "CONFIRMED", notificationError={"Error": "NotificationError", "Cause": "x"})
        return orders


@pytest.fixture
async def world(fresh: CtlSettings) -> AsyncIterator[World]:
    w = World(fresh)
    try:
        await w.clear()
        yield w
    finally:
        await w.close()


def rules(report: Report) -> set[str]:
    return {v.rule for v in report.violations}


def stripe_state(intents: list[tuple[str, str, list[tuple[int, int]]]]) -> dict[str, Any]:
    """A /_test/state document: (intent id, orderId, [(amount, amount_refunded) per succeeded charge])."""
    state: dict[str, Any] = {"payment_intents": [], "charges": [], "refunds": []}
    for intent_id, order_id, charges in intents:
        state["payment_intents"].append({"id": intent_id, "metadata": {"orderId": order_id}, "status": "succeeded"})
        for amount, refunded in charges:
            state["charges"].append(
                {
                    "id": f"ch_{uuid.uuid4().hex[:8]}",
                    "payment_intent": intent_id,
                    "status": "succeeded",
                    "captured": True,
                    "amount": amount,
                    "amount_refunded": refunded,
                    "metadata": {"orderId": order_id},
                }
            )
    return state


def stripe_agreeing(orders: dict[str, str], confirmed: list[tuple[str, list[tuple[int, int]]]] | None = None) -> dict:
    """Stripe as the clean orders left it; ``confirmed`` replaces the CONFIRMED order's intents."""
    intents = [(intent_id, orders["CONFIRMED"], charges) for intent_id, charges in confirmed or []] or [
        (f"pi_{orders['CONFIRMED']}", orders["CONFIRMED"], [(1000, 0)])
    ]
    intents += [
        (f"pi_{orders['NOTIFY']}", orders["NOTIFY"], [(500, 0)]),
        (f"pi_{orders['FAILED_COMPENSATED']}", orders["FAILED_COMPENSATED"], [(500, 500)]),
    ]
    return stripe_state(intents)


def test_every_rule_has_a_name_and_a_docstring() -> None:
    names = [name for name, _ in RULES]
    assert len(names) == len(set(names)) == 11
    assert all(fn.__doc__ for _, fn in RULES)


async def test_a_clean_state_has_no_violation_and_counts_its_figures(world: World) -> None:
    orders = await world.clean()
    report = await check(world.settings, allow_running=False)
    assert report.violations == []
    f = report.figures
    assert f["orders"] == 5 and f["orders_confirmed"] == 2 and f["orders_failed_compensated"] == 1
    assert f["charges"] == 3 and f["charged_minor"] == 2000 and f["refunded_minor"] == 500
    assert f["stock"] == 17 and f["stock_received"] == 20 and f["reservations_committed"] == 2
    assert f["order_records"] == 2 and f["emails_sent"] == 1 and f["emails_failed"] == 1
    assert f["compensations_started"] == 3

    # Stripe agrees: one intent per charged order, the compensated one refunded in full.
    report = await check(world.settings, allow_running=False, stripe_state=stripe_agreeing(orders))
    assert report.violations == [] and report.figures["stripe_succeeded_charges"] == 3


async def test_a_running_order_is_a_violation_only_at_quiescence(world: World) -> None:
    await world.clean()
    order_id = new_id()
    await world.reserve(order_id, "sku-a", 1)
    await world.payment(order_id, 500)
    await world.saga(order_id, "RUNNING")
    assert (await check(world.settings, allow_running=True)).violations == []
    report = await check(world.settings, allow_running=False)
    assert [(v.rule, v.order_id) for v in report.violations] == [("terminal-status", order_id)]


async def test_a_status_its_history_does_not_end_with(world: World) -> None:
    await world.clean()
    order_id = new_id()
    await world.saga(order_id, "CANCELLED")
    await world.sql(
        "orchestrator",
        "UPDATE saga_history SET detail = '{\"status\": \"FAILED\"}' WHERE order_id = $1 AND event = 'ExecutionFailed'",
        order_id,
    )
    report = await check(world.settings)
    assert rules(report) == {"terminal-status"} and "history ended FAILED" in report.violations[0].detail


async def test_two_payment_intents_or_two_charges_for_one_order(world: World) -> None:
    orders = await world.clean()
    two_intents = stripe_agreeing(orders, [("pi_1", [(1000, 0)]), ("pi_2", [])])
    report = await check(world.settings, stripe_state=two_intents)
    assert rules(report) == {"single-charge"} and "2 PaymentIntents" in report.violations[0].detail
    two_charges = stripe_agreeing(orders, [("pi_1", [(1000, 0), (1000, 0)])])
    report = await check(world.settings, stripe_state=two_charges)
    assert rules(report) == {"single-charge"} and "2 succeeded charges" in report.violations[0].detail


async def test_refunds_above_the_charge(world: World) -> None:
    orders = await world.clean()
    await world.refund(orders["FAILED_COMPENSATED"], 100)  # a second refund: 600 of 500
    report = await check(world.settings)
    assert [(v.rule, v.order_id) for v in report.violations] == [
        ("refunds-within-charge", orders["FAILED_COMPENSATED"])
    ]


async def test_money_kept_for_a_failed_order_or_missing_for_a_confirmed_one(world: World) -> None:
    orders = await world.clean()
    await world.payment(orders["FAILED"], 700)  # charged, never refunded
    await world.sql("payment", "DELETE FROM payment WHERE order_id = $1", orders["CONFIRMED"])
    report = await check(world.settings)
    assert rules(report) == {"money-iff-confirmed"}
    assert {v.order_id for v in report.violations} == {orders["FAILED"], orders["CONFIRMED"]}


async def test_stripe_is_preferred_to_the_ledger_for_money_kept(world: World) -> None:
    orders = await world.clean()
    # Our ledger says refunded; Stripe says the charge still stands.
    stripe = stripe_agreeing(orders)
    next(c for c in stripe["charges"] if c["metadata"]["orderId"] == orders["FAILED_COMPENSATED"])[
        "amount_refunded"
    ] = 0
    report = await check(world.settings, stripe_state=stripe)
    assert [(v.rule, v.order_id) for v in report.violations] == [("money-iff-confirmed", orders["FAILED_COMPENSATED"])]


async def test_negative_stock(world: World) -> None:
    await world.clean()
    # The column's CHECK forbids it; drop it for the time of the test to show the checker would see it.
    await world.sql("inventory", "ALTER TABLE product DROP CONSTRAINT product_stock_check")
    try:
        await world.sql(
            "inventory", "INSERT INTO product (product_id, name, price, stock) VALUES ('sku-neg', 'n', 1, 0)"
        )
        await world.sql("inventory", "UPDATE product SET stock = -1, received = -1 WHERE product_id = 'sku-neg'")
        report = await check(world.settings)
        assert rules(report) == {"stock-never-negative"} and "sku-neg" in report.violations[0].detail
    finally:
        await world.sql("inventory", "DELETE FROM product WHERE product_id = 'sku-neg'")
        await world.sql("inventory", "ALTER TABLE product ADD CONSTRAINT product_stock_check CHECK (stock >= 0)")


async def test_stock_taken_twice_or_released_twice_does_not_balance(world: World) -> None:
    orders = await world.clean()
    conn = await world.conn("inventory")
    assert await inventory_repo.take_stock(conn, "sku-a", 1)  # taken with no reservation to show for it
    report = await check(world.settings)
    assert rules(report) == {"stock-balance"}
    assert "stock 16 + reserved 3 != received 20" in report.violations[0].detail

    await conn.execute("UPDATE product SET stock = stock + 1 WHERE product_id = 'sku-a'")  # back to balance
    assert (await check(world.settings)).violations == []
    released = await conn.fetchval("SELECT reservation_id FROM reservation WHERE order_id = $1", orders["FAILED"])
    async with conn.transaction():
        await inventory_repo.release_reservation(conn, released)  # a second release of a released reservation
    assert rules(await check(world.settings)) == {"stock-balance"}


async def test_a_sold_reservation_released_without_its_stock(world: World) -> None:
    orders = await world.clean()
    await world.sql("inventory", "UPDATE reservation SET status = 'released' WHERE order_id = $1", orders["CONFIRMED"])
    report = await check(world.settings)
    assert rules(report) == {"stock-balance", "reservation-settled"}


async def test_stock_set_by_an_operator_keeps_the_balance(world: World) -> None:
    await world.clean()
    await world.product("sku-a", 3)  # orderctl stock set sku-a 3, with 5 units reserved or sold
    await world.product("sku-b", 4)
    report = await check(world.settings)
    assert report.violations == [] and report.figures["stock_received"] == 3 + 3 + 4


async def test_an_active_reservation_after_the_end(world: World) -> None:
    await world.clean()
    failed = new_id()
    await world.reserve(failed, "sku-a", 1)  # the release reported success, the stock is still held
    await world.saga(failed, "FAILED", history=RELEASED)
    report = await check(world.settings)
    assert [(v.rule, v.order_id) for v in report.violations] == [("reservation-settled", failed)]


async def test_a_confirmed_order_whose_reservation_is_not_committed_yet(world: World) -> None:
    await world.clean()
    confirmed = new_id()
    await world.confirmed(confirmed, committed=False)  # order.confirmed not heard by inventory yet
    assert (await check(world.settings, allow_running=True)).violations == []
    report = await check(world.settings, allow_running=False)
    assert [(v.rule, v.order_id) for v in report.violations] == [("reservation-settled", confirmed)]


async def test_a_compensation_that_never_finished(world: World) -> None:
    await world.clean()
    order_id = new_id()
    await world.reserve(order_id, "sku-a", 1, then="released")
    await world.saga(order_id, "FAILED", history=(("TaskScheduled", "main", "ReleaseReservedInventory"),))
    report = await check(world.settings)
    assert [(v.rule, v.order_id) for v in report.violations] == [("compensations-finished", order_id)]
    critical = new_id()
    await world.saga(critical, "FAILED_CRITICAL", history=(("TaskScheduled", "branch:0", "RefundPayment"),))
    assert [v.order_id for v in (await check(world.settings)).violations] == [order_id]


async def test_a_confirmed_order_without_its_record_and_a_record_without_confirmation(world: World) -> None:
    orders = await world.clean()
    await world.sql("orders", "DELETE FROM order_record WHERE order_id = $1", orders["CONFIRMED"])
    await world.record(orders["FAILED_COMPENSATED"])
    report = await check(world.settings)
    assert rules(report) == {"order-record"}
    assert {v.order_id for v in report.violations} == {orders["CONFIRMED"], orders["FAILED_COMPENSATED"]}


async def test_a_confirmed_order_nobody_was_told_of_and_a_failed_one_announced(world: World) -> None:
    orders = await world.clean()
    await world.sql("notify", "DELETE FROM notification WHERE order_id = $1", orders["CONFIRMED"])
    await world.notified(orders["FAILED"])
    report = await check(world.settings)
    assert rules(report) == {"notification"}
    assert {v.order_id for v in report.violations} == {orders["CONFIRMED"], orders["FAILED"]}


async def test_effects_of_an_order_that_was_never_submitted(world: World) -> None:
    await world.clean()
    ghost = new_id()
    await world.payment(ghost, 900)
    await world.record(ghost)
    report = await check(world.settings)
    assert [(v.rule, v.order_id) for v in report.violations] == [("effects-without-saga", ghost)]
    assert "payment, order record" in report.violations[0].detail


async def test_orderctl_check_prints_and_exits_1_on_a_violation(world: World) -> None:
    import asyncio
    import os
    import subprocess
    import sys

    await world.clean()
    env = dict(os.environ)
    for spec in SERVICES:
        env[f"ORDERFLOW_{spec.name.upper()}_DATABASE_URL"] = world.settings.database_url(spec.name)

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "orderctl", "check", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    clean = await asyncio.to_thread(run)
    assert clean.returncode == 0, clean.stderr
    assert "violations: 0" in clean.stdout and "orders_confirmed" in clean.stdout
    await world.saga(new_id(), "RUNNING")
    dirty = await asyncio.to_thread(run, "--json")
    assert dirty.returncode == 1
    assert [v["rule"] for v in json.loads(dirty.stdout)["violations"]] == ["terminal-status"]
    assert (await asyncio.to_thread(run, "--allow-running")).returncode == 0


async def test_the_running_stack_after_real_orders_has_no_violation(stack: Stack, channel, listener) -> None:
    sku = new_id("sku-")
    await seed(stack, {sku: (5, "4.00")})
    orders = [  # (expected status, order id, items, payment method): one of each path the stack can take
        ("CONFIRMED", new_id(), [(sku, 1)], "pm_card_visa"),
        ("CANCELLED", new_id(), [(sku, 99)], "pm_card_visa"),
        ("FAILED", new_id(), [(sku, 1)], "pm_card_chargeDeclined"),
        ("FAILED_COMPENSATED", new_id() + "-record", [(sku, 1)], "pm_card_visa"),
        ("CONFIRMED", new_id() + "-notify", [(sku, 1)], "pm_card_visa"),
    ]
    for _, order_id, items, pm in orders:
        await publish_raw(channel, json.dumps(order_body(order_id, items, pm)).encode())
    for status, order_id, _, _ in orders:
        assert (await outcome_of(listener, order_id, timeout=90))["status"] == status

    workflow = definition.load(Path(stack.workflow_file))
    report = await check(stack.settings, allow_running=True, stripe_url=stack.stripe_url, workflow=workflow)
    # Other tests of the session send commands straight to services, poison and generated messages included
    # (tests/integration/test_redelivery.py, tests/e2e/test_poison.py): their orders are theirs to judge. This
    # test judges its own orders, and the violations of no order (stock, ledger).
    mine = {order_id for _, order_id, _, _ in orders}
    assert [v for v in report.violations if v.order_id is None or v.order_id in mine] == []
    assert report.figures["orders"] >= 5 and report.figures["stripe_succeeded_charges"] >= 3
