"""The cancellation workflow (orchestrator/cancellation.json) driven through the pure engine, and its edges:
who may start one, its input from the order saga, and the outcome event its end publishes."""

from typing import Any

import pytest
from sagadsl import SagaDsl, given

from contracts.orders import CancelOrder
from orchestrator import cancellation, definition
from orchestrator.api_models import REDRIVABLE
from orchestrator.state import Redriven

pytestmark = pytest.mark.unit

CUSTOMER = {"email": "ada@example.com", "phone": "+15550100"}
LINES = [{"productId": "456", "name": "Widget", "quantity": 3, "unitPrice": 43.19, "lineTotal": 129.57}]
#: The CONFIRMED order saga's state document, as the order workflow leaves it.
ORDER_SAGA: dict[str, Any] = {
    "orderId": "ORDER#9",
    "status": "CONFIRMED",
    "main": {
        "data": {
            "orderId": "ORDER#9",
            "customer": CUSTOMER,
            "items": [{"productId": "456", "quantity": 3}],
            "currency": "usd",
            "inventory": {"lines": LINES, "amount": 129.57, "currency": "usd"},
            "payment": {"paymentIntentId": "pi_9", "status": "succeeded", "amount": 129.57},
        }
    },
}
INPUT = cancellation.input_of(ORDER_SAGA, CancelOrder(orderId="ORDER#9", reason="Changed my mind"))
REFUNDED = {"refunded": True, "refundId": "re_9", "amount": 129.57, "alreadyRefunded": False}
RESTOCKED = {"restocked": True, "items": [{"productId": "456", "quantity": 3}]}


@pytest.fixture
def saga() -> SagaDsl:
    return given(definition.load(cancellation.DEFINITION_FILE)).start(INPUT)


def refunded_and_restocked(saga: SagaDsl) -> None:
    saga.reply_ok(REFUNDED)
    saga.expect_command("inventory.RestockOrder")
    saga.reply_ok(RESTOCKED)


def test_the_input_comes_from_the_order_saga_not_the_request() -> None:
    assert INPUT == {
        "orderId": "ORDER#9",
        "reason": "Changed my mind",
        "customer": CUSTOMER,
        "lines": LINES,
        "amount": 129.57,
        "currency": "usd",
        "paymentIntentId": "pi_9",
    }


def test_happy_path_refunds_restocks_voids_and_notifies(saga: SagaDsl) -> None:
    refund = saga.expect_command("payment.RefundPayment")
    assert refund.payload == {
        "orderId": "ORDER#9",
        "paymentIntentId": "pi_9",
        "reason": "Changed my mind",
        "idempotencyKey": "ORDER#9-cancel-refund",
    }
    saga.reply_ok(REFUNDED)
    restock = saga.expect_command("inventory.RestockOrder")
    assert restock.payload == {"orderId": "ORDER#9", "idempotencyId": "ORDER#9-restock"}
    saga.reply_ok(RESTOCKED)
    void = saga.expect_command("orders.VoidOrderRecord")
    assert void.payload == {"orderId": "ORDER#9", "reason": "Changed my mind"}
    saga.reply_ok({"voided": True})
    notify = saga.expect_command("notify.NotifyCustomer")
    assert notify.payload["kind"] == "cancellation" and notify.payload["customer"] == CUSTOMER
    saga.reply_ok({"results": [{"channel": "email", "status": "sent"}]})
    saga.expect_status("CANCELLED_BY_CUSTOMER")
    key, outcome = cancellation.outcome(saga.saga)
    assert key == "order.cancellation_completed"
    assert (outcome.status, outcome.refundId, outcome.error) == ("CANCELLED_BY_CUSTOMER", "re_9", None)
    assert str(outcome.amount) == "129.57"  # the refund's own amount


def test_a_refund_that_fails_after_its_retries_ends_cancellation_failed_having_changed_nothing(saga: SagaDsl) -> None:
    for delay in (2, 4):  # Service.Unavailable: 2 s, then 4 s, then no retry left (MaxAttempts 2)
        saga.expect_command("payment.RefundPayment")
        saga.reply_error("Service.Unavailable", "Stripe is down").expect_retry_delay(delay)
        saga.fire_retry()
    saga.expect_command("payment.RefundPayment")
    saga.reply_error("Service.Unavailable", "Stripe is down")
    saga.expect_status("CANCELLATION_FAILED")
    assert "inventory.RestockOrder" not in saga.resources()
    key, outcome = cancellation.outcome(saga.saga)
    assert key == "order.cancellation_failed"
    assert outcome.error is not None and outcome.error.Error == "Service.Unavailable"


