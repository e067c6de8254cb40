"""Redrive, like Step Functions' RedriveExecution: a FAILED_CRITICAL saga restarts the step that failed,
without running again what succeeded; run numbers continue; the history shows it."""

import pytest
from sagadsl import ORDER, PRICED, SagaDsl, given

from orchestrator.state import Redriven

pytestmark = pytest.mark.unit


def to_critical_after_refund_fails(saga: SagaDsl) -> None:
    saga.expect_command("inventory.CheckInventory")
    saga.reply_ok(PRICED)
    saga.expect_command("inventory.ReserveInventory")
    saga.reply_ok({"reservationId": "res-1", "items": []})
    saga.expect_command("payment.ProcessPayment")
    saga.reply_ok({"paymentIntentId": "pi_1", "status": "succeeded", "amount": 129.57})
    saga.expect_command("orders.CreateOrderRecord")
    saga.reply_error("OrderRecordError")
    release = saga.expect_command("inventory.ReleaseInventory")
    saga.reply_ok({"released": True}, to=release)
    saga.reply_ok({"voided": False}, to=saga.expect_command("orders.VoidOrderRecord"))
    for run in range(4):  # 1 run + 3 retries of the refund branch
        refund = saga.expect_command("payment.RefundPayment")
        assert refund.attempt == run + 1
        saga.reply_error("RefundFailed", to=refund)
        if run < 3:
            saga.fire_retry("branch:0")
    saga.expect_status("FAILED_CRITICAL")


def test_redrive_reruns_only_the_failed_branch_and_continues_run_numbers() -> None:
    saga = given().start(ORDER)
    to_critical_after_refund_fails(saga)

    saga.send(Redriven())
    saga.expect_status("RUNNING")
    assert [c.resource for c in saga.last.commands] == ["payment.RefundPayment"]  # release succeeded: not rerun
    refund = saga.expect_command("payment.RefundPayment")
    assert refund.attempt == 5
    assert "ExecutionRedriven" in saga.events()

    saga.reply_ok({"refunded": True, "refundId": "re_1"}, to=refund)
    saga.expect_status("FAILED_COMPENSATED")
    assert [b.get("refund", b.get("release", b.get("void"))) for b in saga.data["compensation"]] == [
        {"refunded": True, "refundId": "re_1"},
        {"released": True},
        {"voided": False},
    ]


def test_redrive_of_a_failed_task_restarts_that_task() -> None:
    saga = given().start(ORDER)
    saga.expect_command("inventory.CheckInventory")
    saga.reply_ok(PRICED)
    saga.expect_command("inventory.ReserveInventory")
    saga.reply_ok({"reservationId": "res-1", "items": []})
    saga.expect_command("payment.ProcessPayment")
    saga.reply_error("PaymentDeclined")
    for run in range(4):
        saga.expect_command("inventory.ReleaseInventory")
        saga.reply_error("Database.ConnectionError")
        if run < 3:
            saga.fire_retry()
    saga.expect_status("FAILED_CRITICAL")

    saga.send(Redriven())
    release = saga.expect_command("inventory.ReleaseInventory")
    assert release.attempt == 5
    saga.reply_ok({"released": True})
    saga.expect_status("FAILED")  # PaymentFailedFinal, as it would have ended
    assert saga.saga.error is not None and saga.saga.error.Error == "PaymentDeclined"


def test_redrive_of_a_running_or_confirmed_saga_is_refused() -> None:
    saga = given().start(ORDER)
    saga.send(Redriven())
    assert "RedriveRefused" in saga.events()
    saga.expect_status("RUNNING")
