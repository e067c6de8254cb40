"""Task states: send the command, and what its reply or silence does (retry, reconcile, reissue, catch).

Every command carries a deadline, its step's window. A service refuses a command
handled past it (``Command.Expired``); if the run still waits for that command
(the saga clock held its timer back through an outage the command sat out in a
queue), the same attempt is sent afresh, up to MAX_REISSUES times, then counts
as ``States.Timeout``. A Task with ``Reconcile`` that times out with no retry
left asks once more (same command, same keys) before its Catch: a success then
proceeds, anything else is caught as the original ``States.Timeout``.
"""

from datetime import timedelta
from typing import Any

from orchestrator import retry
from orchestrator.asl import io
from orchestrator.definition import COMMAND_EXPIRED, TIMEOUT, TaskState
from orchestrator.engine_base import RunBase
from orchestrator.state import CommandOut, ErrorOut, Lane, ReplyReceived, TaskRun, TimerFired, TimerSpec

#: Fresh sends of one run's command after Command.Expired replies; one more expiry counts as States.Timeout.
#: An outage the saga clock sat out costs one; more means the service cannot start it in its window.
MAX_REISSUES = 3


class TaskSteps(RunBase):
    """The Task state's part of a run."""

    def on_reply(self, event: ReplyReceived) -> None:
        lane = next(
            (
                lane
                for lane in self.saga.lanes()
                if lane.run and lane.run.commandId == event.commandId and lane.run.phase == "waiting_reply"
            ),
            None,
        )
        if lane is None:
            # A reply to a superseded attempt (it timed out, or was retried): recorded, not applied.
            self.note(
                "LateReplyIgnored",
                commandId=event.commandId,
                state=None,
                error=event.error.Error if event.error else None,
                detail={"ok": event.ok},
            )
            return
        run = lane.run
        assert run is not None
        if not event.ok and event.error is not None and event.error.Error == COMMAND_EXPIRED:
            self.command_expired(lane, event.error)
            return
        self.timers[lane.key] = None
        if event.ok:
            task = self.task(lane)
            detail = {"reconciled": True} if run.reconcileOf else None
            self.note("TaskSucceeded", lane, attempt=run.attempt, commandId=event.commandId, detail=detail)
            lane.lastAttempt = run.attempt
            lane.run = None
            self.finish_state(lane, task, _result(task, event.result or {}), task.Catch)
            return
        error = event.error or ErrorOut(Error="States.TaskFailed")
        event_name = "ReconcileFailed" if run.reconcileOf else "TaskFailed"
        self.note(
            event_name, lane, attempt=run.attempt, commandId=event.commandId, error=error.Error, cause=error.Cause
        )
        if run.reconcileOf:
            self.reconcile_failed(lane)
        else:
            self.task_failed(lane, error)

    def command_expired(self, lane: Lane, error: ErrorOut) -> None:
        """The service refused the command the run waits for as past its deadline: send it afresh, or give up."""
        run = lane.run
        assert run is not None
        if run.reissues >= MAX_REISSUES:
            self.timers[lane.key] = None
            cause = f"the command expired before it was handled, {run.reissues + 1} times: {error.Cause}"
            self.note(
                "ReconcileTimedOut" if run.reconcileOf else "TaskTimedOut",
                lane,
                attempt=run.attempt,
                commandId=run.commandId,
                error=TIMEOUT,
                cause=cause,
            )
            self.timed_out(lane, ErrorOut(Error=TIMEOUT, Cause=cause))
            return
        task = self.task(lane)
        timeout = task.Reconcile.TimeoutSeconds if run.reconcileOf and task.Reconcile else task.TimeoutSeconds
        self.send(
            lane,
            run.model_copy(update={"commandId": self.ctx.new_id(), "reissues": run.reissues + 1}),
            timeout_seconds=timeout,
            event="CommandReissued",
            detail={"expired": run.commandId, "reissues": run.reissues + 1, "cause": error.Cause},
        )

    def on_task_timer(self, lane: Lane, event: TimerFired) -> None:
        """The lane's timeout or retry timer fired (a token of a superseded run does nothing)."""
        run = lane.run
        if run is None:
            return
        if run.phase == "waiting_reply" and event.token == f"timeout:{run.commandId}":
            self.timers[lane.key] = None
            timed_out = "ReconcileTimedOut" if run.reconcileOf else "TaskTimedOut"
            self.note(timed_out, lane, attempt=run.attempt, commandId=run.commandId, error=TIMEOUT)
            self.timed_out(lane, ErrorOut(Error=TIMEOUT, Cause="no reply within TimeoutSeconds"))
        elif run.phase == "waiting_retry" and event.token == f"retry:{run.commandId}":
            self.schedule(lane, attempt=run.attempt + 1, counts=run.retryCounts)

    def timed_out(self, lane: Lane, error: ErrorOut) -> None:
        assert lane.run is not None
        if lane.run.reconcileOf:
            self.reconcile_failed(lane)
        else:
            self.task_failed(lane, error)

    def task_failed(self, lane: Lane, error: ErrorOut) -> None:
        task = self.task(lane)
        assert lane.run is not None
        retried = retry.next_retry(task.Retry, lane.run.retryCounts, error.Error, self.ctx.rng)
        if retried is not None:
            delay, counts = retried
            lane.run = lane.run.model_copy(update={"phase": "waiting_retry", "retryCounts": counts})
            self.timers[lane.key] = TimerSpec(
                token=f"retry:{lane.run.commandId}",
                dueAt=self.ctx.now + timedelta(seconds=delay),
                kind="retry",
            )
            self.note(
                "RetryScheduled",
                lane,
                attempt=lane.run.attempt,
                error=error.Error,
                detail={"delaySeconds": round(delay, 3), "retryCounts": counts},
            )
            return
        if error.Error == TIMEOUT and task.Reconcile is not None:
            self.reconcile(lane, error, task.Reconcile.TimeoutSeconds)
            return
        lane.lastAttempt = lane.run.attempt
        lane.run = None
        self.catch(lane, task.Catch, error)

    def reconcile(self, lane: Lane, error: ErrorOut, timeout_seconds: float) -> None:
        """Ask again, same command and keys: a step that took effect while its answer was lost answers now."""
        run = lane.run
        assert run is not None
        reconcile = TaskRun(
            commandId=self.ctx.new_id(),
            attempt=run.attempt,
            retryCounts=run.retryCounts,
            startedAt=self.ctx.now,
            reconcileOf=error,
        )
        detail = {"timeoutSeconds": timeout_seconds, "timedOut": run.commandId}
        self.send(lane, reconcile, timeout_seconds=timeout_seconds, event="ReconcileScheduled", detail=detail)

    def reconcile_failed(self, lane: Lane) -> None:
        """The reconcile did not answer success: the Catch applies with the error that started it."""
        run = lane.run
        assert run is not None and run.reconcileOf is not None
        lane.lastAttempt = run.attempt
        lane.run = None
        self.catch(lane, self.task(lane).Catch, run.reconcileOf)

    def schedule(self, lane: Lane, *, attempt: int, counts: list[int]) -> None:
        task = self.task(lane)
        command_id = self.ctx.new_id()
        try:
            payload = self.payload(lane, task, attempt)
        except io.DataError as exc:
            lane.run = None
            self.note("TaskFailed", lane, attempt=attempt, error=exc.error, cause=exc.cause)
            self.catch(lane, task.Catch, ErrorOut(Error=exc.error, Cause=exc.cause))
            return
        lane.lastAttempt = attempt
        run = TaskRun(commandId=command_id, attempt=attempt, retryCounts=counts, startedAt=self.ctx.now)
        self.send(
            lane,
            run,
            timeout_seconds=task.TimeoutSeconds,
            event="TaskScheduled",
            detail={"resource": task.Resource},
            payload=payload,
        )

    def send(
        self,
        lane: Lane,
        run: TaskRun,
        *,
        timeout_seconds: float,
        event: str,
        detail: dict[str, Any],
        payload: dict[str, Any] | None = None,
    ) -> None:
        """Send the lane's command as ``run`` (its id is new), with a deadline and a timeout timer that match.
        Without ``payload`` the Parameters are resolved again: they resolved for this state's data before."""
        task = self.task(lane)
        command_id = run.commandId
        deadline = self.ctx.now + timedelta(seconds=timeout_seconds)
        lane.run = run
        self.commands.append(
            CommandOut(
                resource=task.Resource,
                messageId=command_id,
                attempt=run.attempt,
                payload=payload if payload is not None else self.payload(lane, task, run.attempt),
                state=lane.current or "",
                deadline=deadline,
            )
        )
        self.timers[lane.key] = TimerSpec(token=f"timeout:{command_id}", dueAt=deadline, kind="timeout")
        self.note(event, lane, attempt=run.attempt, commandId=command_id, detail=detail)

    def payload(self, lane: Lane, task: TaskState, attempt: int) -> dict[str, Any]:
        """The command's payload: InputPath, then Parameters (for lambda:invoke, their Payload). A command takes
        a JSON object."""
        payload = io.effective_input(task, lane.data, self.scope(lane, retry_count=attempt - 1))
        if task.Integration is not None:
            payload = payload.get("Payload", {}) if isinstance(payload, dict) else payload
        if not isinstance(payload, dict):
            raise io.DataError(io.RUNTIME, f"the input of {task.Resource} must be a JSON object, not {payload!r}")
        return payload


def _result(task: TaskState, reply: dict[str, Any]) -> Any:
    """The task's result as Step Functions would hand it on: lambda:invoke wraps the function's return value."""
    if task.Integration is None:
        return reply
    return {"Payload": reply, "StatusCode": 200}
