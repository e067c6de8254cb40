"""Saga metrics: engine decisions fed through orchestrator.metrics.observe, as the runner feeds them."""

from typing import Any

import pytest
from prometheus_client import REGISTRY
from sagadsl import SagaDsl, given

from orchestrator import cancellation, definition, metrics
from orchestrator.definition import Workflow
from orchestrator.state import Redriven

pytestmark = pytest.mark.unit

ORDER: dict[str, Any] = {
    "orderId": "ORDER#metrics-1",
    "customer": {"email": "ada@example.com", "name": "Ada"},
    "items": [{"productId": "456", "quantity": 2}],
    "currency": "usd",
    "paymentMethodId": "pm_card_visa",
}
PRICED = {"amount": 129.57, "currency": "usd", "lines": [{"productId": "456", "quantity": 2, "unitPrice": 64.785}]}
RESERVED = {"reservationId": "res-1", "status": "reserved"}
PAID = {"paymentIntentId": "pi_1", "status": "succeeded"}
COMMITTED = {"committed": 1}
RECORDED = {"orderId": "ORDER#metrics-1", "status": "CONFIRMED"}

Sample = tuple[str, tuple[tuple[str, str], ...]]


def samples() -> dict[Sample, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in REGISTRY.collect()
        for s in family.samples
        if s.name.startswith("orderflow_")
    }


