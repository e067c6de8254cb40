"""The guide's Testing Error Scenarios end to end, with faults injected by order id suffix (conftest.STACK_FAULTS):
-record: CreateOrderRecord fails; -notify: NotifyCustomer fails; -slow: ProcessPayment's first reply is lost;
-critical: the order record and the first four refunds fail."""

import asyncio
import json
import os
import signal
import subprocess
import sys
from datetime import datetime

import pytest
from harness import (
    Stack,
    db,
    eventually,
    http_json,
    new_id,
    order_body,
    order_view,
    outcome_of,
    publish_raw,
    seed,
    stock_of,
)

pytestmark = pytest.mark.e2e


async def charged_and_refunded(stack: Stack, order_id: str) -> tuple[int, int]:
    conn = await db(stack.settings, "payment")
    try:
        intent = await conn.fetchval("SELECT payment_intent_id FROM payment WHERE order_id = $1", order_id)
    finally:
        await conn.close()
    _, state = http_json(f"{stack.stripe_url}/_test/state")
    charges = [c for c in state["charges"] if c.get("payment_intent") == intent and c.get("status") == "succeeded"]
    return sum(c["amount"] for c in charges), sum(c.get("amount_refunded", 0) for c in charges)


def window(step: dict) -> tuple[datetime, datetime]:
    return datetime.fromisoformat(step["startedAt"]), datetime.fromisoformat(step["endedAt"])


async def test_order_record_failure_refunds_and_releases_in_parallel(stack: Stack, channel, listener) -> None:
    sku = new_id("sku-")
    await seed(stack, {sku: (5, "7.00")})
    order_id = new_id() + "-record"
    await publish_raw(channel, json.dumps(order_body(order_id, [(sku, 2)])).encode())

    outcome = await outcome_of(listener, order_id)
    assert outcome["_routingKey"] == "order.failed_compensated"
    assert outcome["status"] == "FAILED_COMPENSATED" and outcome["error"]["Error"] == "OrderRecordError"
    assert await stock_of(stack, sku) == 5
    assert await charged_and_refunded(stack, order_id) == (1400, 1400)

    _, view = order_view(stack, order_id)
    refund = next(s for s in view["steps"] if s["step"] == "RefundPayment")
    release = next(s for s in view["steps"] if s["step"] == "ReleaseInventory")
    assert refund["lane"] != release["lane"] and refund["outcome"] == release["outcome"] == "succeeded"
    (refund_start, refund_end), (release_start, release_end) = window(refund), window(release)
    assert refund_start <= release_end and release_start <= refund_end, "the compensations ran one after the other"
    refunded, released, voided = view["compensation"]
    assert refunded["refund"]["refunded"] and released["release"]["released"]
    # No record was written (OrderRecordError), so the void leaves only its tombstone.
    assert voided["void"] == {"voided": False}


async def test_notification_failure_still_confirms_with_notification_error(stack: Stack, channel, listener) -> None:
    sku = new_id("sku-")
    await seed(stack, {sku: (5, "4.00")})
    order_id = new_id() + "-notify"
    await publish_raw(channel, json.dumps(order_body(order_id, [(sku, 1)])).encode())
    outcome = await outcome_of(listener, order_id)
    assert outcome["status"] == "CONFIRMED" and outcome["_routingKey"] == "order.confirmed"
    assert outcome["notificationError"]["Error"] == "NotificationError"
    _, view = order_view(stack, order_id)
    assert view["notificationError"]["Error"] == "NotificationError"
    assert await charged_and_refunded(stack, order_id) == (400, 0)


async def test_payment_timeout_then_success_on_retry_charges_once(stack: Stack, channel, listener) -> None:
    sku = new_id("sku-")
    await seed(stack, {sku: (5, "3.00")})
    order_id = new_id() + "-slow"
    await publish_raw(channel, json.dumps(order_body(order_id, [(sku, 1)])).encode())
    outcome = await outcome_of(listener, order_id)
    assert outcome["status"] == "CONFIRMED"
    _, view = order_view(stack, order_id)
    payments = [s for s in view["steps"] if s["step"] == "ProcessPayment"]
    assert [(p["attempt"], p["outcome"]) for p in payments] == [(1, "timed_out"), (2, "succeeded")]
    retry = next(h for h in view["history"] if h["event"] == "RetryScheduled" and h["state"] == "ProcessPayment")
    assert retry["error"] == "States.Timeout" and retry["detail"]["delaySeconds"] == 5
    assert await charged_and_refunded(stack, order_id) == (300, 0)


async def test_failed_compensation_is_critical_and_redrive_finishes_it(stack: Stack, channel, listener) -> None:
    sku = new_id("sku-")
    await seed(stack, {sku: (5, "6.00")})
    order_id = new_id() + "-critical"
    await publish_raw(channel, json.dumps(order_body(order_id, [(sku, 1)])).encode())
    outcome = await outcome_of(listener, order_id, timeout=90)
    assert outcome["status"] == "FAILED_CRITICAL" and outcome["_routingKey"] == "order.failed_critical"
    assert await stock_of(stack, sku) == 5  # the release branch finished although the refund branch failed
    assert await charged_and_refunded(stack, order_id) == (600, 0)

    env = dict(os.environ, ORDERFLOW_ORCHESTRATOR_DATABASE_URL=stack.settings.orchestrator_database_url)
    redrive = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "orderctl", "redrive", order_id, "--workflow-file", stack.workflow_file],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert redrive.returncode == 0, redrive.stderr
    assert "RefundPayment" in redrive.stdout

    async def compensated():
        _, view = order_view(stack, order_id)
        return view if view["status"] == "FAILED_COMPENSATED" else None

    view = await eventually(compensated, timeout=60, what="the redriven saga to finish")
    assert await charged_and_refunded(stack, order_id) == (600, 600)
    refunds = [s for s in view["steps"] if s["step"] == "RefundPayment"]
    assert [r["attempt"] for r in refunds] == [1, 2, 3, 4, 5] and refunds[-1]["outcome"] == "succeeded"
    assert len([s for s in view["steps"] if s["step"] == "ReleaseInventory"]) == 1  # not run again
    assert "ExecutionRedriven" in [h["event"] for h in view["history"]]


async def test_orchestrator_killed_mid_saga_finishes_after_restart(stack: Stack, channel, listener) -> None:
    sku = new_id("sku-")
    await seed(stack, {sku: (5, "2.00")})
    order_id = new_id() + "-slow"  # the first payment reply is lost: the saga waits on a durable timer
    await publish_raw(channel, json.dumps(order_body(order_id, [(sku, 1)])).encode())

    async def waiting_on_payment():
        status, view = order_view(stack, order_id)
        return status == 200 and view["currentStep"] == "ProcessPayment"

    await eventually(waiting_on_payment, timeout=30, what="the saga to reach ProcessPayment")
    orchestrator = stack.supervisor.by_name("orchestrator")
    assert orchestrator.process is not None
    restarts = orchestrator.restarts
    os.killpg(orchestrator.process.pid, signal.SIGKILL)

    outcome = await outcome_of(listener, order_id, timeout=90)
    assert orchestrator.restarts == restarts + 1
    assert outcome["status"] == "CONFIRMED"
    _, view = order_view(stack, order_id)
    assert [s["step"] for s in view["steps"]] == [
        "CheckInventory",
        "ReserveInventory",
        "ProcessPayment",
        "ProcessPayment",
        "CreateOrderRecord",
        "CommitReservation",
        "NotifyCustomer",
    ]
    assert await charged_and_refunded(stack, order_id) == (200, 0)
    assert await stock_of(stack, sku) == 4
