"""Saga metrics, counted from the engine's history entries. Labels are steps, errors and statuses only."""

from prometheus_client import Counter, Gauge, Histogram

from orchestrator.state import Decision

SAGAS_STARTED = Counter("orderflow_sagas_started_total", "Sagas started.")
SAGAS_FINISHED = Counter("orderflow_sagas_finished_total", "Sagas finished, by terminal status.", ["status"])
STEP_ATTEMPTS = Counter("orderflow_step_attempts_total", "Task runs sent, retries included.", ["step"])
STEP_RETRIES = Counter("orderflow_step_retries_total", "Retries scheduled, by step and error.", ["step", "error"])
STEP_TIMEOUTS = Counter("orderflow_step_timeouts_total", "Task runs that timed out.", ["step"])
STEP_FAILURES = Counter("orderflow_step_failures_total", "Task runs that failed, by step and error.", ["step", "error"])
SAGA_DURATION = Histogram(
    "orderflow_saga_duration_seconds",
    "Time from OrderRequested to the terminal status.",
    ["status"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
SAGAS_IN_FLIGHT = Gauge("orderflow_sagas_in_flight", "Sagas not yet in a terminal status.")


def observe(decision: Decision, *, started: bool, duration_seconds: float | None) -> None:
    if started:
        SAGAS_STARTED.inc()
    for entry in decision.history:
        step = entry.state or "unknown"
        if entry.event == "TaskScheduled":
            STEP_ATTEMPTS.labels(step).inc()
        elif entry.event == "RetryScheduled":
            STEP_RETRIES.labels(step, entry.error or "unknown").inc()
        elif entry.event == "TaskTimedOut":
            STEP_TIMEOUTS.labels(step).inc()
        elif entry.event == "TaskFailed":
            STEP_FAILURES.labels(step, entry.error or "unknown").inc()
    if decision.state.finished and duration_seconds is not None:
        SAGAS_FINISHED.labels(decision.state.status).inc()
        SAGA_DURATION.labels(decision.state.status).observe(duration_seconds)
