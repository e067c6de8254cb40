"""Conformance: the inline Map state (the specification's ship-items example) and Parallel through decide():
one lane per item, at most MaxConcurrency at a time, the outputs in item order, the context object's
$$.Map.Item, and what a failing iteration does."""

from typing import Any

import pytest
from sagadsl import given

pytestmark = pytest.mark.unit

SHIPMENT = {
    "ship-date": "2016-03-14T01:59:00Z",
    "detail": {
        "delivery-partner": "UQS",
        "shipped": [
            {"prod": "R31", "dest-code": 9511, "quantity": 1344},
            {"prod": "S39", "dest-code": 9511, "quantity": 40},
            {"prod": "R31", "dest-code": 9833, "quantity": 12},
        ],
    },
}


def validate_all(max_concurrency: int = 0, **fields: Any) -> dict[str, Any]:
    """The specification's example: ship each item, passing the delivery partner beside it."""
    state = {
        "Type": "Map",
        "InputPath": "$.detail",
        "ItemsPath": "$.shipped",
        "MaxConcurrency": max_concurrency,
        "ItemSelector": {
            "parcel.$": "$$.Map.Item.Value",
            "courier.$": "$.delivery-partner",
            "index.$": "$$.Map.Item.Index",
        },
        "ItemProcessor": {
            "ProcessorConfig": {"Mode": "INLINE"},
            "StartAt": "Validate",
            "States": {"Validate": {"Type": "Task", "Resource": "svc.Ship", "End": True}},
        },
        "ResultPath": "$.detail.shipped",
        "End": True,
        **fields,
    }
    return {"StartAt": "ValidateAll", "States": {"ValidateAll": state}}


def test_each_item_runs_with_its_selector_and_the_outputs_come_back_in_item_order() -> None:
    saga = given(validate_all()).start(SHIPMENT)
    commands = [saga.expect_command("svc.Ship") for _ in range(3)]
    assert [c.payload for c in commands] == [
        {"parcel": item, "courier": "UQS", "index": i} for i, item in enumerate(SHIPMENT["detail"]["shipped"])
    ]
    for command in reversed(commands):  # replies in any order: results in item order
        saga.reply_ok({"ok": command.payload["index"]}, to=command)
    saga.expect_status("SUCCEEDED")
    assert saga.data["detail"]["shipped"] == [{"ok": 0}, {"ok": 1}, {"ok": 2}]
    assert saga.data["ship-date"] == SHIPMENT["ship-date"]
    assert "MapStateSucceeded" in saga.events()


def test_max_concurrency_bounds_the_iterations_in_flight() -> None:
    saga = given(validate_all(max_concurrency=2)).start(SHIPMENT)
    first, second = saga.expect_command("svc.Ship"), saga.expect_command("svc.Ship")
    saga.expect_no_command()
    saga.reply_ok({}, to=first)
    third = saga.expect_command("svc.Ship")
    assert third.payload["index"] == 2
    saga.reply_ok({}, to=second).reply_ok({}, to=third).expect_status("SUCCEEDED")


def test_a_failed_iteration_starts_nothing_new_and_the_catch_applies() -> None:
    catch = [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Failed"}]
    document = validate_all(max_concurrency=2, Catch=catch)
    document["States"]["Failed"] = {"Type": "Fail", "ErrorPath": "$.error.Error"}
    saga = given(document).start(SHIPMENT)
    first, second = saga.expect_command("svc.Ship"), saga.expect_command("svc.Ship")
    saga.reply_error("OutOfStock", to=first)
    saga.expect_no_command()  # the third item does not start
    saga.reply_ok({}, to=second).expect_status("FAILED")
    assert saga.saga.error is not None and saga.saga.error.Error == "OutOfStock"
    assert "MapStateFailed" in saga.events()


def test_an_empty_array_gives_an_empty_result() -> None:
    saga = given(validate_all()).start({"detail": {"delivery-partner": "UQS", "shipped": []}})
    saga.expect_status("SUCCEEDED")
    assert saga.data["detail"]["shipped"] == []


def test_items_that_are_not_an_array_are_states_runtime() -> None:
    saga = given(validate_all()).start({"detail": {"delivery-partner": "UQS", "shipped": "R31"}})
    saga.expect_status("FAILED")
    assert saga.saga.error is not None and saga.saga.error.Error == "States.Runtime"


def test_an_iterator_of_pass_states_finishes_in_one_decision() -> None:
    document = {
        "StartAt": "Double",
        "States": {
            "Double": {
                "Type": "Map",
                "ItemsPath": "$.numbers",
                "MaxConcurrency": 1,
                "Iterator": {
                    "StartAt": "Shape",
                    "States": {
                        "Shape": {"Type": "Pass", "Parameters": {"twice.$": "States.MathAdd($.n, $.n)"}, "End": True}
                    },
                },
                "End": True,
            }
        },
    }
    saga = given(document).start({"numbers": [{"n": 1}, {"n": 2}, {"n": 3}]}).expect_status("SUCCEEDED")
    assert saga.data == [{"twice": 2}, {"twice": 4}, {"twice": 6}]
    assert len(saga.decisions) == 1


def test_parallel_branches_get_the_effective_input_and_result_selector_applies() -> None:
    document = {
        "StartAt": "Both",
        "States": {
            "Both": {
                "Type": "Parallel",
                "Parameters": {"id.$": "$.orderId"},
                "Branches": [
                    {"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}},
                    {"StartAt": "B", "States": {"B": {"Type": "Pass", "Result": {"b": 1}, "End": True}}},
                ],
                "ResultSelector": {"first.$": "$[0]", "second.$": "$[1].b"},
                "ResultPath": "$.both",
                "End": True,
            }
        },
    }
    saga = given(document).start({"orderId": "O-1"}).expect_status("SUCCEEDED")
    assert saga.data == {"orderId": "O-1", "both": {"first": {"id": "O-1"}, "second": 1}}


def test_a_task_only_inside_a_map_still_gets_its_command_queue_declared() -> None:
    """The orchestrator declares the command queue of every Task it may send to (commands are mandatory); a
    service called only from a Map's ItemProcessor, nested in a Parallel, is one of them."""
    from orchestrator import definition
    from orchestrator.main import _resources
    from orchestrator.metrics import _tasks

    nested = {
        "StartAt": "Both",
        "States": {
            "Both": {
                "Type": "Parallel",
                "Branches": [validate_all(), {"StartAt": "Other", "States": {"Other": {"Type": "Succeed"}}}],
                "End": True,
            }
        },
    }
    workflow = definition.Workflow.model_validate(nested)
    assert _resources(workflow) == ["svc.Ship"]
    assert [name for name, _ in _tasks(workflow.States)] == ["Validate"]
