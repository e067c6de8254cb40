"""The invariant checker: clean states pass, each kind of violation is reported by exactly its rule.

States are written directly in SQL into a fresh set of databases (stock through the inventory
repository, as the service moves it, so the stock ledger's trigger sees the real statements), and the
payment provider's records through the Stripe SDK into a real local Stripe server, as the payment
service makes them; the last test runs the checker against the session's stack after real orders.
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
import stripe
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

from devservers.stripe_server import RunningServer, run_stripe_server
from orchestrator import definition
from orderctl.checker import RULES, CheckError, ProviderConfig, Report, check
from orderctl.config import SERVICES, CtlSettings
from plumbing.db import connect
from services.inventory import repository as inventory_repo

pytestmark = pytest.mark.integration

TABLES = {
    "orchestrator": "saga_manual_action, saga_history, saga_timer, saga",
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
        await self.saga(order_id, "CONFIRMED", inventory={"amount": "10.00", "currency": "usd"})

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
        await self.saga(
            orders["NOTIFY"],
            "CONFIRMED",
            inventory={"amount": "5.00", "currency": "usd"},
            notificationError={"Error": "NotificationError", "Cause": "x"},
        )
        return orders


class Provider:
    """The payment provider's records, made through the Stripe SDK against a real local Stripe server."""

    def __init__(self, server: RunningServer) -> None:
        self.config = ProviderConfig(api_key="sk_test_checker", api_base=server.url)
        self.http = stripe.AIOHTTPClient()
        self.client = stripe.StripeClient(
            "sk_test_checker", base_addresses={"api": server.url}, http_client=self.http, max_network_retries=0
        )

    async def intent(self, order_id: str, amount: int, *, pm: str = "pm_card_visa", **extra: Any) -> Any:
        """A PaymentIntent as the payment service creates it (metadata orderId); confirmed unless told not to."""
        params: dict[str, Any] = {
            "amount": amount,
            "currency": "usd",
            "payment_method": pm,
            "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
            "confirm": True,
            "metadata": {"orderId": order_id},
            **extra,
        }
        try:
            return await self.client.v1.payment_intents.create_async(params)
        except stripe.CardError as declined:  # the intent stays, requires_payment_method
            assert declined.error is not None
            return declined.error.payment_intent

    async def refund(
        self, intent_id: str, amount: int | None = None, *, key: str | None = None, order_id: str | None = None
    ) -> Any:
        """A refund as the payment service makes it (``order_id`` in its metadata, ``key`` as its
        Idempotency-Key), or, without ``order_id``, as one made at Stripe's dashboard."""
        params: dict[str, Any] = {"payment_intent": intent_id} | ({"amount": amount} if amount else {})
        if order_id is not None:
            params["metadata"] = {"orderId": order_id, "reason": "test"}
        return await self.client.v1.refunds.create_async(params, {"idempotency_key": key} if key else None)

    async def agreeing(self, orders: dict[str, str]) -> None:
        """What the clean orders left at the provider: the CONFIRMED ones charged, the compensated one refunded
        in full, the failed one declined, the cancelled one never charged."""
        await self.intent(orders["CONFIRMED"], 1000)
        await self.intent(orders["NOTIFY"], 500)
        await self.refund((await self.intent(orders["FAILED_COMPENSATED"], 500)).id)
        await self.intent(orders["FAILED"], 500, pm="pm_card_chargeDeclined")


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    async with run_stripe_server() as server:
        p = Provider(server)
        try:
            yield p
        finally:
            await p.http.close_async()


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


def test_every_rule_has_a_name_and_a_docstring() -> None:
    names = [name for name, _ in RULES]
    assert len(names) == len(set(names)) == 18
    assert all(fn.__doc__ for _, fn in RULES)


async def test_a_clean_state_has_no_violation_and_counts_its_figures(world: World, provider: Provider) -> None:
    orders = await world.clean()
    report = await check(world.settings, allow_running=False)
    assert report.violations == []
    assert len(report.notes) == 1 and "payment provider not read" in report.notes[0]
    assert "provider-charge" in report.notes[0] and "provider_payment_intents" not in report.figures
    f = report.figures
    assert f["orders"] == 5 and f["orders_confirmed"] == 2 and f["orders_failed_compensated"] == 1
    assert f["charges"] == 3 and f["charged_minor"] == 2000 and f["refunded_minor"] == 500
    assert f["stock"] == 17 and f["stock_received"] == 20 and f["reservations_committed"] == 2
    assert f["order_records"] == 2 and f["emails_sent"] == 1 and f["emails_failed"] == 1
    assert f["compensations_started"] == 3

    # The provider agrees: one intent per charged order, the compensated one refunded in full.
    await provider.agreeing(orders)
    report = await check(world.settings, allow_running=False, provider=provider.config)
    assert report.violations == [] and report.notes[0].startswith("payment provider read at http://127.0.0.1:")
    f = report.figures
    assert f["provider_orders_read"] == 5 and f["provider_payment_intents"] == 4 and f["provider_succeeded"] == 3
    assert f["provider_received_minor"] == 2000 and f["provider_refunded_minor"] == 500


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


