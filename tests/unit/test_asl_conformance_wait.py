"""Conformance: the Wait state's four forms (the specification's examples) through decide(): a durable timer
on the lane, fired by the timer loop, after which the state passes its input on."""

from datetime import timedelta
from typing import Any

import pytest
from sagadsl import T0, given

from orchestrator.definition import DefinitionError, parse
from orchestrator.state import TimerFired

pytestmark = pytest.mark.unit


def machine(wait: dict[str, Any]) -> dict[str, Any]:
    return {
        "StartAt": "wait_ten_seconds",
        "States": {
            "wait_ten_seconds": {"Type": "Wait", "Next": "Work", **wait},
            "Work": {"Type": "Task", "Resource": "svc.Work", "End": True},
        },
    }


@pytest.mark.parametrize(
    ("wait", "state_input", "seconds"),
    [
        ({"Seconds": 10}, {}, 10),
        ({"Timestamp": "2024-01-01T12:01:00Z"}, {}, 60),
        ({"SecondsPath": "$.seconds"}, {"seconds": 30}, 30),
        ({"TimestampPath": "$.expirydate"}, {"expirydate": "2024-01-01T13:00:00+01:00"}, 0),
        ({"TimestampPath": "$.expirydate"}, {"expirydate": "2024-01-01T14:00:00+01:00"}, 3600),
    ],
    ids=["Seconds", "Timestamp", "SecondsPath", "TimestampPath in the past", "TimestampPath with an offset"],
)
def test_each_form_waits_until_its_time_then_goes_on(wait: dict, state_input: dict, seconds: int) -> None:
    saga = given(machine(wait)).start(state_input)
    if seconds == 0:
        saga.expect_command("svc.Work")
        return
    saga.expect_no_command()
    timer = saga.timers["main"]
    assert timer.kind == "wait" and timer.dueAt == T0 + timedelta(seconds=seconds)
    saga.fire_wait()
    assert saga.expect_command("svc.Work").payload == state_input
    assert "WaitStateExited" in saga.events()


def test_a_stale_wait_timer_does_nothing() -> None:
    saga = given(machine({"Seconds": 10})).start({})
    saga.send(TimerFired(lane="main", token="wait:wait_ten_seconds:not-this-one"))
    saga.expect_no_command()


@pytest.mark.parametrize(
    ("wait", "state_input"),
    [
        ({"SecondsPath": "$.seconds"}, {"seconds": -1}),
        ({"SecondsPath": "$.seconds"}, {"seconds": "ten"}),
        ({"SecondsPath": "$.missing"}, {}),
        ({"TimestampPath": "$.when"}, {"when": "tomorrow"}),
    ],
)
def test_a_path_that_gives_no_time_is_states_runtime(wait: dict, state_input: dict) -> None:
    saga = given(machine(wait)).start(state_input).expect_status("FAILED")
    assert saga.saga.error is not None and saga.saga.error.Error == "States.Runtime"


def test_a_wait_in_a_parallel_branch_uses_the_branch_lane() -> None:
    document = {
        "StartAt": "P",
        "States": {
            "P": {
                "Type": "Parallel",
                "End": True,
                "Branches": [
                    {"StartAt": "Pause", "States": {"Pause": {"Type": "Wait", "Seconds": 5, "End": True}}},
                    {"StartAt": "Go", "States": {"Go": {"Type": "Pass", "End": True}}},
                ],
            }
        },
    }
    saga = given(document).start({"a": 1})
    assert saga.timers["branch:0"].kind == "wait"
    saga.fire_wait("branch:0").expect_status("SUCCEEDED")
    assert saga.data == [{"a": 1}, {"a": 1}]


@pytest.mark.parametrize(
    ("wait", "message"),
    [
        ({"Seconds": 1, "SecondsPath": "$.s"}, "exactly one of"),
        ({}, "exactly one of"),
        ({"Seconds": -1}, "greater than or equal to 0"),
        ({"Timestamp": "2024-01-01 12:00"}, "not an RFC 3339 timestamp"),
    ],
)
def test_a_malformed_wait_is_rejected_when_the_definition_loads(wait: dict, message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        parse(machine(wait))
