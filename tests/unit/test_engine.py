"""The engine against Amazon States Language semantics: given saga -> expect command -> reply -> expect ..."""

from datetime import timedelta
from typing import Any

import pytest
from sagadsl import T0, SagaDsl, given

from orchestrator.state import ReplyReceived, TimerFired

pytestmark = pytest.mark.unit

ORDER: dict[str, Any] = {
    "orderId": "ORDER#1",
    "customer": {"email": "ada@example.com", "name": "Ada"},
    "items": [{"productId": "456", "quantity": 2}],
    "currency": "usd",
    "paymentMethodId": "pm_card_visa",
}
PRICED = {"amount": 129.57, "currency": "usd", "lines": [{"productId": "456", "quantity": 2, "unitPrice": 64.785}]}
RESERVED = {"reservationId": "res-1", "status": "reserved"}
PAID = {"paymentIntentId": "pi_1", "status": "succeeded"}
COMMITTED = {"committed": 1}
RECORDED = {"orderId": "ORDER#1", "status": "CONFIRMED"}
NOTIFIED = {"channel": "email"}


def one_task(
    retry: list[dict[str, Any]] | None = None,
    catch: list[dict[str, Any]] | None = None,
    timeout: float = 30,
) -> dict[str, Any]:
    """A definition with one Task 'Work' whose catchers can lead to 'Caught' or 'CaughtOther'."""
    return {
        "StartAt": "Work",
        "States": {
            "Work": {
                "Type": "Task",
                "Resource": "svc.Work",
                "Parameters": {"orderId.$": "$.orderId"},
                "ResultPath": "$.work",
                "TimeoutSeconds": timeout,
                "Retry": retry or [],
                "Catch": catch or [],
                "Next": "Done",
            },
            "Done": {"Type": "Succeed", "Status": "DONE"},
            "Caught": {"Type": "Fail", "Status": "CAUGHT", "ErrorPath": "$.error.Error"},
            "CaughtOther": {"Type": "Fail", "Status": "CAUGHT_OTHER", "ErrorPath": "$.error.Error"},
        },
    }


