"""Conformance: a Parallel or Map inside a Parallel's branch or a Map's iteration, through decide(). The
lanes form a tree (keys 'branch:0', 'branch:0.1', ...); a group's result is its lanes' outputs in order;
a failure no Catch takes inside a branch fails the branch and so the enclosing Parallel, whose Catch
applies; every lane of a group runs to its end (Orderflow's extension)."""

from typing import Any

import pytest
from sagadsl import given

from orchestrator.definition import DefinitionError, parse
from orchestrator.state import Redriven

pytestmark = pytest.mark.unit

CATCH_ALL = [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Caught"}]


def passing(result: Any = None, **fields: Any) -> dict[str, Any]:
    """A one-state branch: a Pass with ``result`` (or its input when None)."""
    state = {"Type": "Pass", "End": True, **fields}
    if result is not None:
        state["Result"] = result
    return {"StartAt": "P", "States": {"P": state}}


def parallel(*branches: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"Type": "Parallel", "Branches": list(branches), "End": True, **fields}


def map_of(processor: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"Type": "Map", "ItemProcessor": processor, "End": True, **fields}


def branch(state: dict[str, Any]) -> dict[str, Any]:
    return {"StartAt": "Inner", "States": {"Inner": state}}


def machine(state: dict[str, Any], *, caught: bool = False) -> dict[str, Any]:
    states = {"Outer": state}
    if caught:
        states["Caught"] = {"Type": "Pass", "End": True}
    return {"StartAt": "Outer", "States": states}


# -- outputs: each group's result is its lanes' outputs in order, at every level --------------------
@pytest.mark.parametrize(
    ("outer", "state_input", "expected"),
    [
        (
            parallel(branch(parallel(passing({"a": 1}), passing({"b": 2}))), passing({"c": 3})),
            {},
            [[{"a": 1}, {"b": 2}], {"c": 3}],
        ),
        (
            parallel(
                branch(map_of(passing(None, Parameters={"twice.$": "States.MathAdd($, $)"}), ItemsPath="$.n")),
                passing(None, InputPath="$.tag"),
            ),
            {"n": [1, 2, 3], "tag": "t"},
            [[{"twice": 2}, {"twice": 4}, {"twice": 6}], "t"],
        ),
        (
            map_of(
                branch(parallel(passing(None), passing(None, Parameters={"index.$": "$.i"}))),
                ItemsPath="$.items",
                ItemSelector={"i.$": "$$.Map.Item.Index", "v.$": "$$.Map.Item.Value"},
                MaxConcurrency=1,
            ),
            {"items": ["x", "y"]},
            [[{"i": 0, "v": "x"}, {"index": 0}], [{"i": 1, "v": "y"}, {"index": 1}]],
        ),
        (
            parallel(
                branch(
                    parallel(
                        branch(parallel(passing({"deep": True}), passing(None, InputPath="$.k"))),
                        ResultSelector={"inner.$": "$[0][1]"},
                        ResultPath="$.got",
                    )
                ),
                ResultPath="$.out",
            ),
            {"k": "v"},
            {"k": "v", "out": [{"k": "v", "got": {"inner": "v"}}]},
        ),
    ],
    ids=["Parallel in a Parallel", "Map in a Parallel", "Parallel in a Map", "three deep with paths"],
)
def test_nested_groups_give_their_lanes_outputs_in_order(outer: dict, state_input: dict, expected: Any) -> None:
    saga = given(machine(outer)).start(state_input).expect_status("SUCCEEDED")
    assert saga.data == expected


# -- tasks in nested lanes: commands, lane keys, timers ------------------------------------------
def nested_tasks(**inner_fields: Any) -> dict[str, Any]:
    """Outer Parallel: branch 0 runs an inner Parallel of two tasks, branch 1 one task."""
    inner = parallel(
        passing_task("svc.A", Retry=[{"ErrorEquals": ["Service.Unavailable"], "IntervalSeconds": 2}]),
        passing_task("svc.B"),
        **inner_fields,
    )
    return machine(parallel(branch(inner), passing_task("svc.C"), Catch=CATCH_ALL, TimeoutSeconds=120), caught=True)


def passing_task(resource: str, **fields: Any) -> dict[str, Any]:
    name = resource.split(".")[1]
    return {"StartAt": name, "States": {name: {"Type": "Task", "Resource": resource, "End": True, **fields}}}


def test_nested_tasks_run_on_lanes_of_their_own_and_the_outputs_nest() -> None:
    saga = given(nested_tasks()).start({"orderId": "O-1"})
    a, b, c = saga.expect_command("svc.A"), saga.expect_command("svc.B"), saga.expect_command("svc.C")
    assert sorted(saga.timers) == ["branch:0.0", "branch:0.1", "branch:1", "parallel"]
    saga.reply_error("Service.Unavailable", to=a).expect_retry_delay(2, lane="branch:0.0")
    saga.reply_ok({"b": 1}, to=b).reply_ok({"c": 1}, to=c).expect_status("RUNNING")
    saga.fire_retry("branch:0.0").reply_ok({"a": 2}, to=saga.expect_command("svc.A"))
    saga.expect_status("SUCCEEDED")
    assert saga.data == [[{"a": 2}, {"b": 1}], {"c": 1}]
    assert saga.timers == {}


@pytest.mark.parametrize(
    ("inner_fields", "a_error", "status", "caught_error", "outer_output"),
    [
        ({}, "Boom", "SUCCEEDED", "Boom", None),
        (
            {"Catch": [{"ErrorEquals": ["Boom"], "ResultPath": "$.innerError", "Next": "Handled"}], "End": None},
            "Boom",
            "SUCCEEDED",
            None,
            [{"orderId": "O-1", "innerError": {"Error": "Boom", "Cause": "Outer/0/Inner/0/A: Boom"}}, {"c": 1}],
        ),
        (
            {"Catch": [{"ErrorEquals": ["Other"], "ResultPath": "$.innerError", "Next": "Handled"}], "End": None},
            "Boom",
            "SUCCEEDED",
            "Boom",
            None,
        ),
    ],
    ids=["no inner Catch: the outer Catch takes it", "the inner Catch takes it", "the inner Catch does not match"],
)
def test_a_failure_in_a_nested_lane_fails_its_parallel_and_propagates_until_a_catch_takes_it(
    inner_fields: dict, a_error: str, status: str, caught_error: str | None, outer_output: Any
) -> None:
    document = nested_tasks(**inner_fields)
    if "Catch" in inner_fields:
        outer_branch = document["States"]["Outer"]["Branches"][0]
        outer_branch["States"]["Inner"]["Next"] = "Handled"
        outer_branch["States"]["Inner"].pop("End")
        outer_branch["States"]["Handled"] = {"Type": "Pass", "End": True}
    saga = given(document).start({"orderId": "O-1"})
    a, b, c = saga.expect_command("svc.A"), saga.expect_command("svc.B"), saga.expect_command("svc.C")
    saga.reply_error(a_error, "bad", to=a)
    # Every lane runs to its end: the sibling inside and the sibling outside are still waited for.
    saga.expect_status("RUNNING").reply_ok({"b": 1}, to=b).expect_status("RUNNING").reply_ok({"c": 1}, to=c)
    saga.expect_status(status)
    if caught_error is None:
        assert saga.data == outer_output
        assert "ParallelStateFailed" in saga.events() and "Caught" in saga.events()
    else:
        assert saga.data["error"]["Error"] == caught_error
        assert saga.events().count("ParallelStateFailed") == 2, "the inner Parallel, then the outer"
    assert saga.timers == {}


def test_a_nested_parallel_times_out_on_its_own_timer_and_its_catch_applies() -> None:
    catch = [{"ErrorEquals": ["States.Timeout"], "ResultPath": "$.late", "Next": "Late"}]
    document = nested_tasks(TimeoutSeconds=30, Catch=catch, End=None, Next="Late")
    document["States"]["Outer"]["Branches"][0]["States"]["Inner"].pop("End")
    document["States"]["Outer"]["Branches"][0]["States"]["Late"] = {"Type": "Pass", "OutputPath": "$.late", "End": True}
    saga = given(document).start({"orderId": "O-1"})
    a, b, c = saga.expect_command("svc.A"), saga.expect_command("svc.B"), saga.expect_command("svc.C")
    saga.expect_timeout_in(30, lane="parallel:0").expect_timeout_in(120, lane="parallel")
    saga.reply_ok({"b": 1}, to=b).fire_parallel_timeout("parallel:0")
    assert "branch:0.0" not in saga.timers and "parallel:0" not in saga.timers
    saga.reply_ok({"a": "late"}, to=a)  # the cut lane's reply comes too late
    assert "LateReplyIgnored" in saga.events()
    saga.reply_ok({"c": 1}, to=c).expect_status("SUCCEEDED")
    assert saga.data[0]["Error"] == "States.Timeout" and "branches still running" in saga.data[0]["Cause"]
    assert saga.data[1] == {"c": 1}


def test_the_outer_timeout_cuts_every_lane_under_it() -> None:
    saga = given(nested_tasks(TimeoutSeconds=300)).start({"orderId": "O-1"})
    for resource in ("svc.A", "svc.B", "svc.C"):
        saga.expect_command(resource)
    saga.fire_parallel_timeout()
    saga.expect_status("SUCCEEDED")
    assert saga.data["error"]["Error"] == "States.Timeout"
    assert saga.timers == {}, "the nested lanes' timers and the nested Parallel's are cleared too"


def test_a_map_in_a_parallel_starts_nothing_new_after_a_failure_and_its_parallel_fails() -> None:
    inner = map_of(passing_task("svc.Ship"), ItemsPath="$.items", MaxConcurrency=1)
    document = machine(parallel(branch(inner), passing_task("svc.C"), Catch=CATCH_ALL), caught=True)
    saga = given(document).start({"items": [{"n": 0}, {"n": 1}, {"n": 2}]})
    first, c = saga.expect_command("svc.Ship"), saga.expect_command("svc.C")
    saga.expect_no_command().reply_ok({}, to=first)
    second = saga.expect_command("svc.Ship")
    assert second.payload == {"n": 1}
    saga.reply_error("ShipFailed", to=second).expect_no_command().expect_status("RUNNING")
    saga.reply_ok({"c": 1}, to=c).expect_status("SUCCEEDED")
    assert saga.data["error"]["Error"] == "ShipFailed"


def test_a_redrive_reruns_only_the_nested_lane_that_failed() -> None:
    document = machine(parallel(branch(parallel(passing_task("svc.A"), passing_task("svc.B"))), passing_task("svc.C")))
    saga = given(document).start({"orderId": "O-1"})
    a, b, c = saga.expect_command("svc.A"), saga.expect_command("svc.B"), saga.expect_command("svc.C")
    saga.reply_ok({"a": 1}, to=a).reply_error("Boom", to=b).reply_ok({"c": 1}, to=c).expect_status("FAILED")
    saga.send(Redriven())
    b = saga.expect_command("svc.B")
    saga.expect_no_command()
    assert b.attempt == 2 and sorted(saga.timers) == ["branch:0.1"]
    saga.reply_ok({"b": 2}, to=b).expect_status("SUCCEEDED")
    assert saga.data == [[{"a": 1}, {"b": 2}], {"c": 1}]


# -- the limit ------------------------------------------------------------------------------------
def test_groups_nest_three_deep_and_no_deeper() -> None:
    three = parallel(branch(parallel(branch(parallel(passing(1))))))
    assert parse(machine(three))
    four = parallel(branch(parallel(branch(parallel(branch(map_of(passing(1))))))))
    with pytest.raises(DefinitionError, match="a Map nested 4 deep; Parallel and Map nest at most 3 deep"):
        parse(machine(four))
