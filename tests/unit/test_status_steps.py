"""The steps of GET /orders/{id} and `orderctl status`, read from a saga's history as the engine writes it."""

from typing import Any

import pytest
from sagadsl import SagaDsl, given

from orchestrator.status import _steps

pytestmark = pytest.mark.unit

ORDER = {"orderId": "ORDER#1"}


def work(reconcile: bool) -> dict[str, Any]:
    task: dict[str, Any] = {
        "Type": "Task",
        "Resource": "svc.Work",
        "Parameters": {"orderId.$": "$.orderId"},
        "TimeoutSeconds": 30,
        "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Caught"}],
        "Next": "Done",
    }
    if reconcile:
        task["Reconcile"] = {"TimeoutSeconds": 10}
    return {
        "StartAt": "Work",
        "States": {"Work": task, "Done": {"Type": "Succeed"}, "Caught": {"Type": "Fail", "Status": "CAUGHT"}},
    }


def steps(saga: SagaDsl) -> list[tuple[Any, ...]]:
    rows = [
        {**entry.model_dump(), "command_id": entry.commandId}
        for decision in saga.decisions
        for entry in decision.history
    ]
    return [(s["step"], s["attempt"], s["outcome"], s.get("reconcile", False)) for s in _steps(rows)]


def test_a_command_sent_afresh_continues_its_attempt() -> None:
    saga = given(work(reconcile=False)).start(ORDER)
    saga.expect_command("svc.Work")
    saga.reply_error("Command.Expired")
    saga.expect_command("svc.Work")
    saga.reply_ok({"done": True})
    assert steps(saga) == [("Work", 1, "succeeded", False)]


def test_a_reconcile_is_an_entry_of_its_own() -> None:
    saga = given(work(reconcile=True)).start(ORDER)
    saga.expect_command("svc.Work")
    saga.fire_timeout()
    saga.expect_command("svc.Work")
    saga.fire_timeout().expect_status("CAUGHT")
    assert steps(saga) == [("Work", 1, "timed_out", False), ("Work", 1, "timed_out", True)]
