"""Standard definitions bound to the engine: the resource map (ARN -> command) and the extensions sidecar."""

import json
from pathlib import Path
from typing import Any

import pytest
from sagadsl import given

from orchestrator import definition
from orchestrator.asl.resources import LAMBDA_INVOKE, ResourceMap, function_name
from orchestrator.definition import DefinitionError, ParallelState, SucceedState, TaskState, load, parse
from orchestrator.versions import version_of

pytestmark = pytest.mark.unit

FN = "arn:aws:lambda:eu-west-1:123456789012:function:"


def one_task(resource: str, **task: Any) -> dict[str, Any]:
    state: dict[str, Any] = {"Type": "Task", "Resource": resource, "End": True}
    state.update(task)
    return {"StartAt": "A", "States": {"A": state}}


def bound(document: dict[str, Any], **kwargs: Any) -> TaskState:
    task = parse(document, **kwargs).state("A")
    assert isinstance(task, TaskState)
    return task


@pytest.mark.parametrize(
    ("reference", "name"),
    [
        ("CheckInventory", "CheckInventory"),
        ("CheckInventory:live", "CheckInventory"),
        ("123456789012:function:CheckInventory", "CheckInventory"),
        (FN + "CheckInventory", "CheckInventory"),
        (FN + "CheckInventory:7", "CheckInventory"),
        ("arn:aws-cn:lambda:cn-north-1:123456789012:function:CheckInventory", "CheckInventory"),
        ("arn:aws:sqs:eu-west-1:123456789012:queue", None),
    ],
)
def test_function_names_are_read_as_lambda_reads_them(reference: str, name: str | None) -> None:
    assert function_name(reference) == name


def test_a_function_arn_runs_its_command_with_parameters_as_the_payload() -> None:
    task = bound(one_task(FN + "ReserveInventory", Parameters={"orderId.$": "$.orderId"}))
    assert task.Resource == "inventory.ReserveInventory"
    assert task.Parameters == {"orderId.$": "$.orderId"}
    assert task.Integration is None and not task.Compensation


def test_lambda_invoke_takes_the_function_name_and_keeps_the_payload() -> None:
    parameters = {"FunctionName": FN + "RefundPayment:$LATEST", "Payload": {"orderId.$": "$.orderId"}}
    task = bound(one_task(LAMBDA_INVOKE, Parameters=parameters))
    assert task.Resource == "payment.RefundPayment"
    assert task.Parameters == {"Payload": {"orderId.$": "$.orderId"}}
    assert task.Integration == "lambda:invoke"
    assert task.Compensation, "the resource map marks RefundPayment as a compensation"


@pytest.mark.parametrize(
    ("resource", "parameters", "message"),
    [
        (FN + "MineBitcoin", {}, "function 'arn:aws:lambda:eu-west-1:123456789012:function:MineBitcoin' is not in"),
        (LAMBDA_INVOKE, {"Payload.$": "$"}, "needs Parameters.FunctionName"),
        (LAMBDA_INVOKE, {"FunctionName.$": "$.fn"}, "needs Parameters.FunctionName"),
        (LAMBDA_INVOKE + ".waitForTaskToken", {"FunctionName": "CheckInventory"}, ".waitForTaskToken pattern"),
        (LAMBDA_INVOKE, {"FunctionName": "CheckInventory", "InvocationType": "Event"}, "['InvocationType']"),
        ("arn:aws:states:eu-west-1:123456789012:activity:Pack", {}, "not in the resource map (Resources)"),
    ],
)
def test_a_resource_the_map_does_not_bind_is_rejected_with_its_state(
    resource: str, parameters: dict[str, Any], message: str
) -> None:
    with pytest.raises(DefinitionError) as info:
        parse(one_task(resource, Parameters=parameters))
    assert message in str(info.value) and "A:" in str(info.value)