class Meter:
    """Counter deltas since it was made: what the decisions observed in between changed."""

    def __init__(self) -> None:
        self.start = samples()

    def delta(self, name: str, **labels: str) -> float:
        labels = {"workflow": "order"} | labels  # every saga metric is labelled by workflow; these are orders'
        key = (name, tuple(sorted(labels.items())))
        return (REGISTRY.get_sample_value(name, labels) or 0.0) - self.start.get(key, 0.0)

    def changed(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Every series of ``name`` that changed, by labels, with its delta."""
        return {
            tuple(label for label in labels if label != ("workflow", "order")): value
            - self.start.get((sample, labels), 0.0)
            for (sample, labels), value in samples().items()
            if sample == name and value != self.start.get((sample, labels), 0.0)
        }


@pytest.fixture(scope="module")
def workflow() -> Workflow:
    return definition.load()


@pytest.fixture
def saga(workflow: Workflow) -> SagaDsl:
    return given(workflow).start(ORDER)


def observe_all(saga: SagaDsl, *, saga_seconds: float = 3.0) -> Meter:
    """Feed every decision of ``saga`` to metrics.observe as the runner does; returns a meter taken before."""
    meter = Meter()
    before = None
    retried = False
    for decision in saga.decisions:
        retried = retried or any(entry.event == "RetryScheduled" for entry in decision.history)
        finished = decision.state.finished and (before is None or not before.finished)
        metrics.observe(
            decision,
            workflow=saga.workflow,
            before=before,
            duration_seconds=saga_seconds if finished and before is not None else None,
            retried=finished and retried,
        )
        before = decision.state
    return meter


def through_payment(saga: SagaDsl) -> None:
    saga.expect_command("inventory.CheckInventory")
    saga.reply_ok(PRICED)
    saga.expect_command("inventory.ReserveInventory")
    saga.reply_ok(RESERVED)
    saga.expect_command("payment.ProcessPayment")
    saga.reply_ok(PAID)


def fail_n_times(saga: SagaDsl, resource: str, error: str, n: int, lane: str = "main") -> None:
    for i in range(n):
        saga.expect_command(resource)
        saga.reply_error(error)
        if i < n - 1:
            saga.fire_retry(lane)


# -- saga counters -----------------------------------------------------------------------------
def test_happy_path_counts_a_start_a_confirmation_and_nothing_else(saga: SagaDsl) -> None:
    through_payment(saga)
    saga.expect_command("orders.CreateOrderRecord")
    saga.reply_ok(RECORDED)
    saga.expect_command("inventory.CommitReservation")
    saga.reply_ok(COMMITTED)
    saga.expect_command("notify.NotifyCustomer")
    saga.reply_ok({"channel": "email"}).expect_status("CONFIRMED")
    meter = observe_all(saga, saga_seconds=3.0)

    assert meter.delta("orderflow_sagas_started_total") == 1
    assert meter.changed("orderflow_sagas_finished_total") == {(("status", "CONFIRMED"),): 1}
    assert meter.delta("orderflow_saga_duration_seconds_sum", status="CONFIRMED") == 3.0
    assert meter.delta("orderflow_sagas_retried_total") == 0
    assert meter.delta("orderflow_saga_notification_errors_total") == 0
    assert meter.changed("orderflow_compensations_total") == {}
    assert meter.changed("orderflow_step_timeouts_total") == {}
    for step in ["CheckInventory", "ReserveInventory", "ProcessPayment", "CreateOrderRecord", "NotifyCustomer"]:
        assert meter.delta("orderflow_step_attempts_total", step=step) == 1
        assert meter.delta("orderflow_step_duration_seconds_count", step=step) == 1


def test_a_saga_with_several_retries_is_counted_retried_once_when_it_finishes(saga: SagaDsl) -> None:
    fail_n_times(saga, "inventory.CheckInventory", "Service.Unavailable", 3)
    saga.fire_retry()
    saga.expect_command("inventory.CheckInventory")
    saga.reply_error("InsufficientStockError").expect_status("CANCELLED")
    meter = observe_all(saga)

    assert meter.delta("orderflow_step_retries_total", step="CheckInventory", error="Service.Unavailable") == 3
    assert meter.delta("orderflow_step_attempts_total", step="CheckInventory") == 4
    assert meter.delta("orderflow_sagas_retried_total") == 1
    assert meter.changed("orderflow_sagas_finished_total") == {(("status", "CANCELLED"),): 1}


def test_a_retried_saga_still_running_is_not_counted_yet(saga: SagaDsl) -> None:
    saga.expect_command("inventory.CheckInventory")
    saga.reply_error("Service.Unavailable")
    meter = observe_all(saga)
    assert meter.delta("orderflow_step_retries_total", step="CheckInventory", error="Service.Unavailable") == 1
    assert meter.delta("orderflow_sagas_retried_total") == 0
    assert meter.changed("orderflow_sagas_finished_total") == {}


def test_a_notification_error_counts_a_confirmed_saga_with_notification_error(saga: SagaDsl) -> None:
    through_payment(saga)
    saga.expect_command("orders.CreateOrderRecord")
    saga.reply_ok(RECORDED)
    saga.expect_command("inventory.CommitReservation")
    saga.reply_ok(COMMITTED)
    saga.expect_command("notify.NotifyCustomer")
    saga.reply_error("NotificationError", "550 mailbox unavailable").expect_status("CONFIRMED")
    meter = observe_all(saga)

    assert meter.delta("orderflow_saga_notification_errors_total") == 1
    assert meter.changed("orderflow_sagas_finished_total") == {(("status", "CONFIRMED"),): 1}
    assert meter.delta("orderflow_step_failures_total", step="NotifyCustomer", error="NotificationError") == 1
    assert meter.delta("orderflow_sagas_retried_total") == 0


# -- compensations -----------------------------------------------------------------------------
def test_order_record_failure_counts_each_branch_once_despite_retries(saga: SagaDsl) -> None:
    through_payment(saga)
    saga.expect_command("orders.CreateOrderRecord")
    saga.reply_error("OrderRecordError")
    release = saga.expect_command("inventory.ReleaseInventory")
    saga.reply_ok({"voided": False}, to=saga.expect_command("orders.VoidOrderRecord"))
    saga.expect_command("payment.RefundPayment")
    saga.reply_error("Service.Unavailable").fire_retry("branch:0")
    saga.expect_command("payment.RefundPayment")
    saga.reply_ok({"refundId": "re_1"})
    saga.reply_ok({"released": True}, to=release).expect_status("FAILED_COMPENSATED")
    meter = observe_all(saga)

    assert meter.changed("orderflow_compensations_total") == {
        (("outcome", "succeeded"), ("step", "RefundPayment")): 1,
        (("outcome", "succeeded"), ("step", "ReleaseInventory")): 1,
        (("outcome", "succeeded"), ("step", "VoidOrderRecord")): 1,
    }
    assert meter.delta("orderflow_step_attempts_total", step="RefundPayment") == 2
    assert meter.changed("orderflow_sagas_finished_total") == {(("status", "FAILED_COMPENSATED"),): 1}
    assert meter.delta("orderflow_sagas_retried_total") == 1


def test_a_compensation_failing_after_its_retries_counts_one_failure_and_a_critical_saga(saga: SagaDsl) -> None:
    through_payment(saga)
    saga.expect_command("orders.CreateOrderRecord")
    saga.reply_error("OrderRecordError")
    release = saga.expect_command("inventory.ReleaseInventory")
    saga.reply_ok({"voided": False}, to=saga.expect_command("orders.VoidOrderRecord"))
    fail_n_times(saga, "payment.RefundPayment", "RefundFailed", 4, lane="branch:0")
    saga.reply_ok({"released": True}, to=release).expect_status("FAILED_CRITICAL")
    meter = observe_all(saga)

    assert meter.changed("orderflow_compensations_total") == {
        (("outcome", "failed"), ("step", "RefundPayment")): 1,
        (("outcome", "succeeded"), ("step", "ReleaseInventory")): 1,
        (("outcome", "succeeded"), ("step", "VoidOrderRecord")): 1,
    }
    assert meter.delta("orderflow_step_failures_total", step="RefundPayment", error="RefundFailed") == 4
    assert meter.changed("orderflow_sagas_finished_total") == {(("status", "FAILED_CRITICAL"),): 1}


def test_a_parallel_timeout_counts_the_unfinished_branch_as_failed(saga: SagaDsl) -> None:
    through_payment(saga)
    saga.expect_command("orders.CreateOrderRecord")
    saga.reply_error("OrderRecordError")
    release = saga.expect_command("inventory.ReleaseInventory")
    saga.reply_ok({"voided": False}, to=saga.expect_command("orders.VoidOrderRecord"))
    saga.expect_command("payment.RefundPayment")
    saga.reply_ok({"released": True}, to=release)
    saga.fire_timeout("branch:0").fire_retry("branch:0")
    refund = saga.expect_command("payment.RefundPayment")
    saga.fire_parallel_timeout().expect_status("FAILED_CRITICAL")
    saga.reply_ok({"refundId": "late"}, to=refund)  # after the end: changes nothing
    meter = observe_all(saga)

    assert meter.changed("orderflow_compensations_total") == {
        (("outcome", "failed"), ("step", "RefundPayment")): 1,
        (("outcome", "succeeded"), ("step", "ReleaseInventory")): 1,
        (("outcome", "succeeded"), ("step", "VoidOrderRecord")): 1,
    }
    assert meter.delta("orderflow_step_timeouts_total", step="RefundPayment") == 1
    assert meter.changed("orderflow_sagas_finished_total") == {(("status", "FAILED_CRITICAL"),): 1}


def test_payment_declined_counts_the_release_as_a_compensation(saga: SagaDsl) -> None:
    saga.expect_command("inventory.CheckInventory")
    saga.reply_ok(PRICED)
    saga.expect_command("inventory.ReserveInventory")
    saga.reply_ok(RESERVED)
    saga.expect_command("payment.ProcessPayment")
    saga.reply_error("PaymentDeclined")
    saga.expect_command("inventory.ReleaseInventory")
    saga.reply_ok({"released": True}).expect_status("FAILED")
    meter = observe_all(saga)

    assert meter.changed("orderflow_compensations_total") == {
        (("outcome", "succeeded"), ("step", "ReleaseReservedInventory")): 1
    }


def test_a_reservation_failure_counts_its_release(saga: SagaDsl) -> None:
    saga.expect_command("inventory.CheckInventory")
    saga.reply_ok(PRICED)
    saga.expect_command("inventory.ReserveInventory")
    saga.reply_error("InventoryError")
    saga.expect_command("inventory.ReleaseInventory")
    saga.reply_ok({"released": True}).expect_status("FAILED")
    meter = observe_all(saga)

    assert meter.changed("orderflow_compensations_total") == {
        (("outcome", "succeeded"), ("step", "ReservationFailed")): 1
    }


def test_a_redriven_compensation_counts_again_and_the_saga_finishes_again(saga: SagaDsl) -> None:
    through_payment(saga)
    saga.expect_command("orders.CreateOrderRecord")
    saga.reply_error("OrderRecordError")
    release = saga.expect_command("inventory.ReleaseInventory")
    saga.reply_ok({"voided": False}, to=saga.expect_command("orders.VoidOrderRecord"))
    fail_n_times(saga, "payment.RefundPayment", "RefundFailed", 4, lane="branch:0")
    saga.reply_ok({"released": True}, to=release).expect_status("FAILED_CRITICAL")
    saga.send(Redriven())
    saga.expect_command("payment.RefundPayment")
    saga.reply_ok({"refundId": "re_1"}).expect_status("FAILED_COMPENSATED")
    meter = observe_all(saga)

    assert meter.changed("orderflow_compensations_total") == {
        (("outcome", "failed"), ("step", "RefundPayment")): 1,
        (("outcome", "succeeded"), ("step", "RefundPayment")): 1,
        (("outcome", "succeeded"), ("step", "ReleaseInventory")): 1,
        (("outcome", "succeeded"), ("step", "VoidOrderRecord")): 1,
    }
    assert meter.changed("orderflow_sagas_finished_total") == {
        (("status", "FAILED_CRITICAL"),): 1,
        (("status", "FAILED_COMPENSATED"),): 1,
    }
    assert meter.delta("orderflow_sagas_started_total") == 1


def test_compensation_steps_are_the_marked_tasks(workflow: Workflow) -> None:
    assert metrics.compensation_steps(workflow) == {
        "ReservationFailed",
        "ReleaseReservedInventory",
        "RefundPayment",
        "ReleaseInventory",
        "VoidOrderRecord",
    }


# -- durations and timeouts --------------------------------------------------------------------
def test_step_duration_runs_from_the_command_to_its_reply(saga: SagaDsl) -> None:
    saga.expect_command("inventory.CheckInventory")
    saga.advance(2.5).reply_ok(PRICED)
    meter = observe_all(saga)
    assert meter.delta("orderflow_step_duration_seconds_sum", step="CheckInventory") == 2.5
    assert meter.delta("orderflow_step_duration_seconds_count", step="CheckInventory") == 1
    assert meter.delta("orderflow_step_duration_seconds_bucket", step="CheckInventory", le="2.5") == 1
    assert meter.delta("orderflow_step_duration_seconds_bucket", step="CheckInventory", le="1.0") == 0


def test_a_timeout_counts_a_timeout_and_a_duration_of_the_timeout(saga: SagaDsl) -> None:
    saga.expect_command("inventory.CheckInventory")
    saga.reply_ok(PRICED)
    saga.expect_command("inventory.ReserveInventory")
    saga.reply_ok(RESERVED)
    saga.expect_command("payment.ProcessPayment")
    saga.fire_timeout()
    meter = observe_all(saga)
    assert meter.delta("orderflow_step_timeouts_total", step="ProcessPayment") == 1
    assert meter.delta("orderflow_step_retries_total", step="ProcessPayment", error="States.Timeout") == 1
    assert meter.delta("orderflow_step_duration_seconds_sum", step="ProcessPayment") == 60


def test_a_saga_finished_at_its_start_is_counted_without_a_duration() -> None:
    broken = given(
        {
            "StartAt": "Work",
            "States": {
                "Work": {
                    "Type": "Task",
                    "Resource": "svc.Work",
                    "Parameters": {"x.$": "$.missing"},
                    "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Failed"}],
                    "End": True,
                },
                "Failed": {"Type": "Fail", "Status": "BROKEN"},
            },
        }
    ).start(ORDER)
    broken.expect_status("BROKEN")
    meter = observe_all(broken)
    assert meter.delta("orderflow_sagas_started_total") == 1
    assert meter.changed("orderflow_sagas_finished_total") == {(("status", "BROKEN"),): 1}
    assert meter.delta("orderflow_step_duration_seconds_count", step="Work") == 0


# -- labels ------------------------------------------------------------------------------------
def test_prepare_exports_every_status_and_compensation_at_zero(workflow: Workflow) -> None:
    metrics.prepare(workflow)
    order = {"workflow": "order"}
    for status in ["CONFIRMED", "CANCELLED", "FAILED", "FAILED_COMPENSATED", "FAILED_CRITICAL"]:
        assert REGISTRY.get_sample_value("orderflow_sagas_finished_total", order | {"status": status}) is not None
    for step in ["ReservationFailed", "ReleaseReservedInventory", "RefundPayment", "ReleaseInventory"]:
        for outcome in ["succeeded", "failed"]:
            labels = order | {"step": step, "outcome": outcome}
            assert REGISTRY.get_sample_value("orderflow_compensations_total", labels) is not None
    assert REGISTRY.get_sample_value("orderflow_step_timeouts_total", order | {"step": "ProcessPayment"}) is not None
    assert REGISTRY.get_sample_value("orderflow_sagas_started_total", order) is not None
    assert REGISTRY.get_sample_value("orderflow_sagas_retried_total", order) is not None
    assert REGISTRY.get_sample_value("orderflow_saga_notification_errors_total", order) is not None


def test_prepare_labels_the_cancellation_workflow_apart_without_compensations() -> None:
    """The cancellation's refund and void are its forward steps: no compensation series, and its statuses under
    workflow="cancellation", so the five figures are computed per workflow."""
    metrics.prepare(definition.load(cancellation.DEFINITION_FILE), name="cancellation")
    cancel = {"workflow": "cancellation"}
    for status in ["CANCELLED_BY_CUSTOMER", "CANCELLATION_FAILED"]:
        assert REGISTRY.get_sample_value("orderflow_sagas_finished_total", cancel | {"status": status}) is not None
    assert REGISTRY.get_sample_value("orderflow_step_attempts_total", cancel | {"step": "RestockCancelledOrder"}) == 0
    compensations = [
        s for s in samples() if s[0] == "orderflow_compensations_total" and ("workflow", "cancellation") in s[1]
    ]
    assert compensations == []


def test_no_label_carries_an_order_id_or_an_email(saga: SagaDsl) -> None:
    through_payment(saga)
    saga.expect_command("orders.CreateOrderRecord")
    saga.reply_error("OrderRecordError", f"{ORDER['orderId']} for {ORDER['customer']['email']}")
    observe_all(saga)
    values = {value for (_, labels) in samples() for _, value in labels}
    assert not [v for v in values if "ORDER#" in v or "@" in v]
