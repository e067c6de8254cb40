"""An operator's cancel of a running saga, through the pure engine: the step in flight is abandoned and its Catch
taken as for CancelledByOperator, so the definition's compensation runs (the in-flight step's included); a late
reply or a stale timer changes nothing; a saga that ended, compensates already or is past its point of no return
is refused with nothing changed."""

from typing import Any

import pytest
from sagadsl import ORDER, PRICED, SagaDsl, given

from orchestrator import definition
from orchestrator.engine_cancel import (
    ALREADY_COMPENSATING,
    CANCELLED_BY_OPERATOR,
    PAST_NO_RETURN,
    SAGA_FINISHED,
    cancel_refusal,
    forward_path,
)
from orchestrator.state import Cancelled, TimerFired

pytestmark = pytest.mark.unit

BY = {"token": "ops-ada", "role": "operator"}


def cancel(saga: SagaDsl, reason: str = "customer called") -> SagaDsl:
    saga.send(Cancelled(reason=reason, by=BY))
    return saga


def to_payment(saga: SagaDsl) -> SagaDsl:
    saga.expect_command("inventory.CheckInventory")
    saga.reply_ok(PRICED)
    saga.expect_command("inventory.ReserveInventory")
    saga.reply_ok({"reservationId": "res-1", "items": []})
    return saga


def test_cancel_waiting_at_payment_refunds_and_releases_and_a_late_reply_changes_nothing() -> None:
    saga = to_payment(given().start(ORDER))
    payment = saga.expect_command("payment.ProcessPayment")
    timeout = saga.timers["main"]

    cancel(saga)
    assert [h.event for h in saga.last.history][:3] == ["ExecutionCancelled", "TaskCancelled", "Caught"]
    cancelled = saga.last.history[0]
    assert cancelled.error == CANCELLED_BY_OPERATOR and cancelled.cause == "customer called"
    assert cancelled.detail == {"by": BY}
    assert saga.last.timers["main"] is None, "the step's timeout is cleared"
    # ProcessPayment's Catch for an error with no business answer: it may have charged, so refund and release.
    assert saga.saga.main.current == "PaymentOutcomeUnknown"
    assert sorted(c.resource for c in saga.last.commands) == ["inventory.ReleaseInventory", "payment.RefundPayment"]
    assert saga.data["error"] == {"Error": CANCELLED_BY_OPERATOR, "Cause": "customer called"}

    saga.reply_ok({"paymentIntentId": "pi_1", "status": "succeeded"}, to=payment)
    assert [h.event for h in saga.last.history] == ["LateReplyIgnored"]
    assert not saga.last.commands and saga.saga.main.current == "PaymentOutcomeUnknown"
    saga.send(TimerFired(lane="main", token=timeout.token))
    assert not saga.last.history and not saga.last.commands, "the old step timeout fires nothing"

    saga.reply_ok({"refunded": False}, to=saga.expect_command("payment.RefundPayment"))
    saga.reply_ok({"released": True}, to=saga.expect_command("inventory.ReleaseInventory"))
    saga.expect_status("FAILED")
    assert saga.saga.error is not None and saga.saga.error.Error == CANCELLED_BY_OPERATOR
    assert saga.last.history[-1].event == "ExecutionFailed"


def test_cancel_in_a_retry_wait_releases_the_reservation_and_the_retry_never_fires() -> None:
    saga = given().start(ORDER)
    saga.expect_command("inventory.CheckInventory")
    saga.reply_ok(PRICED)
    saga.expect_command("inventory.ReserveInventory")
    saga.reply_error("Database.DeadlockDetected")
    retry_timer = saga.timers["main"]
    assert retry_timer.kind == "retry"

    cancel(saga)
    assert saga.saga.main.current == "ReservationFailed"  # the reservation may have taken effect: release it
    assert [c.resource for c in saga.last.commands] == ["inventory.ReleaseInventory"]
    release = saga.expect_command("inventory.ReleaseInventory")
    saga.send(TimerFired(lane="main", token=retry_timer.token))
    assert not saga.last.commands, "the retry wait does not run ReserveInventory again"
    saga.reply_ok({"released": True}, to=release)
    saga.expect_status("FAILED")
    assert "inventory.ReserveInventory" not in saga.resources()[2:]


def test_cancel_before_anything_was_allocated_compensates_nothing() -> None:
    saga = given().start(ORDER)
    saga.expect_command("inventory.CheckInventory")
    cancel(saga)
    saga.expect_status("FAILED").expect_no_command()
    assert saga.saga.main.current == "InventoryCheckFailed"
    assert saga.saga.error is not None and saga.saga.error.Error == CANCELLED_BY_OPERATOR


def test_cancel_while_recording_the_order_runs_the_full_compensation() -> None:
    saga = to_payment(given().start(ORDER))
    saga.expect_command("payment.ProcessPayment")
    saga.reply_ok({"paymentIntentId": "pi_1", "status": "succeeded", "amount": 129.57})
    saga.expect_command("orders.CreateOrderRecord")
    cancel(saga)
    assert sorted(c.resource for c in saga.last.commands) == [
        "inventory.ReleaseInventory",
        "orders.VoidOrderRecord",
        "payment.RefundPayment",
    ]
    for resource in ("payment.RefundPayment", "inventory.ReleaseInventory", "orders.VoidOrderRecord"):
        saga.reply_ok({}, to=saga.expect_command(resource))
    saga.expect_status("FAILED_COMPENSATED")
    assert saga.saga.error is not None and saga.saga.error.Error == CANCELLED_BY_OPERATOR