# -- the payment provider, read through the Stripe SDK -------------------------------------------
async def judged(world: World, provider: Provider, **kwargs: Any) -> list[tuple[str, str | None]]:
    report = await check(world.settings, provider=provider.config, **kwargs)
    return [(v.rule, v.order_id) for v in report.violations]


async def test_a_failed_order_whose_charge_was_never_refunded(world: World, provider: Provider) -> None:
    orders = await world.clean()
    await provider.agreeing(orders)
    # The answer was lost after the provider charged: our ledger has no payment, the provider has the money.
    lost = new_id()
    await world.reserve(lost, "sku-a", 1, then="released")
    await world.saga(lost, "FAILED", history=RELEASED)
    intent = await provider.intent(lost, 500)
    assert (await check(world.settings)).violations == []  # the ledger alone cannot see it
    assert await judged(world, provider) == [("provider-money-returned", lost)]
    await provider.refund(intent.id, 200)  # part of it back is not enough
    report = await check(world.settings, provider=provider.config)
    assert [v.rule for v in report.violations] == ["provider-money-returned"]
    assert "300 kept" in report.violations[0].detail and intent.id in report.violations[0].detail
    await provider.refund(intent.id)
    assert await judged(world, provider) == []


async def test_a_refund_our_ledger_has_but_the_provider_does_not(world: World, provider: Provider) -> None:
    orders = await world.clean()
    await provider.agreeing(orders)
    cancelled = orders["CANCELLED"]
    await world.payment(cancelled, 700)
    await world.refund(cancelled, 700)  # the ledger balances, the provider kept the money
    await provider.intent(cancelled, 700)
    assert await judged(world, provider) == [("provider-money-returned", cancelled)]


async def test_intents_that_can_still_take_money(world: World, provider: Provider) -> None:
    orders = await world.clean()
    await provider.agreeing(orders)
    held = await provider.intent(orders["CANCELLED"], 500, capture_method="manual")  # requires_capture
    assert held.status == "requires_capture"
    unconfirmed = await provider.intent(orders["FAILED"], 500, confirm=False)  # requires_confirmation
    challenged = await provider.intent(orders["FAILED_COMPENSATED"], 500, pm="pm_card_threeDSecure2Required")
    assert (unconfirmed.status, challenged.status) == ("requires_confirmation", "requires_action")
    found = await judged(world, provider)
    open_ = sorted(order_id for rule, order_id in found if rule == "provider-intent-open")
    assert open_ == sorted([orders["CANCELLED"], orders["FAILED"], orders["FAILED_COMPENSATED"]])
    # Canceled, they can take nothing more (the authorization is released).
    for intent in (held, unconfirmed, challenged):
        await provider.client.v1.payment_intents.cancel_async(intent.id)
    assert {rule for rule, _ in await judged(world, provider)} == {"single-charge"}  # 2 intents for 2 orders


async def test_a_confirmed_order_charged_twice(world: World, provider: Provider) -> None:
    orders = await world.clean()
    await provider.agreeing(orders)
    second = await provider.intent(orders["CONFIRMED"], 1000)
    assert sorted(await judged(world, provider)) == [
        ("provider-charge", orders["CONFIRMED"]),
        ("single-charge", orders["CONFIRMED"]),
    ]
    await provider.refund(second.id)  # the duplicate refunded: one standing charge, still two intents
    assert await judged(world, provider) == [("single-charge", orders["CONFIRMED"])]


async def test_a_confirmed_order_charged_the_wrong_amount_or_not_at_all(world: World, provider: Provider) -> None:
    orders = await world.clean()
    await provider.agreeing(orders)
    wrong = new_id()
    await world.confirmed(wrong)  # priced 10.00 usd
    await provider.intent(wrong, 1200)
    report = await check(world.settings, provider=provider.config)
    assert [(v.rule, v.order_id) for v in report.violations] == [("provider-charge", wrong)]
    assert "priced 1000 usd, charged 1200 usd" in report.violations[0].detail

    refunded = new_id()
    await world.confirmed(refunded)
    await provider.refund((await provider.intent(refunded, 1000)).id, 100)
    never = new_id()
    await world.confirmed(never)
    details = {
        v.order_id: v.detail
        for v in (await check(world.settings, provider=provider.config)).violations
        if v.order_id != wrong
    }
    assert set(details) == {refunded, never}
    assert "partly refunded" in details[refunded] and "0 standing charges" in details[never]