CATCH_ALL = [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Caught"}]


def fail_n_times(saga: SagaDsl, resource: str, error: str, n: int, lane: str = "main") -> list[float]:
    """Fail ``n`` runs of ``resource`` in a row and return the retry waits the engine chose."""
    waits = []
    for i in range(n):
        saga.expect_command(resource)
        saga.reply_error(error, f"run {i + 1}")
        if i < n - 1:
            waits.append(saga.retry_delay(lane))
            saga.fire_retry(lane)
    return waits


# == Retry scan order, counts, backoff =========================================================
def test_first_matching_retrier_applies_and_an_exhausted_one_ends_retrying() -> None:
    saga = given(
        one_task(
            retry=[
                {"ErrorEquals": ["ErrorX"], "IntervalSeconds": 3, "MaxAttempts": 1},
                {"ErrorEquals": ["States.ALL"], "IntervalSeconds": 7, "MaxAttempts": 5},
            ],
            catch=CATCH_ALL,
        )
    ).start(ORDER)
    saga.expect_command("svc.Work")
    saga.reply_error("ErrorX").expect_retry_delay(3)
    saga.fire_retry()
    saga.expect_command("svc.Work")
    # The first retrier is exhausted: the States.ALL retrier behind it is not tried.
    saga.reply_error("ErrorX").expect_status("CAUGHT").expect_no_command()
    assert saga.resources() == ["svc.Work", "svc.Work"]


def test_a_later_retrier_applies_when_earlier_ones_do_not_match() -> None:
    saga = given(
        one_task(
            retry=[
                {"ErrorEquals": ["ErrorX"], "IntervalSeconds": 3},
                {"ErrorEquals": ["States.ALL"], "IntervalSeconds": 7},
            ],
            catch=CATCH_ALL,
        )
    ).start(ORDER)
    saga.expect_command("svc.Work")
    saga.reply_error("ErrorY").expect_retry_delay(7)


def test_catchers_are_scanned_in_order() -> None:
    catch = [
        {"ErrorEquals": ["ErrorX"], "ResultPath": "$.error", "Next": "Caught"},
        {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "CaughtOther"},
    ]
    first = given(one_task(catch=catch)).start(ORDER)
    first.expect_command("svc.Work")
    first.reply_error("ErrorX").expect_status("CAUGHT")
    other = given(one_task(catch=catch)).start(ORDER)
    other.expect_command("svc.Work")
    other.reply_error("ErrorY").expect_status("CAUGHT_OTHER")


def test_no_matching_catcher_fails_the_saga() -> None:
    saga = given(one_task(catch=[{"ErrorEquals": ["ErrorX"], "Next": "Caught"}])).start(ORDER)
    saga.expect_command("svc.Work")
    saga.reply_error("ErrorY", "boom").expect_status("FAILED").expect_no_command()
    assert saga.saga.error is not None
    assert (saga.saga.error.Error, saga.saga.error.Cause) == ("ErrorY", "boom")
    assert "NoCatcherMatched" in saga.events()
    assert saga.timers == {}


def test_max_attempts_counts_retries_so_runs_are_one_more() -> None:
    saga = given(one_task(retry=[{"ErrorEquals": ["ErrorX"], "MaxAttempts": 2}], catch=CATCH_ALL)).start(ORDER)
    fail_n_times(saga, "svc.Work", "ErrorX", 3)
    saga.expect_status("CAUGHT")
    assert saga.resources() == ["svc.Work"] * 3
    assert [c.attempt for d in saga.decisions for c in d.commands] == [1, 2, 3]


def test_max_attempts_zero_never_retries() -> None:
    saga = given(
        one_task(
            retry=[{"ErrorEquals": ["ErrorX"], "MaxAttempts": 0}, {"ErrorEquals": ["States.ALL"]}], catch=CATCH_ALL
        )
    ).start(ORDER)
    saga.expect_command("svc.Work")
    saga.reply_error("ErrorX").expect_status("CAUGHT").expect_no_command()
    assert "RetryScheduled" not in saga.events()


def test_default_retrier_waits_1_2_4_and_runs_four_times() -> None:
    saga = given(one_task(retry=[{"ErrorEquals": ["ErrorX"]}], catch=CATCH_ALL)).start(ORDER)
    assert fail_n_times(saga, "svc.Work", "ErrorX", 4) == [1, 2, 4]
    saga.expect_status("CAUGHT")


def test_backoff_is_capped_by_max_delay_seconds() -> None:
    retry = [
        {"ErrorEquals": ["ErrorX"], "IntervalSeconds": 2, "BackoffRate": 3, "MaxAttempts": 4, "MaxDelaySeconds": 10}
    ]
    saga = given(one_task(retry=retry, catch=CATCH_ALL)).start(ORDER)
    assert fail_n_times(saga, "svc.Work", "ErrorX", 5) == [2, 6, 10, 10]


def test_full_jitter_waits_at_most_the_capped_backoff() -> None:
    retry = [
        {
            "ErrorEquals": ["ErrorX"],
            "IntervalSeconds": 2,
            "BackoffRate": 2,
            "MaxAttempts": 5,
            "MaxDelaySeconds": 10,
            "JitterStrategy": "FULL",
        }
    ]
    ceilings = [2, 4, 8, 10, 10]
    all_waits = []
    for seed in range(40):
        saga = SagaDsl(given(one_task(retry=retry, catch=CATCH_ALL)).workflow, seed=seed).start(ORDER)
        waits = fail_n_times(saga, "svc.Work", "ErrorX", 6)
        assert all(0 <= w <= c for w, c in zip(waits, ceilings, strict=True)), waits
        all_waits.append(waits)
    assert len({tuple(w) for w in all_waits}) == 40, "jitter draws from the rng"
    # Same seed, same waits: the jitter is the context's rng, not a global one.
    again = SagaDsl(given(one_task(retry=retry, catch=CATCH_ALL)).workflow, seed=0).start(ORDER)
    assert fail_n_times(again, "svc.Work", "ErrorX", 6) == all_waits[0]


@pytest.mark.parametrize(
    ("max_attempts", "waits", "caught_at"),
    [
        # ASL (the AWS "complex retry scenarios" example): with MaxAttempts 2 the second ErrorB finds the
        # first retrier spent, so the fourth error goes to Catch.
        (2, [1, 2, 5], 4),
        # With room for a third retry the first retrier waits 1 * 2^2 = 4 s, and the fifth error is caught.
        (3, [1, 2, 5, 4], 5),
    ],
)
def test_each_retrier_counts_its_own_retries_across_errors(
    max_attempts: int, waits: list[float], caught_at: int
) -> None:
    retry = [
        {"ErrorEquals": ["ErrorA", "ErrorB"], "IntervalSeconds": 1, "MaxAttempts": max_attempts, "BackoffRate": 2},
        {"ErrorEquals": ["ErrorC"], "IntervalSeconds": 5},
    ]
    saga = given(one_task(retry=retry, catch=CATCH_ALL)).start(ORDER)
    seen, errors = [], 0
    for error in ["ErrorA", "ErrorB", "ErrorC", "ErrorB", "ErrorB"]:
        saga.expect_command("svc.Work")
        saga.reply_error(error)
        errors += 1
        if saga.saga.finished:
            break
        seen.append(saga.retry_delay())
        saga.fire_retry()
    assert seen == waits
    assert errors == caught_at
    saga.expect_status("CAUGHT")
    assert saga.data["error"]["Error"] == "ErrorB"


# == Error names ===============================================================================
def test_states_task_failed_retrier_does_not_retry_a_timeout() -> None:
    saga = given(one_task(retry=[{"ErrorEquals": ["States.TaskFailed"]}], catch=CATCH_ALL)).start(ORDER)
    saga.expect_command("svc.Work")
    saga.fire_timeout().expect_status("CAUGHT")
    assert saga.data["error"]["Error"] == "States.Timeout"


def test_states_task_failed_retrier_retries_any_named_error() -> None:
    saga = given(one_task(retry=[{"ErrorEquals": ["States.TaskFailed"]}], catch=CATCH_ALL)).start(ORDER)
    saga.expect_command("svc.Work")
    saga.reply_error("AnythingAtAll").expect_retry_delay(1)


def test_states_all_retrier_retries_a_timeout() -> None:
    saga = given(one_task(retry=[{"ErrorEquals": ["States.ALL"], "IntervalSeconds": 4}], catch=CATCH_ALL)).start(ORDER)
    saga.expect_command("svc.Work")
    saga.fire_timeout().expect_retry_delay(4)


def test_states_task_failed_catcher_does_not_catch_a_timeout() -> None:
    catch = [
        {"ErrorEquals": ["States.TaskFailed"], "ResultPath": "$.error", "Next": "Caught"},
        {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "CaughtOther"},
    ]
    saga = given(one_task(catch=catch)).start(ORDER)
    saga.expect_command("svc.Work")
    saga.fire_timeout().expect_status("CAUGHT_OTHER")


def test_catch_result_path_puts_error_and_cause_there_and_keeps_the_input() -> None:
    saga = given(one_task(catch=CATCH_ALL)).start(ORDER)
    saga.expect_command("svc.Work")
    saga.reply_error("ErrorX", "went wrong")
    assert saga.data["error"] == {"Error": "ErrorX", "Cause": "went wrong"}
    assert {k: v for k, v in saga.data.items() if k != "error"} == ORDER


def test_a_reply_without_an_error_name_is_states_task_failed() -> None:
    saga = given(one_task(catch=CATCH_ALL)).start(ORDER)
    command = saga.expect_command("svc.Work")
    saga.send(ReplyReceived(commandId=command.messageId, ok=False))
    assert saga.data["error"]["Error"] == "States.TaskFailed"


def test_parameters_that_do_not_resolve_fail_the_task_with_states_runtime() -> None:
    document = one_task()
    document["States"]["Work"]["Parameters"] = {"first.$": "$.items[first]"}
    saga = given(document).start(ORDER).expect_status("FAILED").expect_no_command()
    assert saga.saga.error is not None and saga.saga.error.Error == "States.Runtime"


def test_decide_does_not_mutate_the_state_it_is_given() -> None:
    saga = given(one_task(retry=[{"ErrorEquals": ["States.ALL"]}], catch=CATCH_ALL)).start(ORDER)
    command = saga.expect_command("svc.Work")
    state = saga.saga
    before = state.model_dump()
    saga.reply_error("ErrorX", to=command)
    assert state.model_dump() == before
    assert saga.saga is not state


# == Timeouts and late replies =================================================================
def test_no_reply_within_timeout_seconds_is_states_timeout() -> None:
    saga = given(one_task(catch=CATCH_ALL, timeout=10)).start(ORDER)
    command = saga.expect_command("svc.Work")
    saga.expect_timeout_in(10)
    assert saga.timers["main"].token == f"timeout:{command.messageId}"
    saga.fire_timeout()
    assert saga.now == T0 + timedelta(seconds=10)
    assert "TaskTimedOut" in saga.events()
    saga.expect_status("CAUGHT")
    assert saga.data["error"]["Error"] == "States.Timeout"


def test_each_retry_gets_a_fresh_timeout_window() -> None:
    retry = [{"ErrorEquals": ["States.Timeout"], "IntervalSeconds": 5, "MaxAttempts": 1}]
    saga = given(one_task(retry=retry, catch=CATCH_ALL, timeout=10)).start(ORDER)
    first = saga.expect_command("svc.Work")
    first_timer = saga.timers["main"]
    assert (first_timer.token, first_timer.dueAt) == ("timeout:cmd-1", T0 + timedelta(seconds=10))
    saga.fire_timeout().expect_retry_delay(5)
    assert saga.timers["main"].token == "retry:cmd-1"
    saga.fire_retry()
    second = saga.expect_command("svc.Work")
    assert second.messageId != first.messageId
    assert second.attempt == 2
    second_timer = saga.timers["main"]
    assert second_timer.token == f"timeout:{second.messageId}"
    assert second_timer.dueAt == T0 + timedelta(seconds=10 + 5 + 10)
    saga.fire_timeout().expect_status("CAUGHT")
    assert saga.now == T0 + timedelta(seconds=25)


def test_a_reply_to_a_superseded_attempt_is_recorded_and_changes_nothing() -> None:
    retry = [{"ErrorEquals": ["States.Timeout"], "IntervalSeconds": 5, "MaxAttempts": 2}]
    saga = given(one_task(retry=retry, catch=CATCH_ALL, timeout=10)).start(ORDER)
    first = saga.expect_command("svc.Work")
    saga.fire_timeout()

    # While waiting to retry.
    before, timers = saga.saga.model_dump(), dict(saga.timers)
    saga.reply_ok({"late": True}, to=first)
    assert saga.last.history[-1].event == "LateReplyIgnored"
    assert saga.last.history[-1].commandId == first.messageId
    assert (saga.last.commands, saga.last.timers) == ([], {})
    assert saga.saga.model_dump() == before
    assert saga.timers == timers

    # And once the retry has been sent.
    saga.fire_retry()
    second = saga.expect_command("svc.Work")
    before = saga.saga.model_dump()
    saga.reply_error("ErrorX", to=first)
    assert [h.event for h in saga.last.history] == ["LateReplyIgnored"]
    assert saga.saga.model_dump() == before

    saga.reply_ok({"done": True}, to=second).expect_status("DONE")
    assert saga.data["work"] == {"done": True}


def test_a_stale_timer_token_changes_nothing() -> None:
    retry = [{"ErrorEquals": ["States.Timeout"], "IntervalSeconds": 5, "MaxAttempts": 1}]
    saga = given(one_task(retry=retry, catch=CATCH_ALL, timeout=10)).start(ORDER)
    saga.expect_command("svc.Work")
    saga.fire_timeout().fire_retry()
    saga.expect_command("svc.Work")
    before = saga.saga.model_dump()
    decision = saga.send(TimerFired(lane="main", token="timeout:cmd-1"))
    assert (decision.commands, decision.timers, decision.history) == ([], {}, [])
    assert saga.saga.model_dump() == before


def test_a_duplicate_reply_is_ignored() -> None:
    saga = given(one_task(catch=CATCH_ALL)).start(ORDER)
    saga.expect_command("svc.Work")
    saga.reply_ok({"n": 1}).expect_status("DONE")
    saga.reply_ok({"n": 2})
    assert saga.last.history[-1].event == "EventAfterEnd"
    assert saga.data["work"] == {"n": 1}


# == The real workflow.json ====================================================================
@pytest.fixture
def saga() -> SagaDsl:
    return given().start(ORDER)


def through_payment(saga: SagaDsl) -> None:
    saga.expect_command("inventory.CheckInventory")
    saga.reply_ok(PRICED)
    saga.expect_command("inventory.ReserveInventory")
    saga.reply_ok(RESERVED)
    saga.expect_command("payment.ProcessPayment")
    saga.reply_ok(PAID)


def test_happy_path(saga: SagaDsl) -> None:
    check = saga.expect_command("inventory.CheckInventory")
    assert check.payload == {"orderId": "ORDER#1", "items": ORDER["items"], "currency": "usd"}
    saga.expect_timeout_in(30)
    saga.reply_ok(PRICED)

    reserve = saga.expect_command("inventory.ReserveInventory")
    assert reserve.payload == {"orderId": "ORDER#1", "items": ORDER["items"], "idempotencyId": "ORDER#1"}
    saga.expect_timeout_in(30)
    saga.reply_ok(RESERVED)

    pay = saga.expect_command("payment.ProcessPayment")
    assert pay.payload == {
        "orderId": "ORDER#1",
        "amount": 129.57,
        "currency": "usd",
        "paymentMethodId": "pm_card_visa",
        "idempotencyKey": "ORDER#1-payment",
    }
    saga.expect_timeout_in(60)
    saga.reply_ok(PAID)

    record = saga.expect_command("orders.CreateOrderRecord")
    assert record.payload["paymentIntentId"] == "pi_1"
    assert record.payload["amount"] == 129.57
    assert record.payload["lines"] == PRICED["lines"]
    saga.expect_timeout_in(30)
    saga.reply_ok(RECORDED)
    saga.expect_command("inventory.CommitReservation")
    saga.reply_ok(COMMITTED)

    notify = saga.expect_command("notify.NotifyCustomer")
    assert notify.payload["customer"] == ORDER["customer"]
    saga.expect_timeout_in(45)
    saga.reply_ok(NOTIFIED)

    saga.expect_status("CONFIRMED").expect_no_command()
    assert saga.resources() == [
        "inventory.CheckInventory",
        "inventory.ReserveInventory",
        "payment.ProcessPayment",
        "orders.CreateOrderRecord",
        "inventory.CommitReservation",
        "notify.NotifyCustomer",
    ]
    assert saga.saga.error is None
    assert saga.timers == {}
    assert saga.data["inventory"] == PRICED
    assert saga.data["payment"] == PAID
    assert "notificationError" not in saga.data


def test_insufficient_stock_cancels_without_compensation(saga: SagaDsl) -> None:
    saga.expect_command("inventory.CheckInventory")
    saga.reply_error("InsufficientStockError", "456: 1 left").expect_status("CANCELLED").expect_no_command()
    # A business error: not retried (the guide's No Retry list), nothing to compensate.
    assert saga.resources() == ["inventory.CheckInventory"]
    assert saga.saga.error is not None
    assert (saga.saga.error.Error, saga.saga.error.Cause) == ("InsufficientStockError", "456: 1 left")


def test_check_inventory_transient_errors_wait_2_4_8_then_fail(saga: SagaDsl) -> None:
    assert fail_n_times(saga, "inventory.CheckInventory", "Service.Unavailable", 4) == [2, 4, 8]
    saga.expect_status("FAILED").expect_no_command()


def test_check_inventory_other_task_errors_wait_1_and_1_5(saga: SagaDsl) -> None:
    assert fail_n_times(saga, "inventory.CheckInventory", "Unexpected", 3) == [1, 1.5]
    saga.expect_status("FAILED")


def test_check_inventory_timeout_is_not_retried_by_states_task_failed(saga: SagaDsl) -> None:
    saga.expect_command("inventory.CheckInventory")
    saga.fire_timeout().expect_status("FAILED").expect_no_command()
    assert saga.saga.error is not None and saga.saga.error.Error == "States.Timeout"


def test_reserve_inventory_throttling_waits_1_2_4_8_16_then_releases(saga: SagaDsl) -> None:
    saga.expect_command("inventory.CheckInventory")
    saga.reply_ok(PRICED)
    assert fail_n_times(saga, "inventory.ReserveInventory", "Database.SerializationFailure", 6) == [1, 2, 4, 8, 16]
    release = saga.expect_command("inventory.ReleaseInventory")
    assert release.payload["idempotencyId"] == "ORDER#1-release"
    saga.reply_ok({"released": True}).expect_status("FAILED")


def test_payment_declined_releases_inventory_then_fails(saga: SagaDsl) -> None:
    saga.expect_command("inventory.CheckInventory")
    saga.reply_ok(PRICED)
    saga.expect_command("inventory.ReserveInventory")
    saga.reply_ok(RESERVED)
    saga.expect_command("payment.ProcessPayment")
    saga.reply_error("PaymentDeclined", "card_declined")

    release = saga.expect_command("inventory.ReleaseInventory")
    assert release.payload == {
        "orderId": "ORDER#1",
        "items": ORDER["items"],
        "action": "release",
        "idempotencyId": "ORDER#1-release",
    }
    saga.expect_no_command().expect_status("RUNNING")
    saga.reply_ok({"released": True}).expect_status("FAILED").expect_no_command()
    assert saga.resources().count("payment.ProcessPayment") == 1, "a decline is never retried"
    assert "payment.RefundPayment" not in saga.resources()
    assert saga.saga.error is not None and saga.saga.error.Error == "PaymentDeclined"


def test_payment_transient_errors_wait_2_and_4(saga: SagaDsl) -> None:
    saga.expect_command("inventory.CheckInventory")
    saga.reply_ok(PRICED)
    saga.expect_command("inventory.ReserveInventory")
    saga.reply_ok(RESERVED)
    assert fail_n_times(saga, "payment.ProcessPayment", "Service.Unavailable", 3) == [2, 4]
    # No business answer: the charge may have happened, so refund and release.
    assert sorted(c.resource for c in saga.last.commands) == ["inventory.ReleaseInventory", "payment.RefundPayment"]


def test_payment_timing_out_twice_reconciles_then_compensates_refund_and_release(saga: SagaDsl) -> None:
    saga.expect_command("inventory.CheckInventory")
    saga.reply_ok(PRICED)
    saga.expect_command("inventory.ReserveInventory")
    saga.reply_ok(RESERVED)
    first = saga.expect_command("payment.ProcessPayment")
    saga.fire_timeout().expect_retry_delay(5)
    saga.fire_retry()
    second = saga.expect_command("payment.ProcessPayment")
    assert second.payload["idempotencyKey"] == first.payload["idempotencyKey"] == "ORDER#1-payment"
    saga.expect_timeout_in(60)
    saga.fire_timeout()

    # The guide's one timeout retry is spent: ask once more, same key, for the Reconcile's 10 s.
    reconcile = saga.expect_command("payment.ProcessPayment")
    assert reconcile.payload == second.payload and reconcile.attempt == 2
    assert reconcile.messageId not in (first.messageId, second.messageId)
    saga.expect_timeout_in(10).expect_no_command()
    assert saga.last.history[-1].event == "ReconcileScheduled"
    saga.fire_timeout()

    assert "ReconcileTimedOut" in saga.events()
    assert sorted(c.resource for c in saga.last.commands) == ["inventory.ReleaseInventory", "payment.RefundPayment"]
    refund = saga.expect_command("payment.RefundPayment")
    release = saga.expect_command("inventory.ReleaseInventory")
    assert refund.payload["idempotencyKey"] == "ORDER#1-refund"
    assert release.payload["idempotencyId"] == "ORDER#1-release"
    saga.reply_ok({"refunded": False, "reason": "nothing charged"}, to=refund)
    saga.expect_status("RUNNING")
    saga.reply_ok({"released": True}, to=release).expect_status("FAILED").expect_no_command()
    assert saga.saga.error is not None and saga.saga.error.Error == "States.Timeout"
    assert saga.resources().count("payment.ProcessPayment") == 3


def test_order_record_error_compensates_in_parallel(saga: SagaDsl) -> None:
    through_payment(saga)
    saga.expect_command("orders.CreateOrderRecord")
    saga.reply_error("OrderRecordError", "constraint violated")

    # The compensations in the same decision, each with its own timeout, plus the 120 s window.
    assert sorted(c.resource for c in saga.last.commands) == [
        "inventory.ReleaseInventory",
        "orders.VoidOrderRecord",
        "payment.RefundPayment",
    ]
    refund = saga.expect_command("payment.RefundPayment")
    release = saga.expect_command("inventory.ReleaseInventory")
    void = saga.expect_command("orders.VoidOrderRecord")
    assert void.payload == {"orderId": "ORDER#1", "reason": "Order processing failed"}
    saga.reply_ok({"voided": False}, to=void)
    assert refund.payload == {
        "orderId": "ORDER#1",
        "paymentIntentId": "pi_1",
        "amount": 129.57,
        "reason": "Order processing failed",
        "idempotencyKey": "ORDER#1-refund",
    }
    assert release.payload["idempotencyId"] == "ORDER#1-release"
    saga.expect_timeout_in(60, lane="branch:0").expect_timeout_in(30, lane="branch:1")
    saga.expect_timeout_in(120, lane="parallel")
    assert saga.resources().count("orders.CreateOrderRecord") == 1, "OrderRecordError is never retried"

    # Each branch retries on its own: failures in one do not touch the other's timer or count.
    saga.reply_error("Service.Unavailable", to=refund).expect_retry_delay(2, lane="branch:0")
    saga.expect_timeout_in(30, lane="branch:1")
    saga.reply_error("Service.Unavailable", to=release).expect_retry_delay(2, lane="branch:1")
    saga.fire_retry("branch:0")
    refund = saga.expect_command("payment.RefundPayment")
    saga.reply_error("Service.Unavailable").expect_retry_delay(4, lane="branch:0")
    saga.fire_retry("branch:1")
    release = saga.expect_command("inventory.ReleaseInventory")
    assert release.attempt == 2
    saga.reply_ok({"released": True}, to=release).expect_status("RUNNING")
    saga.fire_retry("branch:0")
    refund = saga.expect_command("payment.RefundPayment")
    assert refund.attempt == 3
    saga.reply_ok({"refundId": "re_1"}, to=refund)

    saga.expect_status("FAILED_COMPENSATED").expect_no_command()
    assert saga.saga.error is not None and saga.saga.error.Error == "OrderRecordError"
    compensation = saga.data["compensation"]
    assert [branch.get("refund", branch.get("release", branch.get("void"))) for branch in compensation] == [
        {"refundId": "re_1"},
        {"released": True},
        {"voided": False},
    ]
    assert saga.timers == {}


def test_a_compensation_branch_failing_does_not_stop_the_other(saga: SagaDsl) -> None:
    through_payment(saga)
    saga.expect_command("orders.CreateOrderRecord")
    saga.reply_error("OrderRecordError")
    release = saga.expect_command("inventory.ReleaseInventory")
    saga.reply_ok({"voided": False}, to=saga.expect_command("orders.VoidOrderRecord"))

    assert fail_n_times(saga, "payment.RefundPayment", "RefundFailed", 4, lane="branch:0") == [2, 4, 8]
    # The refund branch has failed; the release is still awaited, not cancelled.
    saga.expect_status("RUNNING").expect_no_command()
    assert "branch:0" not in saga.timers
    saga.expect_timeout_in(30 - 14, lane="branch:1")

    saga.reply_ok({"released": True}, to=release).expect_status("FAILED_CRITICAL")
    assert "BranchSucceeded" in saga.events() and "BranchFailed" in saga.events()
    assert saga.data["compensation"][1]["release"] == {"released": True}
    assert saga.data["compensationError"]["Error"] == "RefundFailed"
    assert saga.saga.error is not None and saga.saga.error.Error == "OrderFailedCritical"
    assert saga.timers == {}


def test_compensation_past_120_seconds_is_critical(saga: SagaDsl) -> None:
    through_payment(saga)
    saga.expect_command("orders.CreateOrderRecord")
    saga.reply_error("OrderRecordError")
    release = saga.expect_command("inventory.ReleaseInventory")
    refund = saga.expect_command("payment.RefundPayment")
    saga.reply_ok({"released": True}, to=release)
    saga.reply_ok({"voided": False}, to=saga.expect_command("orders.VoidOrderRecord"))
    saga.fire_timeout("branch:0").fire_retry("branch:0")  # 60 s, then 2 s
    saga.expect_command("payment.RefundPayment")
    saga.fire_parallel_timeout().expect_status("FAILED_CRITICAL")
    assert saga.now == T0 + timedelta(seconds=120)
    assert saga.data["compensationError"]["Error"] == "States.Timeout"
    assert saga.timers == {}
    saga.reply_ok({"refundId": "late"}, to=refund)
    assert saga.last.history[-1].event == "EventAfterEnd"


def test_notification_failure_still_confirms(saga: SagaDsl) -> None:
    through_payment(saga)
    saga.expect_command("orders.CreateOrderRecord")
    saga.reply_ok(RECORDED)
    saga.expect_command("inventory.CommitReservation")
    saga.reply_ok(COMMITTED)
    assert fail_n_times(saga, "notify.NotifyCustomer", "Service.Unavailable", 4) == [2, 4, 8]
    saga.expect_status("CONFIRMED").expect_no_command()
    assert saga.data["notificationError"] == {"Error": "Service.Unavailable", "Cause": "run 4"}
    assert saga.saga.error is None


def test_notification_throttling_waits_5_10_20_40(saga: SagaDsl) -> None:
    through_payment(saga)
    saga.expect_command("orders.CreateOrderRecord")
    saga.reply_ok(RECORDED)
    saga.expect_command("inventory.CommitReservation")
    saga.reply_ok(COMMITTED)
    assert fail_n_times(saga, "notify.NotifyCustomer", "Service.Throttled", 5) == [5, 10, 20, 40]
    saga.expect_status("CONFIRMED")
    assert saga.data["notificationError"]["Error"] == "Service.Throttled"


def test_create_order_record_throttling_waits_1_2_4_8_16(saga: SagaDsl) -> None:
    through_payment(saga)
    waits = fail_n_times(saga, "orders.CreateOrderRecord", "Database.DeadlockDetected", 5)
    assert waits == [1, 2, 4, 8]
    saga.expect_retry_delay(16)
    saga.fire_retry()
    saga.expect_command("orders.CreateOrderRecord")
    saga.reply_ok(RECORDED)
    saga.expect_command("inventory.CommitReservation")
    saga.reply_ok(COMMITTED)
    saga.expect_command("notify.NotifyCustomer")


# == Deadlines, Command.Expired and Reconcile ===================================================
EXPIRED = "Command.Expired"


def reconciled_task(
    retry: list[dict[str, Any]] | None = None, timeout: float = 30, reconcile: float = 10
) -> dict[str, Any]:
    """``one_task`` with side effects: it declares ``Reconcile`` and catches everything."""
    document = one_task(retry=retry, catch=CATCH_ALL, timeout=timeout)
    document["States"]["Work"]["Reconcile"] = {"TimeoutSeconds": reconcile}
    return document


def test_every_command_carries_its_step_window_as_its_deadline() -> None:
    saga = given(one_task(timeout=12)).start(ORDER)
    command = saga.expect_command("svc.Work")
    assert command.deadline == T0 + timedelta(seconds=12) == saga.timers["main"].dueAt


def test_command_expired_for_the_awaited_command_sends_the_same_attempt_afresh() -> None:
    retry = [{"ErrorEquals": ["ErrorX"], "MaxAttempts": 2}]
    saga = given(one_task(retry=retry, catch=CATCH_ALL, timeout=30)).start(ORDER)
    saga.expect_command("svc.Work")
    saga.reply_error("ErrorX").fire_retry()
    second = saga.expect_command("svc.Work")
    counts = saga.saga.main.run.retryCounts
    # The saga clock held this run's timer back through an outage; the command sat it out in its queue.
    saga.advance(45).reply_error(EXPIRED, "deadline passed 15 s ago")

    again = saga.expect_command("svc.Work")
    assert again.messageId != second.messageId
    assert (again.attempt, again.payload) == (second.attempt, second.payload) == (2, {"orderId": "ORDER#1"})
    assert again.deadline == saga.now + timedelta(seconds=30)
    saga.expect_timeout_in(30).expect_no_command()
    assert saga.timers["main"].token == f"timeout:{again.messageId}"
    run = saga.saga.main.run
    assert (run.commandId, run.attempt, run.retryCounts, run.reissues) == (again.messageId, 2, counts, 1)
    entry = saga.last.history[-1]
    assert (entry.event, entry.commandId, entry.attempt) == ("CommandReissued", again.messageId, 2)
    assert entry.detail["expired"] == second.messageId
    assert [h.event for h in saga.last.history] == ["CommandReissued"]  # no failure, no retry counted

    saga.reply_ok({"done": True}).expect_status("DONE")
    assert saga.data["work"] == {"done": True}


def test_command_expired_too_often_is_a_timeout_and_takes_the_timeout_path() -> None:
    retry = [{"ErrorEquals": ["States.Timeout"], "IntervalSeconds": 5, "MaxAttempts": 1}]
    saga = given(one_task(retry=retry, catch=CATCH_ALL)).start(ORDER)
    saga.expect_command("svc.Work")
    for _ in range(3):
        saga.reply_error(EXPIRED)
        saga.expect_command("svc.Work")
    assert saga.saga.main.run.reissues == 3
    saga.reply_error(EXPIRED)
    assert saga.last.history[0].event == "TaskTimedOut" and saga.last.history[0].error == "States.Timeout"
    saga.expect_retry_delay(5).expect_no_command()  # the Retry table's timeout retrier, as for a timeout
    saga.fire_retry()
    retried = saga.expect_command("svc.Work")
    assert retried.attempt == 2 and saga.saga.main.run.reissues == 0  # a new run has its own bound
    saga.fire_timeout().expect_status("CAUGHT")
    assert saga.data["error"]["Error"] == "States.Timeout"


def test_command_expired_for_a_superseded_command_is_a_late_reply() -> None:
    retry = [{"ErrorEquals": ["States.Timeout"], "IntervalSeconds": 5, "MaxAttempts": 1}]
    saga = given(one_task(retry=retry, catch=CATCH_ALL, timeout=10)).start(ORDER)
    first = saga.expect_command("svc.Work")
    saga.fire_timeout().fire_retry()
    saga.expect_command("svc.Work")
    before = saga.saga.model_dump()
    saga.reply_error(EXPIRED, to=first)
    assert [h.event for h in saga.last.history] == ["LateReplyIgnored"]
    assert (saga.last.commands, saga.last.timers) == ([], {})
    assert saga.saga.model_dump() == before


def test_timeout_with_no_retry_left_reconciles_and_a_success_proceeds() -> None:
    saga = given(reconciled_task(timeout=30, reconcile=10)).start(ORDER)
    work = saga.expect_command("svc.Work")
    saga.fire_timeout()

    ask = saga.expect_command("svc.Work")
    assert ask.messageId != work.messageId
    assert (ask.payload, ask.attempt) == (work.payload, 1)  # the same command, the same keys: it asks again
    assert ask.deadline == T0 + timedelta(seconds=40)
    saga.expect_timeout_in(10).expect_status("RUNNING")
    assert saga.events()[-2:] == ["TaskTimedOut", "ReconcileScheduled"]
    assert "Caught" not in saga.events()

    saga.reply_ok({"done": True, "already": True}).expect_status("DONE").expect_no_command()
    assert saga.data["work"] == {"done": True, "already": True}
    assert saga.last.history[0].event == "TaskSucceeded" and saga.last.history[0].detail == {"reconciled": True}
    assert saga.timers == {}


def test_reconcile_timing_out_is_caught_as_the_original_timeout() -> None:
    saga = given(reconciled_task(timeout=30, reconcile=10)).start(ORDER)
    work = saga.expect_command("svc.Work")
    saga.fire_timeout()
    ask = saga.expect_command("svc.Work")
    saga.fire_timeout().expect_status("CAUGHT").expect_no_command()
    assert saga.now == T0 + timedelta(seconds=40)
    assert saga.data["error"] == {"Error": "States.Timeout", "Cause": "no reply within TimeoutSeconds"}
    assert saga.events()[-3:-1] == ["ReconcileTimedOut", "Caught"]
    assert saga.events().count("TaskTimedOut") == 1  # the reconcile is no second run of the step
    # Either command's answer, coming now, is late.
    saga.reply_ok({"done": True}, to=ask)
    saga.reply_ok({"done": True}, to=work)
    assert saga.data["error"]["Error"] == "States.Timeout"


def test_reconcile_failing_is_caught_as_the_original_timeout() -> None:
    saga = given(reconciled_task()).start(ORDER)
    saga.expect_command("svc.Work")
    saga.fire_timeout()
    saga.expect_command("svc.Work")
    saga.reply_error("ErrorX", "no such thing").expect_status("CAUGHT").expect_no_command()
    assert saga.data["error"]["Error"] == "States.Timeout"
    failed = next(h for d in saga.decisions for h in d.history if h.event == "ReconcileFailed")
    assert (failed.error, failed.cause) == ("ErrorX", "no such thing")
    assert "RetryScheduled" not in saga.events()


def test_reconcile_waits_for_the_retriers_and_follows_only_a_timeout() -> None:
    retry = [{"ErrorEquals": ["States.ALL"], "IntervalSeconds": 2, "MaxAttempts": 1}]
    saga = given(reconciled_task(retry=retry)).start(ORDER)
    saga.expect_command("svc.Work")
    saga.fire_timeout().expect_retry_delay(2)  # a retrier still applies: no reconcile yet
    assert "ReconcileScheduled" not in saga.events()
    saga.fire_retry()
    saga.expect_command("svc.Work")
    saga.fire_timeout()
    assert saga.saga.main.run.reconcileOf is not None
    saga.expect_command("svc.Work")

    other = given(reconciled_task()).start(ORDER)
    other.expect_command("svc.Work")
    other.reply_error("ErrorX").expect_status("CAUGHT")  # a named error is an answer: nothing to reconcile
    assert "ReconcileScheduled" not in other.events()


def test_a_reconcile_that_expires_is_sent_afresh_within_the_reconcile_window() -> None:
    saga = given(reconciled_task(timeout=30, reconcile=10)).start(ORDER)
    saga.expect_command("svc.Work")
    saga.fire_timeout()
    ask = saga.expect_command("svc.Work")
    saga.advance(25).reply_error(EXPIRED)
    again = saga.expect_command("svc.Work")
    assert again.messageId != ask.messageId and again.payload == ask.payload
    saga.expect_timeout_in(10)
    assert saga.saga.main.run.reconcileOf is not None
    saga.reply_ok({"done": True}).expect_status("DONE")


def test_workflow_reconciles_reserve_payment_and_record_only() -> None:
    workflow = given().workflow
    reconciled = {
        name: state.Reconcile.TimeoutSeconds
        for name, state in workflow.States.items()
        if getattr(state, "Reconcile", None) is not None
    }
    assert reconciled == {"ReserveInventory": 10, "ProcessPayment": 10, "CreateOrderRecord": 10}


def test_reserve_inventory_timeout_reconciles_and_a_reservation_found_proceeds_to_payment(saga: SagaDsl) -> None:
    saga.expect_command("inventory.CheckInventory")
    saga.reply_ok(PRICED)
    reserve = saga.expect_command("inventory.ReserveInventory")
    saga.fire_timeout()
    ask = saga.expect_command("inventory.ReserveInventory")
    assert ask.payload == reserve.payload and ask.payload["idempotencyId"] == "ORDER#1"
    saga.expect_timeout_in(10)
    saga.reply_ok(RESERVED)
    saga.expect_command("payment.ProcessPayment")
    assert "inventory.ReleaseInventory" not in saga.resources()


def test_reserve_inventory_reconcile_timing_out_releases_what_may_be_held(saga: SagaDsl) -> None:
    saga.expect_command("inventory.CheckInventory")
    saga.reply_ok(PRICED)
    saga.expect_command("inventory.ReserveInventory")
    saga.fire_timeout()
    saga.expect_command("inventory.ReserveInventory")
    saga.fire_timeout()
    release = saga.expect_command("inventory.ReleaseInventory")
    assert release.payload["idempotencyId"] == "ORDER#1-release"
    assert saga.data["error"]["Error"] == "States.Timeout"


def test_payment_reconcile_finding_the_charge_proceeds_to_the_order_record(saga: SagaDsl) -> None:
    saga.expect_command("inventory.CheckInventory")
    saga.reply_ok(PRICED)
    saga.expect_command("inventory.ReserveInventory")
    saga.reply_ok(RESERVED)
    saga.expect_command("payment.ProcessPayment")
    saga.fire_timeout().fire_retry()
    saga.expect_command("payment.ProcessPayment")
    saga.fire_timeout()
    saga.expect_command("payment.ProcessPayment")
    saga.reply_ok(PAID)
    record = saga.expect_command("orders.CreateOrderRecord")
    assert record.payload["paymentIntentId"] == "pi_1"
    assert "payment.RefundPayment" not in saga.resources()


def test_create_order_record_timeout_reconciles_before_refunding(saga: SagaDsl) -> None:
    through_payment(saga)
    record = saga.expect_command("orders.CreateOrderRecord")
    saga.fire_timeout()  # no States.Timeout retrier on this step: straight to the reconcile
    ask = saga.expect_command("orders.CreateOrderRecord")
    assert ask.payload == record.payload
    saga.expect_timeout_in(10).expect_no_command()
    saga.reply_ok(RECORDED)
    saga.expect_command("inventory.CommitReservation")
    saga.reply_ok(COMMITTED)
    assert "payment.RefundPayment" not in saga.resources()
    assert saga.saga.status == "RUNNING" and saga.pending, "the saga goes on past the order record"

    lost = given().start(ORDER)
    through_payment(lost)
    lost.expect_command("orders.CreateOrderRecord")
    lost.fire_timeout().fire_timeout()
    assert "payment.RefundPayment" in [c.resource for c in lost.last.commands]
    assert lost.data["error"]["Error"] == "States.Timeout"
