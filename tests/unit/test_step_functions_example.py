"""The example Step Functions definition (examples/step-functions/order-saga.json) driven through the pure engine:
the Choice on the order total, the fraud screen, the Map that holds each line, and their compensations. The
end-to-end run on the real servers is tests/e2e/test_step_functions_definition.py."""

from pathlib import Path
from typing import Any

import pytest
from sagadsl import SagaDsl, given

from orchestrator import definition

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "step-functions" / "order-saga.json"
CUSTOMER = {"email": "ada@example.com", "phone": None}


def order(*lines: tuple[str, int, float]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The order's input and CheckInventory's reply for ``lines`` of (product, quantity, unit price)."""
    priced = [
        {"productId": p, "name": p, "quantity": q, "unitPrice": price, "lineTotal": price * q} for p, q, price in lines
    ]
    request = {
        "orderId": "ORDER#1",
        "customer": CUSTOMER,
        "items": [{"productId": p, "quantity": q} for p, q, _ in lines],
        "paymentMethodId": "pm_card_visa",
        "currency": "usd",
    }
    return request, {"lines": priced, "amount": sum(line["lineTotal"] for line in priced), "currency": "usd"}


def started(*lines: tuple[str, int, float]) -> SagaDsl:
    request, checked = order(*lines)
    saga = given(definition.load(EXAMPLE)).start(request)
    saga.expect_command("inventory.CheckInventory")
    saga.reply_ok(checked)
    return saga


def hold_each_line(saga: SagaDsl, count: int) -> None:
    for _ in range(count):
        line = saga.expect_command("inventory.ReserveInventoryLine")
        p = line.payload
        saga.reply_ok(
            {"reservationId": f"res_{p['productId']}", "productId": p["productId"], "quantity": p["quantity"]}
        )


def pay_record_commit_notify(saga: SagaDsl) -> None:
    saga.expect_command("payment.ProcessPayment")
    saga.reply_ok({"paymentIntentId": "pi_1", "status": "succeeded", "amount": 1.0})
    saga.expect_command("orders.CreateOrderRecord")
    saga.reply_ok({"created": True})
    saga.expect_command("inventory.CommitReservation")
    saga.reply_ok({"committed": 2})
    saga.expect_command("notify.NotifyCustomer")
    saga.reply_ok({"results": []})


def test_a_small_order_skips_the_screen_and_holds_each_line_under_max_concurrency() -> None:
    saga = started(("A", 1, 10.0), ("B", 2, 5.0), ("C", 1, 1.0))
    first, second = (saga.expect_command("inventory.ReserveInventoryLine") for _ in range(2))
    saga.expect_no_command()  # MaxConcurrency 2: the third line waits for one of the first two
    assert first.payload == {
        "orderId": "ORDER#1",
        "productId": "A",
        "quantity": 1,
        "idempotencyId": "ORDER#1-reserve-A",
    }
    assert second.payload["idempotencyId"] == "ORDER#1-reserve-B"
    saga.reply_ok({"reservationId": "res_a", "productId": "A", "quantity": 1}, to=first)
    third = saga.expect_command("inventory.ReserveInventoryLine")
    assert third.payload["productId"] == "C"
    saga.reply_ok({"reservationId": "res_b", "productId": "B", "quantity": 2}, to=second)
    saga.reply_ok({"reservationId": "res_c", "productId": "C", "quantity": 1}, to=third)
    assert [r["reservationId"] for r in saga.data["reservations"]] == ["res_a", "res_b", "res_c"]
    pay_record_commit_notify(saga)
    saga.expect_status("CONFIRMED")
    assert "payment.ScreenOrder" not in saga.resources()


def test_an_order_at_the_threshold_is_not_screened() -> None:
    saga = started(("A", 1, 1000.0))
    saga.expect_command("inventory.ReserveInventoryLine")


def test_a_large_order_is_screened_first_and_goes_on_when_approved() -> None:
    saga = started(("A", 2, 800.0), ("B", 1, 50.0))
    screen = saga.expect_command("payment.ScreenOrder")
    assert screen.payload["amount"] == 1650.0 and screen.payload["idempotencyKey"] == "ORDER#1-screen"
    assert screen.payload["customer"] == CUSTOMER and len(screen.payload["lines"]) == 2
    saga.expect_no_command()  # nothing held before the screen answers
    saga.reply_ok({"rules": ["amount_ceiling"]})
    assert saga.data["fraudCheck"] == {"decision": "approved", "rules": ["amount_ceiling"]}
    hold_each_line(saga, 2)
    pay_record_commit_notify(saga)
    saga.expect_status("CONFIRMED")


def test_a_rejected_order_is_cancelled_with_nothing_held_or_charged() -> None:
    saga = started(("A", 2, 800.0))
    saga.expect_command("payment.ScreenOrder")
    saga.reply_error("FraudCheck.Rejected", "amount_ceiling: 1600 usd is above 1500")
    saga.expect_status("CANCELLED").expect_no_command()
    assert saga.saga.error is not None and saga.saga.error.Error == "FraudCheck.Rejected"
    assert not {"inventory.ReserveInventoryLine", "payment.ProcessPayment"} & set(saga.resources())


def test_a_line_out_of_stock_releases_the_lines_held_and_cancels() -> None:
    saga = started(("A", 1, 10.0), ("B", 1, 10.0))
    first, second = (saga.expect_command("inventory.ReserveInventoryLine") for _ in range(2))
    saga.reply_ok({"reservationId": "res_a", "productId": "A", "quantity": 1}, to=first)
    saga.reply_error("InsufficientStockError", "insufficient stock of B", to=second)
    release = saga.expect_command("inventory.ReleaseInventory")
    assert release.payload == {"orderId": "ORDER#1", "action": "release", "idempotencyId": "ORDER#1-release"}
    saga.reply_ok({"released": True, "items": [{"productId": "A", "quantity": 1}]})
    saga.expect_status("CANCELLED")
    assert saga.data["compensation"]["released"] is True
    assert "payment.ProcessPayment" not in saga.resources()


def test_a_line_failing_otherwise_releases_and_fails() -> None:
    saga = started(("A", 1, 10.0))
    saga.expect_command("inventory.ReserveInventoryLine")
    saga.reply_error("InventoryError", "unknown product: A")
    saga.expect_command("inventory.ReleaseInventory")
    saga.reply_ok({"released": False, "items": []})
    saga.expect_status("FAILED")


def test_a_declined_payment_releases_every_line() -> None:
    saga = started(("A", 1, 10.0), ("B", 1, 10.0))
    hold_each_line(saga, 2)
    saga.expect_command("payment.ProcessPayment")
    saga.reply_error("PaymentDeclined", "card_declined")
    saga.expect_command("inventory.ReleaseInventory")
    saga.reply_ok({"released": True, "items": []})
    saga.expect_status("FAILED")


def test_the_example_is_among_the_definitions_both_validators_check() -> None:
    from test_asl_validators import DEFINITIONS

    assert EXAMPLE in DEFINITIONS
