"""Stuck sagas' quiet limits (orchestrator/stuck.py) and the finished sagas' retention settings
(orchestrator/saga_retention.py), without a database."""

import pytest
from pydantic import ValidationError

from orchestrator import definition, stuck
from orchestrator.main import OrchestratorSettings, build
from orchestrator.saga_retention import KEPT_STATUSES

pytestmark = pytest.mark.unit


def state(document: dict) -> object:
    workflow = definition.parse({"StartAt": "S", "States": {"S": {**document, "End": True}}})
    return workflow.States["S"]


def task(**fields: object) -> dict:
    return {"Type": "Task", "Resource": "inventory.CheckInventory", **fields}


def test_a_task_rests_at_most_its_timeout_or_its_longest_retry_wait() -> None:
    assert stuck.quiet_limit(state(task())) == 60  # the default TimeoutSeconds
    assert stuck.quiet_limit(state(task(TimeoutSeconds=30))) == 30
    # The third retry waits 10 * 3^2 = 90 s: a saga waiting it out has not moved, and is not stuck.
    slow_retry = {"ErrorEquals": ["States.ALL"], "IntervalSeconds": 10, "MaxAttempts": 3, "BackoffRate": 3}
    assert stuck.quiet_limit(state(task(TimeoutSeconds=30, Retry=[slow_retry]))) == 90
    capped = {**slow_retry, "MaxDelaySeconds": 40}
    assert stuck.quiet_limit(state(task(TimeoutSeconds=30, Retry=[capped]))) == 40
    reconcile = {"TimeoutSeconds": 120}
    assert stuck.quiet_limit(state(task(TimeoutSeconds=30, Reconcile=reconcile))) == 120


def test_a_wait_on_a_time_from_the_input_has_no_limit() -> None:
    assert stuck.quiet_limit(state({"Type": "Wait", "Seconds": 300})) == 300
    assert stuck.quiet_limit(state({"Type": "Wait", "SecondsPath": "$.delay"})) is None
    assert stuck.quiet_limit(state({"Type": "Pass"})) == 0


def test_a_parallel_rests_as_long_as_its_slowest_branch_state_or_its_own_timeout() -> None:
    branches = [
        {"StartAt": "A", "States": {"A": task(TimeoutSeconds=30, End=True)}},
        {"StartAt": "B", "States": {"B": task(TimeoutSeconds=90, End=True)}},
    ]
    assert stuck.quiet_limit(state({"Type": "Parallel", "Branches": branches})) == 90
    assert stuck.quiet_limit(state({"Type": "Parallel", "Branches": branches, "TimeoutSeconds": 45})) == 45
    waiting = [*branches, {"StartAt": "W", "States": {"W": {"Type": "Wait", "SecondsPath": "$.d", "End": True}}}]
    assert stuck.quiet_limit(state({"Type": "Parallel", "Branches": waiting})) is None
    assert stuck.quiet_limit(state({"Type": "Parallel", "Branches": waiting, "TimeoutSeconds": 45})) == 45


def test_the_order_workflow_has_a_limit_for_every_step() -> None:
    limits = stuck.quiet_limits(definition.load())
    assert limits["ProcessPayment"] == 60 and limits["CheckInventory"] == 30
    assert limits["OrderSuccess"] == 0
    assert all(limit is not None for limit in limits.values())


def test_retention_defaults_to_ninety_days_and_refuses_less_than_a_week(monkeypatch) -> None:
    assert OrchestratorSettings().saga_retention_days == 90
    monkeypatch.setenv("SAGA_RETENTION_DAYS", "3")
    with pytest.raises(ValidationError, match="SAGA_RETENTION_DAYS=3 is shorter than 7 days"):
        OrchestratorSettings()
    monkeypatch.setenv("SAGA_RETENTION_DAYS", "7")
    assert OrchestratorSettings().saga_retention_days == 7


def test_sagas_an_operator_may_still_act_on_are_kept() -> None:
    assert set(KEPT_STATUSES) == {"RUNNING", "FAILED_CRITICAL", "CANCELLATION_FAILED"}


def test_the_orchestrator_runs_both_upkeep_loops_beside_its_timers() -> None:
    process = build(OrchestratorSettings())
    assert {job.__name__ for job in process.background} == {"timer_loop", "count_stuck", "purge_finished"}