def test_a_refund_refused_by_the_provider_is_not_retried(saga: SagaDsl) -> None:
    saga.expect_command("payment.RefundPayment")
    saga.reply_error("RefundFailed", "charge disputed")
    saga.expect_status("CANCELLATION_FAILED")
    assert saga.resources() == ["payment.RefundPayment"]


def test_a_restock_that_fails_after_its_retries_ends_cancellation_failed(saga: SagaDsl) -> None:
    saga.expect_command("payment.RefundPayment")
    saga.reply_ok(REFUNDED)
    for _ in range(3):
        saga.expect_command("inventory.RestockOrder")
        saga.reply_error("Service.Unavailable")
        saga.fire_retry()
    saga.expect_command("inventory.RestockOrder")
    saga.reply_error("Service.Unavailable")
    saga.expect_status("CANCELLATION_FAILED")
    assert "orders.VoidOrderRecord" not in saga.resources()
    assert saga.saga.error is not None and saga.saga.error.Error == "Service.Unavailable"


def test_a_cancellation_failed_at_its_restock_is_redriven_from_there_without_a_second_refund(saga: SagaDsl) -> None:
    saga.expect_command("payment.RefundPayment")
    saga.reply_ok(REFUNDED)
    for _ in range(3):
        saga.expect_command("inventory.RestockOrder")
        saga.reply_error("Database.ConnectionError")
        saga.fire_retry()
    saga.expect_command("inventory.RestockOrder")
    saga.reply_error("Database.ConnectionError")
    saga.expect_status("CANCELLATION_FAILED")
    assert "CANCELLATION_FAILED" in REDRIVABLE
    saga.send(Redriven())
    restock = saga.expect_command("inventory.RestockOrder")
    assert restock.payload["idempotencyId"] == "ORDER#9-restock"
    saga.reply_ok(RESTOCKED)
    saga.expect_command("orders.VoidOrderRecord")
    saga.reply_ok({"voided": True})
    saga.expect_command("notify.NotifyCustomer")
    saga.reply_ok({"results": []})
    saga.expect_status("CANCELLED_BY_CUSTOMER")
    assert saga.resources().count("payment.RefundPayment") == 1


def test_a_failed_notification_does_not_fail_the_cancellation(saga: SagaDsl) -> None:
    saga.expect_command("payment.RefundPayment")
    refunded_and_restocked(saga)
    saga.expect_command("orders.VoidOrderRecord")
    saga.reply_ok({"voided": True})
    saga.expect_command("notify.NotifyCustomer")
    saga.reply_error("NotificationError", "mailbox unavailable")
    saga.expect_status("CANCELLED_BY_CUSTOMER")
    _, outcome = cancellation.outcome(saga.saga)
    assert outcome.notificationError is not None and outcome.error is None


@pytest.mark.parametrize("status", ["RUNNING", "FAILED", "CANCELLED", "FAILED_COMPENSATED", "FAILED_CRITICAL"])
def test_an_order_that_is_not_confirmed_is_refused(status: str) -> None:
    reason, detail = cancellation.refusal(status, "order", None) or ("", "")
    assert reason == "OrderNotConfirmed" and status in detail


@pytest.mark.parametrize("existing", ["RUNNING", "CANCELLED_BY_CUSTOMER", "CANCELLATION_FAILED"])
def test_a_second_cancellation_is_refused_whatever_became_of_the_first(existing: str) -> None:
    reason, detail = cancellation.refusal("CONFIRMED", "order", existing) or ("", "")
    assert reason == "CancellationAlreadyRequested" and existing in detail


def test_an_unknown_order_is_refused_and_a_confirmed_one_may_start() -> None:
    assert cancellation.refusal(None, None, None) == ("OrderNotFound", "no order saga")
    assert cancellation.refusal("CONFIRMED", None, None) is None  # a saga from before workflow names
    assert cancellation.refusal("CONFIRMED", "order", None) is None


def test_the_cancellation_key_is_never_an_order_id() -> None:
    key = cancellation.saga_key("ORDER#9")
    assert key == "ORDER#9 cancel"
    with pytest.raises(ValueError):
        CancelOrder(orderId=key)


def test_the_cancellation_refund_is_not_counted_as_a_compensation() -> None:
    workflow = definition.load(cancellation.DEFINITION_FILE)
    tasks = [s for _, s in definition.all_states(workflow.States) if isinstance(s, definition.TaskState)]
    assert [t.Resource for t in tasks if t.Compensation] == []