def test_a_compensation_that_fails_after_a_cancel_is_critical_and_redrives_the_compensation() -> None:
    saga = given().start(ORDER)
    saga.expect_command("inventory.CheckInventory")
    saga.reply_ok(PRICED)
    saga.expect_command("inventory.ReserveInventory")
    cancel(saga)
    for run in range(4):
        saga.reply_error("Service.Unavailable", to=saga.expect_command("inventory.ReleaseInventory"))
        if run < 3:
            saga.fire_retry()
    saga.expect_status("FAILED_CRITICAL")
    assert saga.saga.redrive is not None and saga.saga.redrive.state == "ReservationFailed"


@pytest.mark.parametrize("step", ["CommitReservation", "NotifyCustomer"])
def test_past_the_point_of_no_return_is_refused_and_changes_nothing(step: str) -> None:
    saga = to_payment(given().start(ORDER))
    saga.expect_command("payment.ProcessPayment")
    saga.reply_ok({"paymentIntentId": "pi_1", "status": "succeeded", "amount": 129.57})
    saga.expect_command("orders.CreateOrderRecord")
    saga.reply_ok({"orderRecordId": "o-1"})
    if step == "NotifyCustomer":
        saga.expect_command("inventory.CommitReservation")
        saga.reply_ok({})
    before = saga.saga.model_copy(deep=True)
    assert cancel_refusal(saga.workflow, before) is not None
    cancel(saga)
    assert saga.saga == before and not saga.last.commands and not saga.last.timers
    refused = saga.last.history[0]
    assert refused.event == "CancelRefused" and refused.detail is not None
    assert refused.detail["reason"] == PAST_NO_RETURN and "CONFIRMED" in refused.detail["detail"]


def test_a_saga_compensating_already_or_ended_is_refused() -> None:
    saga = to_payment(given().start(ORDER))
    saga.expect_command("payment.ProcessPayment")
    saga.reply_error("PaymentDeclined")
    assert saga.saga.main.current == "ReleaseReservedInventory"
    assert cancel_refusal(saga.workflow, saga.saga) is not None
    cancel(saga)
    assert saga.last.history[0].detail["reason"] == ALREADY_COMPENSATING  # type: ignore[index]
    saga.reply_ok({"released": True}, to=saga.expect_command("inventory.ReleaseInventory"))
    saga.expect_status("FAILED")
    cancel(saga)
    assert saga.last.history[0].detail["reason"] == SAGA_FINISHED  # type: ignore[index]
    assert saga.saga.error is not None and saga.saga.error.Error == "PaymentDeclined"


def test_the_forward_path_is_the_definitions_own() -> None:
    assert forward_path(definition.load()) == {
        "CheckInventory",
        "ReserveInventory",
        "ProcessPayment",
        "CreateOrderRecord",
        "CommitReservation",
        "NotifyCustomer",
        "OrderSuccess",
    }


def waiting_machine(catch: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Reserve, hold at a Wait, then pay; the Wait's own way out on a cancel is what ``catch`` of Hold says."""
    hold: dict[str, Any] = {"Type": "Wait", "Seconds": 600, "Next": "Pay"}
    states: dict[str, Any] = {
        "Reserve": {"Type": "Task", "Resource": "svc.Reserve", "Next": "Hold"},
        "Hold": hold,
        "Pay": {"Type": "Task", "Resource": "svc.Pay", "End": True},
        "Undo": {"Type": "Task", "Resource": "svc.Undo", "ResultPath": None, "Next": "Cancelled"},
        "Cancelled": {"Type": "Fail", "ErrorPath": "$.error.Error"},
    }
    if catch is not None:  # a Parallel around the Wait: a state with a Catch holds the lane
        states["Hold"] = {
            "Type": "Parallel",
            "Branches": [{"StartAt": "Pause", "States": {"Pause": {**hold, "Next": None, "End": True}}}],
            "Catch": catch,
            "Next": "Pay",
        }
        states["Hold"]["Branches"][0]["States"]["Pause"].pop("Next")
    return {"StartAt": "Reserve", "States": states}


def test_a_wait_is_stopped_and_its_timer_never_fires_the_saga_forward() -> None:
    saga = given(waiting_machine(None)).start({})
    saga.expect_command("svc.Reserve")
    saga.reply_ok({})
    wait = saga.timers["main"]
    assert wait.kind == "wait"
    cancel(saga)
    saga.expect_status("FAILED").expect_no_command()  # a Wait has no Catch: the saga fails, as ASL says
    saga.send(TimerFired(lane="main", token=wait.token))
    assert "svc.Pay" not in saga.resources()


def test_the_compensation_is_the_catch_the_definition_names() -> None:
    catch = [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Undo"}]
    saga = given(waiting_machine(catch)).start({})
    saga.expect_command("svc.Reserve")
    saga.reply_ok({})
    assert saga.timers["branch:0"].kind == "wait"
    cancel(saga)
    assert saga.last.timers["branch:0"] is None
    saga.reply_ok({}, to=saga.expect_command("svc.Undo"))
    saga.expect_status("FAILED")
    assert saga.saga.error is not None and saga.saga.error.Error == CANCELLED_BY_OPERATOR
    assert "svc.Pay" not in saga.resources()
