"""The manual refund's rules (orchestrator/refund_policy.py): which sagas, how much, what a reply means."""

from decimal import Decimal

import pytest

from orchestrator import refund_policy
from orchestrator.refund_policy import NotRefundable, RefundTooLarge, plan, settled


def saga(*, payment: dict | None = None, **extra: object) -> dict:
    data: dict = {"orderId": "ORDER#1", "inventory": {"amount": 30.0, "currency": "eur"}, **extra}
    if payment is not None:
        data["payment"] = payment
    return {"status": "CONFIRMED", "main": {"key": "main", "current": None, "data": data}}


CHARGED = {"paymentIntentId": "pi_1", "status": "succeeded", "amount": 30.0}


def refund_result(amount: float | None, *, already: bool = False) -> dict:
    return {"refunded": True, "refundId": None if already else "re_1", "amount": amount, "alreadyRefunded": already}


def test_a_partial_refund_sends_its_amount_and_holds_it() -> None:
    got = plan("CONFIRMED", saga(payment=CHARGED), asked=Decimal("12.50"), held=Decimal(0))
    assert got.send == Decimal("12.50") and got.holds == Decimal("12.50")
    assert got.remaining == Decimal("30.00") and got.charge.currency == "eur" and got.charge.paymentIntentId == "pi_1"


def test_a_full_refund_sends_no_amount_and_holds_what_remains() -> None:
    got = plan("CONFIRMED", saga(payment=CHARGED), asked=None, held=Decimal("12.50"))
    assert got.send is None and got.holds == Decimal("17.50") == got.remaining


def test_more_than_remains_is_refused_with_what_remains() -> None:
    with pytest.raises(RefundTooLarge) as refused:
        plan("CONFIRMED", saga(payment=CHARGED), asked=Decimal("20"), held=Decimal("12.50"))
    assert refused.value.remaining == Decimal("17.50")
    assert plan("CONFIRMED", saga(payment=CHARGED), asked=Decimal("17.50"), held=Decimal("12.50")).send


def test_nothing_left_is_a_conflict() -> None:
    with pytest.raises(NotRefundable) as refused:
        plan("CONFIRMED", saga(payment=CHARGED), asked=None, held=Decimal("30"))
    assert refused.value.error == refund_policy.REFUND_EXCEEDS_CHARGE


@pytest.mark.parametrize("status", ["RUNNING", "FAILED_CRITICAL", "CANCELLED_BY_CUSTOMER"])
def test_sagas_not_ended_or_with_a_compensation_to_finish_are_refused(status: str) -> None:
    with pytest.raises(NotRefundable) as refused:
        plan(status, saga(payment=CHARGED), asked=None, held=Decimal(0))
    assert refused.value.status == status and refused.value.error is None


@pytest.mark.parametrize(
    "payment", [None, {"paymentIntentId": "pi_1", "status": "requires_action", "amount": 30.0}], ids=["none", "waiting"]
)
def test_a_saga_never_charged_is_refused(payment: dict | None) -> None:
    with pytest.raises(NotRefundable) as refused:
        plan("FAILED", saga(payment=payment), asked=Decimal("1"), held=Decimal(0))
    assert refused.value.error == refund_policy.NO_CHARGE


def test_the_workflows_own_refunds_count_wherever_their_result_lies() -> None:
    compensated = saga(payment=CHARGED, compensation=[{"refund": refund_result(30.0)}, {"release": {"ok": True}}])
    with pytest.raises(NotRefundable):
        plan("FAILED_COMPENSATED", compensated, asked=None, held=Decimal(0))
    partly = saga(payment=CHARGED, cancellation={"refund": refund_result(10.0)})
    assert plan("CANCELLED", partly, asked=None, held=Decimal(0)).holds == Decimal("20.00")
    already = saga(payment=CHARGED, compensation=[{"refund": refund_result(None, already=True)}])
    with pytest.raises(NotRefundable):
        plan("FAILED_COMPENSATED", already, asked=Decimal("1"), held=Decimal(0))


def test_replies() -> None:
    done = settled(True, refund_result(12.5), None, None)
    assert done.succeeded and done.amount == Decimal("12.50") and done.refundId == "re_1"
    already = settled(True, refund_result(None, already=True), None, None)
    assert not already.succeeded and already.error == refund_policy.REFUND_EXCEEDS_CHARGE
    nothing = settled(True, {"refunded": False, "refundId": None, "amount": None, "alreadyRefunded": False}, None, None)
    assert not nothing.succeeded and nothing.error == refund_policy.NO_CHARGE
    failed = settled(False, None, "RefundExceedsCharge", "Refund amount is greater than unrefunded amount")
    assert not failed.succeeded and failed.error == "RefundExceedsCharge" and "greater" in (failed.cause or "")


def test_an_order_with_a_cancellation_is_left_to_it() -> None:
    with pytest.raises(NotRefundable) as refused:
        plan("CONFIRMED", saga(payment=CHARGED), asked=Decimal("1"), held=Decimal(0), cancellation="RUNNING")
    assert "cancellation" in str(refused.value)
