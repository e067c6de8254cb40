"""Conformance: the ASL specification's Retry and Catch examples through decide(), with the waits and the
outputs the specification gives."""

from typing import Any

import pytest
from sagadsl import given

pytestmark = pytest.mark.unit


def task(retry: list[dict[str, Any]], catch: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {"Type": "Task", "Resource": "svc.Work", "Retry": retry, "End": True}
    if catch:
        state["Catch"] = catch
    return {
        "StartAt": "Work",
        "States": {
            "Work": state,
            "RecoveryState": {"Type": "Pass", "End": True},
            "EndMachine": {"Type": "Fail", "Error": "Ended", "Cause": "caught by States.ALL"},
        },
    }


def test_the_specifications_retrier_sequence_error_a_b_c_b() -> None:
    """'The first two errors match the first retrier and cause waits of one and two seconds. The third error
    matches the second retrier and causes a wait of five seconds. The fourth error would match the first
    retrier but its MaxAttempts ceiling (two) has already been reached, so that Retrier fails, and execution
    is redirected to the Catch field.'"""
    retry = [
        {"ErrorEquals": ["ErrorA", "ErrorB"], "IntervalSeconds": 1, "BackoffRate": 2.0, "MaxAttempts": 2},
        {"ErrorEquals": ["ErrorC"], "IntervalSeconds": 5},
    ]
    catch = [{"ErrorEquals": ["States.ALL"], "Next": "RecoveryState"}]
    saga = given(task(retry, catch)).start({})
    waits = []
    for error in ("ErrorA", "ErrorB", "ErrorC"):
        saga.expect_command("svc.Work")
        saga.reply_error(error)
        waits.append(saga.retry_delay())
        saga.fire_retry()
    assert waits == [1, 2, 5]
    saga.expect_command("svc.Work")
    saga.reply_error("ErrorB").expect_status("SUCCEEDED")
    assert saga.data == {"Error": "ErrorB", "Cause": ""}, "a catcher's default ResultPath '$' replaces the input"


def test_the_specifications_timeout_retrier_waits_3_then_4_5_seconds() -> None:
    retry = [{"ErrorEquals": ["States.Timeout"], "IntervalSeconds": 3, "MaxAttempts": 2, "BackoffRate": 1.5}]
    saga = given(task(retry)).start({})
    waits = []
    for _ in range(2):
        saga.expect_command("svc.Work")
        saga.fire_timeout()
        waits.append(saga.retry_delay())
        saga.fire_retry()
    assert waits == [3, 4.5]
    saga.expect_command("svc.Work")
    saga.fire_timeout().expect_status("FAILED")
    assert saga.saga.error is not None and saga.saga.error.Error == "States.Timeout"


@pytest.mark.parametrize(
    ("error", "next_state", "output"),
    [
        (
            "java.lang.Exception",
            "RecoveryState",
            {"order": 1, "error-info": {"Error": "java.lang.Exception", "Cause": "x"}},
        ),
        ("Other", "EndMachine", None),
    ],
)
def test_the_specifications_catchers_in_order(error: str, next_state: str, output: Any) -> None:
    catch = [
        {"ErrorEquals": ["java.lang.Exception"], "ResultPath": "$.error-info", "Next": "RecoveryState"},
        {"ErrorEquals": ["States.ALL"], "Next": "EndMachine"},
    ]
    saga = given(task([], catch)).start({"order": 1})
    saga.expect_command("svc.Work")
    saga.reply_error(error, "x")
    if output is None:
        saga.expect_status("FAILED")
        assert saga.saga.error is not None and saga.saga.error.Error == "Ended"
    else:
        saga.expect_status("SUCCEEDED")
        assert saga.data == output


def test_states_task_failed_does_not_match_a_timeout() -> None:
    retry = [{"ErrorEquals": ["States.TaskFailed"], "MaxAttempts": 5}]
    catch = [{"ErrorEquals": ["States.Timeout"], "Next": "RecoveryState"}]
    saga = given(task(retry, catch)).start({})
    saga.expect_command("svc.Work")
    saga.fire_timeout().expect_status("SUCCEEDED")


def test_max_delay_seconds_caps_the_backoff() -> None:
    retry = [{"ErrorEquals": ["E"], "IntervalSeconds": 10, "BackoffRate": 3.0, "MaxAttempts": 3, "MaxDelaySeconds": 25}]
    saga = given(task(retry)).start({})
    waits = []
    for _ in range(3):
        saga.expect_command("svc.Work")
        saga.reply_error("E")
        waits.append(saga.retry_delay())
        saga.fire_retry()
    assert waits == [10, 25, 25]
