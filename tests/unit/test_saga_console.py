"""The console's pure pieces: cursors, LIKE escaping, the WHERE clause's parameters, steps from history rows,
orderctl's times and its mapping of problems to exit codes."""

import argparse
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator import saga_queries
from orchestrator.api_models import ListQuery, SagaFilter
from orchestrator.saga_detail import steps_of
from orderctl.api_client import problem_error
from orderctl.errors import FAILED, UNREACHABLE, USAGE
from orderctl.sagas import as_view, query_params, when

pytestmark = pytest.mark.unit
T0 = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


def test_a_cursor_round_trips_and_a_forged_one_is_refused() -> None:
    cursor = saga_queries.encode_cursor(T0 + timedelta(microseconds=7), "ORDER#1/é")
    assert saga_queries.decode_cursor(cursor) == (T0 + timedelta(microseconds=7), "ORDER#1/é")
    assert "=" not in cursor
    for bad in ("nope", "", "e30", saga_queries.encode_cursor(T0, "x")[:-3]):
        with pytest.raises(saga_queries.BadCursor):
            saga_queries.decode_cursor(bad)


def test_like_wildcards_are_literal() -> None:
    assert saga_queries.like_escape(r"50%_off\now") == r"50\%\_off\\now"


def test_every_value_is_a_parameter() -> None:
    f = SagaFilter(
        status=["FAILED_CRITICAL"], error=["x' OR 1=1 --"], product="sku", q="%", createdFrom=T0, updatedTo=T0
    )
    where = saga_queries._where(f)
    assert "x' OR" not in where.sql() and "sku" not in where.sql()
    assert where.args == [["FAILED_CRITICAL"], ["x' OR 1=1 --"], [{"productId": "sku"}], r"\%", T0, T0]
    assert saga_queries._where(f, with_status=False).args[0] == ["x' OR 1=1 --"]
    assert saga_queries._where(SagaFilter()).sql() == "TRUE"


def row(i: int, event: str, state: str, command: str | None, lane: str = "main", **extra) -> dict:
    return {
        "id": i,
        "at": T0 + timedelta(seconds=i),
        "event": event,
        "state": state,
        "lane": lane,
        "attempt": extra.get("attempt"),
        "command_id": command,
        "error": extra.get("error"),
        "cause": None,
        "detail": extra.get("detail"),
    }


def test_steps_group_consecutive_attempts_per_lane() -> None:
    history = [
        row(1, "TaskScheduled", "Pay", "c1", attempt=1),
        row(2, "TaskTimedOut", "Pay", "c1", attempt=1, error="States.Timeout"),
        row(3, "TaskScheduled", "Pay", "c2", attempt=2),
        row(4, "CommandReissued", "Pay", "c3", detail={"expired": "c2"}),
        row(5, "TaskSucceeded", "Pay", "c3", attempt=2),
        row(6, "TaskScheduled", "Refund", "c4", lane="b0", attempt=1),
        row(7, "TaskScheduled", "Release", "c5", lane="b1", attempt=1),
        row(8, "TaskFailed", "Refund", "c4", lane="b0", attempt=1, error="RefundFailed"),
    ]
    steps = steps_of(history)
    assert [(s.step, s.lane, s.outcome, len(s.attempts)) for s in steps] == [
        ("Pay", "main", "succeeded", 2),
        ("Refund", "b0", "failed", 1),
        ("Release", "b1", "running", 1),
    ]
    first, second = steps[0].attempts
    assert first.outcome == "timed_out" and first.durationSeconds == 1.0 and first.error == "States.Timeout"
    assert second.commandId == "c2" and second.durationSeconds == 2.0, "the reissued command continues its run"
    assert steps[2].endedAt is None and steps[2].attempts[0].durationSeconds is None


def test_times_and_ages_for_orderctl_list() -> None:
    assert when("2026-12-06T10:00:00Z") == T0
    assert abs((datetime.now(UTC) - when("10m")) - timedelta(minutes=10)) < timedelta(seconds=5)
    for bad in ("2026-12-06T10:00:00", "yesterday", "10w"):
        with pytest.raises(argparse.ArgumentTypeError):
            when(bad)
    query = ListQuery(status=["RUNNING", "FAILED_CRITICAL"], q="ORDER#", updatedTo=T0, limit=5)
    assert query_params(query) == [
        ("status", "RUNNING"),
        ("status", "FAILED_CRITICAL"),
        ("q", "ORDER#"),
        ("updatedTo", "2026-12-06T10:00:00+00:00"),
        ("limit", "5"),
    ]


@pytest.mark.parametrize(
    ("status", "code", "named"),
    [
        (400, USAGE, "limit"),
        (401, USAGE, "ORDERFLOW_API_TOKEN"),
        (403, USAGE, "ORDERFLOW_API_TOKEN"),
        (404, FAILED, "limit"),
        (409, FAILED, "limit"),
        (503, UNREACHABLE, "the API"),
    ],
)
def test_problems_become_exit_codes(status: int, code: int, named: str) -> None:
    error = problem_error(status, {"title": "x", "status": status, "detail": "bad limit"}, "the API")
    assert error.exit_code == code and named in str(error)


def test_the_api_view_has_the_direct_views_shape() -> None:
    attempt = {
        "attempt": 1,
        "commandId": "c1",
        "outcome": "failed",
        "startedAt": "t1",
        "endedAt": "t2",
        "durationSeconds": 1.0,
        "error": "E",
        "cause": None,
        "reconcile": False,
    }
    saga = {
        "orderId": "o",
        "status": "FAILED_CRITICAL",
        "currentStep": "S",
        "version": 3,
        "workflow": {"name": "order", "version": "v"},
        "createdAt": "t0",
        "updatedAt": "t2",
        "amount": 1,
        "currency": "usd",
        "error": None,
        "notificationError": None,
        "compensation": None,
        "steps": [
            {
                "step": "S",
                "lane": "main",
                "outcome": "failed",
                "startedAt": "t1",
                "endedAt": "t2",
                "attempts": [attempt],
            }
        ],
        "history": [{"id": 1, "at": "t0", "event": "ExecutionStarted"}],
        "input": {},
        "redrive": {"redrivable": True, "reason": None},
    }
    view = as_view(saga)
    assert view["steps"] == [
        {
            "step": "S",
            "lane": "main",
            "attempt": 1,
            "startedAt": "t1",
            "endedAt": "t2",
            "outcome": "failed",
            "error": "E",
            "cause": None,
        }
    ]
    assert view["history"] == [{"at": "t0", "event": "ExecutionStarted"}] and "input" not in view