async def test_running_orders_are_not_read_from_the_provider(world: World, provider: Provider) -> None:
    orders = await world.clean()
    await provider.agreeing(orders)
    running = new_id()
    await world.saga(running, "RUNNING")
    await provider.intent(running, 500)  # charged, the saga goes on
    report = await check(world.settings, allow_running=True, provider=provider.config)
    assert report.violations == [] and report.figures["provider_orders_read"] == 5


async def test_the_provider_read_from_settings_and_an_unreachable_one(world: World, provider: Provider) -> None:
    orders = await world.clean()
    await provider.agreeing(orders)
    await provider.intent(orders["CANCELLED"], 500)
    configured = world.settings.model_copy(update={"stripe_api_base": provider.config.api_base})
    report = await check(configured)
    assert [(v.rule, v.order_id) for v in report.violations] == [("provider-money-returned", orders["CANCELLED"])]
    with pytest.raises(CheckError, match="payment provider"):
        await check(world.settings, provider=ProviderConfig(api_key="sk_live_wrong", api_base=provider.config.api_base))


async def test_a_voided_record_is_no_confirmed_record(world: World) -> None:
    orders = await world.clean()
    compensated = orders["FAILED_COMPENSATED"]
    await world.record(compensated)
    await world.sql("orders", "UPDATE order_record SET status = 'VOIDED' WHERE order_id = $1", compensated)
    assert (await check(world.settings)).violations == []
    await world.sql("orders", "UPDATE order_record SET status = 'VOIDED' WHERE order_id = $1", orders["CONFIRMED"])
    assert [(v.rule, v.order_id) for v in (await check(world.settings)).violations] == [
        ("order-record", orders["CONFIRMED"])
    ]


async def test_a_confirmed_order_with_a_released_reservation_beside_its_committed_one(world: World) -> None:
    orders = await world.clean()
    conn = await world.conn("inventory")
    async with conn.transaction():
        assert await inventory_repo.take_stock(conn, "sku-a", 1)
        late = await inventory_repo.create_reservation(conn, orders["CONFIRMED"], "late", {"sku-a": 1})
    async with conn.transaction():
        await inventory_repo.release_reservation(conn, late)
    report = await check(world.settings)
    assert [(v.rule, v.order_id) for v in report.violations] == [("reservation-settled", orders["CONFIRMED"])]
    assert "released" in report.violations[0].detail


async def cancelled(
    world: World,
    order_id: str,
    status: str = "CANCELLED_BY_CUSTOMER",
    *,
    refunded: int | None = 1000,
    refund_id: str | None = None,
    confirmed: bool = True,
) -> None:
    """A CONFIRMED order (unless ``confirmed`` is False: the caller made it), then its cancellation saga as the
    cancellation workflow leaves it: ``refunded`` (minor units, under ``refund_id``), restocked, voided and
    notified when it completed; only refunded when it failed at the restock."""
    if confirmed:
        await world.confirmed(order_id)
    if refunded:
        await world.refund(order_id, refunded)
    if status == "CANCELLED_BY_CUSTOMER":
        conn = await world.conn("inventory")
        async with conn.transaction():
            for reservation in await inventory_repo.sold_reservations(conn, order_id):
                await inventory_repo.restock_reservation(conn, reservation)
        await world.sql("orders", "UPDATE order_record SET status = 'VOIDED' WHERE order_id = $1", order_id)
        await world.sql(
            "notify",
            "INSERT INTO notification (order_id, kind, channel, status) VALUES ($1, 'cancellation', 'email', 'sent')",
            order_id,
        )
    data: dict[str, Any] = {"refund": {"refunded": True, "refundId": refund_id}} if refund_id else {}
    if status != "CANCELLED_BY_CUSTOMER":
        data["error"] = {"Error": "RefundFailed", "Cause": "refused"}
    state = {"orderId": order_id, "status": status, "main": {"key": "main", "current": None, "data": data}}
    await world.sql(
        "orchestrator",
        """INSERT INTO saga (order_id, status, state, request_hash, workflow_name)
           VALUES ($1, $2, $3::jsonb, 'h', 'cancellation')""",
        f"{order_id} cancel",
        status,
        state,
    )


