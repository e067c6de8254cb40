"""The checker's rules for the cancellation workflow and customer service's manual refunds: a cancelled order is
refunded exactly, restocked, voided and told; a manual refund stays within what it asked and what was charged,
each Idempotency-Key under one refund; the provider's refunds (read through the Stripe SDK from a real local
Stripe server) are each one a request recorded; a CANCELLATION_FAILED is named as critical, not a violation.

States are written as each service would leave them (test_checker.World); each test spoils one thing."""

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from harness import create_databases, drop_databases, settings_for
from test_checker import Provider, World, cancelled

from devservers.stripe_server import run_stripe_server
from orderctl.checker import check
from orderctl.config import CtlSettings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def fresh(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[CtlSettings]:
    settings = settings_for(amqp_url, tmp=tmp_path_factory.mktemp("checker-cancellation"))
    await create_databases(settings)
    try:
        yield settings
    finally:
        await drop_databases(settings)


@pytest.fixture
async def world(fresh: CtlSettings) -> AsyncIterator[World]:
    w = World(fresh)
    try:
        await w.clear()
        yield w
    finally:
        await w.close()


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    async with run_stripe_server() as server:
        p = Provider(server)
        try:
            yield p
        finally:
            await p.http.close_async()


def order(tag: str) -> str:
    return f"ORDER#{tag}-{uuid.uuid4().hex[:6]}"


async def manual_refund(
    world: World,
    order_id: str,
    key: str,
    asked: float | None,
    *,
    outcome: str = "succeeded",
    given: float | None = None,
    refund_id: str | None = None,
    error: str | None = None,
) -> None:
    """A manual refund as orchestrator/api_refund.py and manual_actions.settle leave it: the saga_manual_action
    row (what was asked, the outcome and result) and, for a refund that moved money, the payment ledger's row."""
    given = asked if given is None and outcome == "succeeded" else given
    request = {"amount": asked, "reason": "goodwill", "currency": "usd", "expected": asked}
    result = None
    if outcome != "pending":
        result = {"amount": given, "refundId": refund_id, "error": error, "cause": None}
    await world.sql(
        "orchestrator",
        """INSERT INTO saga_manual_action (command_id, order_id, action, request_key, request, amount, outcome, result)
           VALUES ($1, $2, 'refund', $3, $4::jsonb, $5, $6, $7::jsonb)""",
        str(uuid.uuid4()),
        order_id,
        key,
        request,
        Decimal(str(given if given is not None else asked or 0)),
        outcome,
        result,
    )
    if outcome == "succeeded" and given:
        await world.sql(
            "payment",
            """INSERT INTO refund (refund_id, order_id, payment_intent_id, amount_minor, status)
               VALUES ($1, $2, $3, $4, 'succeeded') ON CONFLICT (refund_id) DO NOTHING""",
            refund_id or f"re_{uuid.uuid4().hex}",
            order_id,
            f"pi_{order_id}",
            round(given * 100),
        )


async def refunded_by_hand(world: World, order_id: str) -> None:
    """A CONFIRMED order (10.00 USD) whose saga's history has the audit entry of a manual refund."""
    await world.reserve(order_id, "sku-a", 2, then="committed")
    await world.payment(order_id, 1000)
    await world.record(order_id)
    await world.notified(order_id)
    await world.saga(
        order_id,
        "CONFIRMED",
        history=(("ManualRefundRequested", "main", ""),),
        inventory={"amount": "10.00", "currency": "usd"},
    )


async def found(world: World, provider: Provider | None = None, **kwargs: Any) -> set[tuple[str, str | None]]:
    config = provider.config if provider is not None else None
    report = await check(world.settings, allow_running=False, provider=config, **kwargs)
    return {(v.rule, v.order_id) for v in report.violations}


async def test_refunded_by_hand_then_cancelled_is_clean_and_counted(world: World, provider: Provider) -> None:
    orders = await world.clean()
    await provider.agreeing(orders)
    order_id = order("partly")
    intent = await provider.intent(order_id, 1000)
    first = await provider.refund(intent.id, 150, key=f"{order_id}-manual-refund-a", order_id=order_id)
    second = await provider.refund(intent.id, 50, key=f"{order_id}-manual-refund-b", order_id=order_id)
    rest = await provider.refund(intent.id, key=f"{order_id}-cancel-refund", order_id=order_id)
    await refunded_by_hand(world, order_id)
    await manual_refund(world, order_id, "a", 1.5, refund_id=first.id)
    await manual_refund(world, order_id, "b", 0.5, refund_id=second.id)
    # Asked after the cancellation took the rest: refused, no money moved.
    await manual_refund(world, order_id, "c", 0.25, outcome="failed", error="RefundExceedsCharge")
    await cancelled(world, order_id, refunded=800, refund_id=rest.id, confirmed=False)
    report = await check(world.settings, allow_running=False, provider=provider.config)
    assert report.violations == []
    f = report.figures
    assert f["cancellations"] == 1 and f["cancellations_cancelled_by_customer"] == 1
    assert f["cancellations_cancellation_failed"] == 0 and f["reservations_restocked"] == 1
    assert f["cancellation_emails_sent"] == 1 and f["orders_refunded_by_hand"] == 1
    assert (f["manual_refunds"], f["manual_refunds_succeeded"], f["manual_refunds_failed"]) == (3, 2, 1)
    assert not any(note.startswith("critical") for note in report.notes)


async def test_a_cancellation_without_its_effects(world: World) -> None:
    await world.product("sku-a", 20)
    unvoided, untold, unstocked = order("unvoided"), order("untold"), order("unstocked")
    for order_id in (unvoided, untold, unstocked):
        await cancelled(world, order_id)
    await world.sql("orders", "DELETE FROM order_record WHERE order_id = $1", unvoided)
    await world.sql("notify", "DELETE FROM notification WHERE order_id = $1 AND kind = 'cancellation'", untold)
    conn = await world.conn("inventory")
    await conn.execute("UPDATE reservation SET status = 'released' WHERE order_id = $1", unstocked)
    report = await check(world.settings, allow_running=False)
    assert {(v.rule, v.order_id) for v in report.violations} == {
        ("cancellation-effects", unvoided),
        ("cancellation-effects", untold),
        ("cancellation-effects", unstocked),
    }, report.violations
    details = " | ".join(v.detail for v in report.violations)
    assert "missing, not VOIDED" in details and "cancellation email missing" in details
    assert "no reservation restocked (released)" in details


async def test_a_cancellation_notice_caught_as_a_notification_error_is_no_violation(world: World) -> None:
    await world.product("sku-a", 20)
    order_id = order("caught")
    await cancelled(world, order_id)
    await world.sql("notify", "DELETE FROM notification WHERE order_id = $1 AND kind = 'cancellation'", order_id)
    await world.sql(
        "orchestrator",
        """UPDATE saga SET state = jsonb_set(state, '{main,data,notificationError}', '{"Error": "x"}')
           WHERE order_id = $1""",
        f"{order_id} cancel",
    )
    assert await found(world) == set()


async def test_stock_restocked_or_a_notice_sent_for_an_order_nobody_cancelled(world: World) -> None:
    orders = await world.clean()
    kept = orders["CONFIRMED"]
    await world.sql("inventory", "UPDATE reservation SET status = 'restocked' WHERE order_id = $1", kept)
    await world.sql(
        "notify",
        "INSERT INTO notification (order_id, kind, channel, status) VALUES ($1, 'cancellation', 'email', 'sent')",
        orders["FAILED"],
    )
    report = await check(world.settings, allow_running=False)
    by_rule = {(v.rule, v.order_id): v.detail for v in report.violations}
    assert ("cancellation-effects", kept) in by_rule and "restocked" in by_rule[("cancellation-effects", kept)]
    assert "cancellation notice" in by_rule[("cancellation-effects", orders["FAILED"])]


async def test_a_failed_cancellation_is_critical_not_a_violation(world: World) -> None:
    await world.product("sku-a", 20)
    order_id = order("refused")
    await cancelled(world, order_id, "CANCELLATION_FAILED", refunded=None)
    report = await check(world.settings, allow_running=False)
    assert report.violations == []
    assert report.figures["cancellations_cancellation_failed"] == 1
    (critical,) = [note for note in report.notes if note.startswith("critical")]
    assert "1 cancellation(s) CANCELLATION_FAILED" in critical and f"{order_id} (RefundFailed)" in critical


async def test_manual_refunds_beyond_what_was_asked_or_charged_or_under_one_id(world: World) -> None:
    await world.product("sku-a", 20)
    more, twice, over, waiting = order("more"), order("twice"), order("over"), order("waiting")
    for order_id in (more, twice, over, waiting):
        await refunded_by_hand(world, order_id)
    await manual_refund(world, more, "a", 1.0, given=2.0, refund_id="re_more")
    await manual_refund(world, twice, "a", 1.0, refund_id="re_same")
    await manual_refund(world, twice, "b", 1.0, refund_id="re_same")
    await manual_refund(world, over, "a", 6.0, refund_id="re_over_a")
    await manual_refund(world, over, "b", 6.0, refund_id="re_over_b")
    await manual_refund(world, waiting, "a", 1.0, outcome="pending")
    report = await check(world.settings, allow_running=False)
    by_rule = {(v.rule, v.order_id): v.detail for v in report.violations if v.rule == "manual-refunds"}
    assert set(by_rule) == {("manual-refunds", o) for o in (more, twice, over, waiting)}, report.violations
    assert "gave back 2.0, asked 1.0" in by_rule[("manual-refunds", more)]
    assert "re_same recorded by 2 Idempotency-Keys" in by_rule[("manual-refunds", twice)]
    assert "1000 charged" in by_rule[("manual-refunds", over)]
    assert "still pending" in by_rule[("manual-refunds", waiting)]
    # While orders run, a pending refund is only on its way.
    running = await check(world.settings, allow_running=True)
    assert ("manual-refunds", waiting) not in {(v.rule, v.order_id) for v in running.violations}


async def test_a_refund_at_the_provider_no_request_recorded(world: World, provider: Provider) -> None:
    """The manual refund's answer was lost after Stripe refunded: recorded as failed, the money moved all the
    same. And a refund recorded as made that the provider does not hold."""
    orders = await world.clean()
    await provider.agreeing(orders)
    lost, phantom = order("lost"), order("phantom")
    for order_id in (lost, phantom):
        await refunded_by_hand(world, order_id)
    made = await provider.refund((await provider.intent(lost, 1000)).id, 100, order_id=lost)
    await manual_refund(world, lost, "a", 1.0, outcome="failed", error="Service.ConnectionError")
    await provider.intent(phantom, 1000)
    await manual_refund(world, phantom, "a", 1.0, refund_id="re_never_made")
    report = await check(world.settings, allow_running=False, provider=provider.config)
    by_rule = {(v.rule, v.order_id): v.detail for v in report.violations}
    assert set(by_rule) == {("refunds-accounted", lost), ("refunds-accounted", phantom)}, report.violations
    assert (
        made.id in by_rule[("refunds-accounted", lost)]
        and "recorded by no request" in by_rule[("refunds-accounted", lost)]
    )
    assert "re_never_made" in by_rule[("refunds-accounted", phantom)]


async def test_a_refund_made_at_stripes_dashboard_is_no_request_of_ours(world: World, provider: Provider) -> None:
    """Someone refunds part of the charge at Stripe's dashboard (no orderId in its metadata): within the charge,
    it is nobody's request here, and the manual refund made through Orderflow is accounted for."""
    orders = await world.clean()
    await provider.agreeing(orders)
    order_id = order("dashboard")
    await refunded_by_hand(world, order_id)
    intent = await provider.intent(order_id, 1000)
    await provider.refund(intent.id, 250)
    ours = await provider.refund(intent.id, 100, key=f"{order_id}-manual-refund-a", order_id=order_id)
    await manual_refund(world, order_id, "a", 1.0, refund_id=ours.id)
    assert await found(world, provider) == set()


async def test_a_cancelled_order_refunded_twice_or_not_in_full_at_the_provider(
    world: World, provider: Provider
) -> None:
    orders = await world.clean()
    await provider.agreeing(orders)
    short, doubled = order("short"), order("doubled")
    partial = await provider.refund(
        (await provider.intent(short, 1000)).id, 600, key=f"{short}-cancel-refund", order_id=short
    )
    await cancelled(world, short, refund_id=partial.id)
    intent = await provider.intent(doubled, 1000)
    first = await provider.refund(intent.id, 500, key=f"{doubled}-cancel-refund", order_id=doubled)
    again = f"{doubled}-cancel-refund-again"  # a second key, a second refund
    await provider.refund(intent.id, 500, key=again, order_id=doubled)
    await cancelled(world, doubled, refund_id=first.id)
    found_now = await found(world, provider)
    assert ("provider-money-returned", short) in found_now
    assert ("refunds-accounted", doubled) in found_now
    assert {o for _, o in found_now} == {short, doubled}
