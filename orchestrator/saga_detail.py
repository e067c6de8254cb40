"""One saga for the console (GET /api/v1/sagas/{orderId}): its state, input, steps with their attempts, history.

Steps and attempts are derived from the history rows, which the engine writes for every transition: a task's
run begins with TaskScheduled (or ReconcileScheduled) and ends with TaskSucceeded, TaskFailed or TaskTimedOut
(Reconcile*), or TaskCancelled when an operator stopped the saga while it waited, matched by command id; a
command sent afresh after Command.Expired (CommandReissued) continues its run. Consecutive runs of one state in
one lane are one step with several attempts.
"""

from datetime import datetime
from typing import Any

import asyncpg

from orchestrator.api_models import REDRIVABLE, Attempt, HistoryEvent, SagaDetail, Step

RUN_ENDS = {
    "TaskSucceeded": "succeeded",
    "TaskFailed": "failed",
    "TaskTimedOut": "timed_out",
    "ReconcileSucceeded": "succeeded",
    "ReconcileFailed": "failed",
    "ReconcileTimedOut": "timed_out",
    "TaskCancelled": "cancelled",
}
RUN_STARTS = ("TaskScheduled", "ReconcileScheduled")


def _seconds(start: datetime, end: datetime | None) -> float | None:
    return None if end is None else round((end - start).total_seconds(), 6)


def attempts_of(history: list[asyncpg.Record]) -> list[tuple[str, str, Attempt]]:
    """(step, lane, attempt) for every task run and reconcile, in the order they began."""
    runs: dict[str, dict[str, Any]] = {}
    order: list[tuple[str, str, str]] = []
    for h in history:
        command_id, event = h["command_id"], h["event"]
        if event in RUN_STARTS and command_id:
            runs[command_id] = {
                "attempt": h["attempt"],
                "commandId": command_id,
                "outcome": "running",
                "startedAt": h["at"],
                "endedAt": None,
                "error": None,
                "cause": None,
                "reconcile": event == "ReconcileScheduled",
            }
            order.append((h["state"], h["lane"], command_id))
        elif event == "CommandReissued" and command_id and (h["detail"] or {}).get("expired") in runs:
            runs[command_id] = runs[h["detail"]["expired"]]
        elif command_id in runs and event in RUN_ENDS:
            run = runs[command_id]
            run.update(endedAt=h["at"], outcome=RUN_ENDS[event], error=h["error"], cause=h["cause"])
    found = []
    for state, lane, command_id in order:
        run = runs[command_id]
        found.append((state, lane, Attempt(durationSeconds=_seconds(run["startedAt"], run["endedAt"]), **run)))
    return found


def steps_of(history: list[asyncpg.Record]) -> list[Step]:
    steps: list[Step] = []
    open_steps: dict[str, Step] = {}  # per lane, the step its last run belongs to
    for state, lane, attempt in attempts_of(history):
        step = open_steps.get(lane)
        if step is None or step.step != state:
            step = Step(
                step=state, lane=lane, outcome="running", startedAt=attempt.startedAt, endedAt=None, attempts=[]
            )
            steps.append(step)
            open_steps[lane] = step
        step.attempts.append(attempt)
        step.outcome, step.endedAt = attempt.outcome, attempt.endedAt
    return steps


def redrivability(status: str) -> dict[str, Any]:
    if status in REDRIVABLE:
        return {"redrivable": True, "reason": None}
    return {
        "redrivable": False,
        "reason": f"the saga is {status}; only {', '.join(sorted(REDRIVABLE))} sagas are redriven",
    }


def detail(row: asyncpg.Record, history: list[asyncpg.Record]) -> SagaDetail:
    state = row["state"]
    data = state["main"].get("data") if isinstance(state["main"].get("data"), dict) else {}
    inventory = data.get("inventory") if isinstance(data.get("inventory"), dict) else {}
    ended = next((h["at"] for h in reversed(history) if h["event"] in ("ExecutionSucceeded", "ExecutionFailed")), None)
    return SagaDetail(
        orderId=row["order_id"],
        status=row["status"],
        currentStep=row["current_state"],
        error=state.get("error"),
        notificationError=data.get("notificationError"),
        redriveCount=state.get("redriveCount", 0),
        redrive=redrivability(row["status"]),
        workflow={"name": row["workflow_name"], "version": row["workflow_version"]},
        version=row["version"],
        createdAt=row["created_at"],
        updatedAt=row["updated_at"],
        durationSeconds=_seconds(row["created_at"], ended) if row["status"] != "RUNNING" else None,
        amount=inventory.get("amount"),
        currency=inventory.get("currency"),
        compensation=data.get("compensation"),
        input=row["input"],
        steps=steps_of(history),
        history=[
            HistoryEvent(
                id=h["id"],
                at=h["at"],
                event=h["event"],
                state=h["state"],
                lane=h["lane"],
                attempt=h["attempt"],
                commandId=h["command_id"],
                error=h["error"],
                cause=h["cause"],
                detail=h["detail"],
            )
            for h in history
        ],
    )