async def test_a_cancelled_order_refunded_restocked_and_voided_is_clean(world: World, provider: Provider) -> None:
    orders = await world.clean()
    order_id = f"ORDER#cancel-{uuid.uuid4().hex[:6]}"
    await provider.agreeing(orders)
    refund = await provider.refund((await provider.intent(order_id, 1000)).id)
    await cancelled(world, order_id, refund_id=refund.id)
    report = await check(world.settings, allow_running=False, provider=provider.config)
    assert report.violations == []


async def test_a_failed_cancellation_is_left_to_its_redrive_and_a_completed_one_must_refund(world: World) -> None:
    await world.product("sku-a", 20)
    failed, unrefunded = f"ORDER#cf-{uuid.uuid4().hex[:6]}", f"ORDER#cu-{uuid.uuid4().hex[:6]}"
    await cancelled(world, failed, "CANCELLATION_FAILED")
    await cancelled(world, unrefunded, refunded=None)
    report = await check(world.settings, allow_running=False)
    assert {(v.rule, v.order_id) for v in report.violations} == {("money-iff-confirmed", unrefunded)}


async def test_orderctl_check_prints_and_exits_1_on_a_violation(world: World, provider: Provider) -> None:
    import asyncio
    import os
    import subprocess
    import sys

    orders = await world.clean()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "ORDERFLOW_STRIPE_"))}
    for spec in SERVICES:
        env[f"ORDERFLOW_{spec.name.upper()}_DATABASE_URL"] = world.settings.database_url(spec.name)

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "orderctl", "check", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    clean = await asyncio.to_thread(run)
    assert clean.returncode == 0, clean.stderr
    assert "violations: 0" in clean.stdout and "orders_confirmed" in clean.stdout
    assert "note: payment provider not read" in clean.stdout
    await provider.agreeing(orders)
    read = await asyncio.to_thread(run, "--stripe-url", str(provider.config.api_base))
    assert read.returncode == 0, read.stdout + read.stderr
    assert "provider_succeeded" in read.stdout and "note: payment provider read at" in read.stdout
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
    assert report.figures["orders"] >= 5 and report.figures["provider_succeeded"] >= 3


async def test_line_holds_settle_like_one_reservation_and_a_product_held_twice_is_a_violation(world: World) -> None:
    """A definition that reserves line by line (examples/step-functions) leaves one reservation per product,
    committed like an order's one reservation; the same product held by two reservations of one order is the
    double hold reservation-settled looks for."""
    await world.clean()
    await world.product("sku-b", 4)
    lines = new_id()
    conn = await world.conn("inventory")
    async with conn.transaction():
        for sku, quantity in (("sku-a", 1), ("sku-b", 2)):
            assert await inventory_repo.take_stock(conn, sku, quantity)
            await inventory_repo.create_reservation(conn, lines, f"{lines}-reserve-{sku}", {sku: quantity})
    await inventory_repo.commit_reservations(conn, lines)
    await world.payment(lines, 1500)
    await world.record(lines)
    await world.notified(lines)
    await world.saga(lines, "CONFIRMED", inventory={"amount": "15.00", "currency": "usd"})
    assert (await check(world.settings)).violations == []

    async with conn.transaction():
        assert await inventory_repo.take_stock(conn, "sku-a", 1)
        await inventory_repo.create_reservation(conn, lines, f"{lines}-reserve", {"sku-a": 1})
    await inventory_repo.commit_reservations(conn, lines)
    report = await check(world.settings)
    assert [(v.rule, v.order_id, v.detail) for v in report.violations] == [
        ("reservation-settled", lines, "2 reservations hold sku-a")
    ]


async def test_effects_older_than_the_saga_retention_need_no_saga(world: World) -> None:
    """The orchestrator purges finished sagas after SAGA_RETENTION_DAYS while the services keep their rows: an
    order whose effects are all older than that is not judged; one with a newer effect still is."""
    await world.clean()
    purged, ghost = new_id(), new_id()
    for order_id in (purged, ghost):
        await world.payment(order_id, 900)
        await world.record(order_id)
    for service, table in (("payment", "payment"), ("orders", "order_record")):
        aged = f"UPDATE {table} SET created_at = now() - interval '100 days' WHERE order_id = $1"
        await world.sql(service, aged, purged)
    report = await check(world.settings)
    assert [(v.rule, v.order_id) for v in report.violations] == [("effects-without-saga", ghost)]
    report = await check(world.settings, saga_retention_days=365)
    assert sorted(v.order_id for v in report.violations) == sorted([purged, ghost])
