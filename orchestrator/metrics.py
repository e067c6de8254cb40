"""Saga metrics, counted from the engine's decisions. Labels are the workflow's name (``order``, ``cancellation``),
steps, errors, statuses and outcomes only.

Steps are labelled by state name, so the two Parallel states' RefundPayment
branches share ``step="RefundPayment"``. The guide's five figures are ratios of
these counters; deploy/monitoring/orderflow-rules.yaml writes them in PromQL.
"""

from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from orchestrator.definition import FailState, SucceedState, TaskState, Workflow, all_states
from orchestrator.state import Decision, HistoryEntry, Lane, SagaState, TaskRun

#: The order workflow's name: the default label, so a caller that names no workflow counts an order saga.
ORDER = "order"
SAGAS_STARTED = Counter("orderflow_sagas_started_total", "Sagas started, by workflow.", ["workflow"])
SAGAS_FINISHED = Counter(
    "orderflow_sagas_finished_total", "Sagas finished, by workflow and terminal status.", ["workflow", "status"]
)
SAGAS_RETRIED = Counter(
    "orderflow_sagas_retried_total",
    "Sagas that needed at least one retry, counted once when they finish (a redriven saga again when it ends).",
    ["workflow"],
)
NOTIFICATION_ERRORS = Counter(
    "orderflow_saga_notification_errors_total",
    "Sagas that ended successfully (CONFIRMED, CANCELLED_BY_CUSTOMER) with $.notificationError: the outcome "
    "stands but the customer was not told.",
    ["workflow"],
)
STEP_ATTEMPTS = Counter("orderflow_step_attempts_total", "Task runs sent, retries included.", ["workflow", "step"])
STEP_RETRIES = Counter(
    "orderflow_step_retries_total", "Retries scheduled, by step and error.", ["workflow", "step", "error"]
)
STEP_TIMEOUTS = Counter("orderflow_step_timeouts_total", "Task runs that timed out.", ["workflow", "step"])
STEP_FAILURES = Counter(
    "orderflow_step_failures_total", "Task runs that failed, by step and error.", ["workflow", "step", "error"]
)
COMPENSATIONS = Counter(
    "orderflow_compensations_total",
    "Compensation tasks that ended, retries included in one count: outcome succeeded, or failed once no retry "
    "applies (or its Parallel timed out).",
    ["workflow", "step", "outcome"],
)
STEP_DURATION = Histogram(
    "orderflow_step_duration_seconds",
    "Time from a task run's command to its reply or its timeout.",
    ["workflow", "step"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
SAGA_DURATION = Histogram(
    "orderflow_saga_duration_seconds",
    "Time from the saga's start (OrderRequested, CancelOrder) to its terminal status.",
    ["workflow", "status"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
SAGAS_FAILED_CRITICAL = Gauge(
    "orderflow_sagas_failed_critical", "Sagas now in FAILED_CRITICAL, waiting for manual review or a redrive."
)
SAGAS_IN_FLIGHT = Gauge("orderflow_sagas_in_flight", "Sagas not yet in a terminal status.")
TIMER_FAILURES = Counter(
    "orderflow_timer_failures_total", "Timer firings that failed (the engine could not apply them); retried."
)
TIMERS_PARKED = Gauge(
    "orderflow_timers_parked",
    "Timers set aside after repeated failures: their sagas wait for an operator; the other timers fire on time.",
)
CLOCK_PAUSED_SECONDS = Counter(
    "orderflow_saga_clock_paused_seconds_total",
    "Seconds the saga clock stood still because the broker or the database was away (timers pushed back).",
)
SAGAS_STUCK = Gauge(
    "orderflow_sagas_stuck",
    "RUNNING sagas that have not moved for longer than their current step's timeout (or longest retry wait) plus "
    "STUCK_MARGIN_SECONDS, by workflow and step (orchestrator/stuck.py); every replica counts them all.",
    ["workflow", "step"],
)

SUCCEEDED, FAILED = "succeeded", "failed"
#: Each workflow's successful end, whose notification failure rate is the guide's fifth figure.
SUCCESSES = frozenset({"CONFIRMED", "CANCELLED_BY_CUSTOMER"})
_REPLY_EVENTS = {"TaskSucceeded", "TaskFailed", "TaskTimedOut"}


def prepare(workflow: Workflow, *, name: str = ORDER) -> None:
    """Export every label value the workflow names at zero.

    A series born at 1 has no earlier sample, so ``increase()`` misses its first
    count: without this the first FAILED_CRITICAL after a restart would raise no alert.
    """
    SAGAS_STARTED.labels(name)
    SAGAS_RETRIED.labels(name)
    NOTIFICATION_ERRORS.labels(name)
    for step, task in _tasks(workflow.States):
        STEP_ATTEMPTS.labels(name, step)
        STEP_TIMEOUTS.labels(name, step)
        STEP_DURATION.labels(name, step)
        if task.Compensation:
            COMPENSATIONS.labels(name, step, SUCCEEDED)
            COMPENSATIONS.labels(name, step, FAILED)
    for status in _statuses(workflow.States):
        SAGAS_FINISHED.labels(name, status)
        SAGA_DURATION.labels(name, status)


def compensation_steps(workflow: Workflow) -> frozenset[str]:
    """Names of the Task states marked ``Compensation``, branches included."""
    return frozenset(name for name, task in _tasks(workflow.States) if task.Compensation)


def observe(
    decision: Decision,
    *,
    workflow: Workflow,
    before: SagaState | None,
    duration_seconds: float | None,
    retried: bool = False,
    name: str = ORDER,
) -> None:
    """Count one decision.

    ``before`` is the saga the decision was taken on (None for a start): it holds
    the runs a reply or timeout ends, and the branches a Parallel timeout cut
    short. ``retried`` says whether the history of a saga this decision finished
    holds a retry; the runner reads it from saga_history, since the state keeps
    only the current runs. ``name`` is the workflow's, the ``workflow`` label.
    """
    if before is None:
        SAGAS_STARTED.labels(name).inc()
    compensations = compensation_steps(workflow)
    runs = {lane.run.commandId: lane.run for lane in before.lanes() if lane.run} if before else {}
    history = decision.history
    for i, entry in enumerate(history):
        step = entry.state or "unknown"
        if entry.event == "TaskScheduled":
            STEP_ATTEMPTS.labels(name, step).inc()
        elif entry.event == "RetryScheduled":
            STEP_RETRIES.labels(name, step, entry.error or "unknown").inc()
        elif entry.event == "TaskTimedOut":
            STEP_TIMEOUTS.labels(name, step).inc()
        elif entry.event == "TaskFailed":
            STEP_FAILURES.labels(name, step, entry.error or "unknown").inc()
        elif entry.event == "ParallelStateTimedOut" and before is not None:
            for branch in _cut_by_timeout(before, entry.lane):
                if branch.outcome is None and branch.current is not None and branch.current in compensations:
                    COMPENSATIONS.labels(name, branch.current, FAILED).inc()
        if entry.event in _REPLY_EVENTS:
            _observe_run_end(entry, runs.get(entry.commandId or ""), name)
            if step in compensations:
                if entry.event == "TaskSucceeded":
                    COMPENSATIONS.labels(name, step, SUCCEEDED).inc()
                elif not _retry_follows(history, i):
                    COMPENSATIONS.labels(name, step, FAILED).inc()
    if decision.state.finished and (before is None or not before.finished):
        status = decision.state.status
        SAGAS_FINISHED.labels(name, status).inc()
        if duration_seconds is not None:
            SAGA_DURATION.labels(name, status).observe(duration_seconds)
        if retried:
            SAGAS_RETRIED.labels(name).inc()
        if status in SUCCESSES and decision.state.main.data.get("notificationError") is not None:
            NOTIFICATION_ERRORS.labels(name).inc()


def _observe_run_end(entry: HistoryEntry, run: TaskRun | None, name: str) -> None:
    # A run that never sent its command (its Parameters did not resolve) has no duration.
    if run is not None:
        STEP_DURATION.labels(name, entry.state or "unknown").observe(
            max(0.0, (entry.at - run.startedAt).total_seconds())
        )


def _retry_follows(history: list[HistoryEntry], i: int) -> bool:
    """Whether the failure at ``history[i]`` is retried: the engine notes RetryScheduled next in that lane."""
    lane = history[i].lane
    following = next((e for e in history[i + 1 :] if e.lane == lane), None)
    return following is not None and following.event == "RetryScheduled"


def _cut_by_timeout(before: SagaState, owner_key: str) -> list[Lane]:
    """The lanes under the Parallel that timed out (its owner's group, at every depth below it)."""
    owners = [lane for lane in before.lanes() if lane.key == owner_key]
    found: list[Lane] = []
    pending = before.children(owners[0]) if owners else []
    while pending:
        lane = pending.pop(0)
        found.append(lane)
        pending.extend(before.children(lane))
    return found


def _tasks(states: dict[str, Any]) -> Iterator[tuple[str, TaskState]]:
    """Every Task at any depth (Parallel branches, Map processors)."""
    for name, state in all_states(states):
        if isinstance(state, TaskState):
            yield name, state


def _statuses(states: dict[str, Any]) -> set[str]:
    """Terminal statuses of the main flow; FAILED is also the engine's status when no catcher matches."""
    statuses = {"FAILED"}
    for state in states.values():
        if isinstance(state, SucceedState | FailState):
            statuses.add(state.Status or ("SUCCEEDED" if isinstance(state, SucceedState) else "FAILED"))
    return statuses