def test_a_resource_of_the_users_own_is_bound_exactly() -> None:
    activity = "arn:aws:states:eu-west-1:123456789012:activity:Pack"
    resources = ResourceMap.model_validate({"Resources": {activity: {"Command": "warehouse.PackOrder"}}})
    assert bound(one_task(activity), resources=resources).Resource == "warehouse.PackOrder"


def test_the_extensions_go_inline_and_step_names_apply() -> None:
    document = {
        "StartAt": "P",
        "States": {
            "P": {
                "Type": "Parallel",
                "Next": "Done",
                "Branches": [
                    {
                        "StartAt": "RefundUnknown",
                        "States": {"RefundUnknown": {"Type": "Task", "Resource": FN + "RefundPayment", "End": True}},
                    }
                ],
            },
            "Done": {"Type": "Succeed"},
        },
    }
    extensions = {
        "States": {
            "P": {"TimeoutSeconds": 120},
            "Done": {"Status": "CONFIRMED"},
            "RefundUnknown": {"Step": "RefundPayment"},
        }
    }
    workflow = parse(document, extensions=extensions)
    parallel, done = workflow.state("P"), workflow.state("Done")
    assert isinstance(parallel, ParallelState) and parallel.TimeoutSeconds == 120
    assert isinstance(done, SucceedState) and done.Status == "CONFIRMED"
    assert parallel.Branches[0].StartAt == "RefundPayment"
    assert isinstance(workflow.state("P/0/RefundPayment"), TaskState)


@pytest.mark.parametrize(
    ("extensions", "message"),
    [
        ({"States": {"Nowhere": {"Status": "X"}}}, "states the definition does not have: ['Nowhere']"),
        ({"States": {"A": {"Status": "X"}}}, "extension Status does not apply to a Task state"),
        ({"States": {"A": {"Colour": "red"}}}, "Colour"),
    ],
)
def test_extensions_that_do_not_fit_are_rejected(extensions: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError) as info:
        parse(one_task(FN + "CheckInventory"), extensions=extensions)
    assert message in str(info.value)


def test_state_names_must_be_unique_in_a_standard_definition() -> None:
    branch = {"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": FN + "CheckInventory", "End": True}}}
    document = {
        "StartAt": "A",
        "States": {
            "A": {"Type": "Task", "Resource": FN + "CheckInventory", "Next": "P"},
            "P": {"Type": "Parallel", "End": True, "Branches": [branch]},
        },
    }
    with pytest.raises(DefinitionError) as info:
        parse(document)
    assert "P/Branches[0]/A: state names must be unique" in str(info.value)


def test_workflow_json_binds_to_the_engine_form_it_had_before_resources_were_arns() -> None:
    """The same commands, extensions and branch names as the engine ran before (data/before-arns.engine.json is
    workflow.json as it was): the saga runs as it did, and a version stored then still parses."""
    before = parse(json.loads((Path(__file__).parent / "data" / "before-arns.engine.json").read_text()))
    assert version_of(load()) == version_of(before)
    refund = load().state("PaymentOutcomeUnknown/0/RefundPayment")
    assert isinstance(refund, TaskState) and refund.Resource == "payment.RefundPayment" and refund.Compensation


def test_engine_document_round_trips_through_a_file_without_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "copy.json"
    path.write_text(json.dumps(definition.engine_document()))
    assert version_of(load(path)) == version_of(load())


def test_lambda_invoke_sends_the_payload_and_wraps_the_reply_as_lambda_does() -> None:
    parameters = {"FunctionName": "CheckInventory", "Payload": {"orderId.$": "$.orderId", "fixed": 1}}
    saga = given(one_task(LAMBDA_INVOKE, Parameters=parameters, ResultPath="$.check")).start({"orderId": "O-1"})
    command = saga.expect_command("inventory.CheckInventory")
    assert command.payload == {"orderId": "O-1", "fixed": 1}
    saga.reply_ok({"amount": "5.00"}).expect_status("SUCCEEDED")
    assert saga.data["check"] == {"Payload": {"amount": "5.00"}, "StatusCode": 200}
