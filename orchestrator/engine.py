"""The pure saga engine: state + event + now -> new state, commands, timers and history.

No I/O happens here. Time, ids and jitter come in through ``Context`` so tests
drive the engine step by step and advance time instead of sleeping.

Every command carries a deadline, its step's window. A service refuses a command
handled past it (``Command.Expired``); if the run still waits for that command
(the saga clock held its timer back through an outage the command sat out in a
queue), the same attempt is sent afresh, up to MAX_REISSUES times, then counts
as ``States.Timeout``. A Task with ``Reconcile`` that times out with no retry
left asks once more (same command, same keys) before its Catch: a success then
proceeds, anything else is caught as the original ``States.Timeout``.
"""

import copy
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from orchestrator import paths, retry
from orchestrator.asl import choice, io
from orchestrator.asl.choice import parse_timestamp
from orchestrator.asl.intrinsics import Scope
from orchestrator.definition import (
    BRANCH_FAILED,
    COMMAND_EXPIRED,
    NO_CHOICE_MATCHED,
    TIMEOUT,
    ChoiceState,
    FailState,
    MapState,
    ParallelState,
    PassState,
    SucceedState,
    TaskState,
    WaitState,
    Workflow,
)
from orchestrator.state import (
    RUNNING,
    CommandOut,
    Decision,
    ErrorOut,
    Event,
    HistoryEntry,
    Lane,
    Redriven,
    RedrivePoint,
    ReplyReceived,
    SagaState,
    Started,
    TaskRun,
    TimerFired,
    TimerSpec,
)

PARALLEL_LANE = "parallel"
#: Fresh sends of one run's command after Command.Expired replies; one more expiry counts as States.Timeout.
#: An outage the saga clock sat out costs one; more means the service cannot start it in its window.
MAX_REISSUES = 3


@dataclass
class Context:
    now: datetime
    new_id: Callable[[], str] = field(default=lambda: str(uuid.uuid4()))
    rng: random.Random = field(default_factory=random.Random)


def decide(workflow: Workflow, state: SagaState | None, event: Event, ctx: Context) -> Decision:
    """Apply one event to a saga. ``state`` is None only for the Started event."""
    run = _Run(workflow, ctx)
    if isinstance(event, Started):
        assert state is None, "a saga starts once"
        saga = SagaState(
            orderId=str(event.input.get("orderId", "")),
            main=Lane(key="main", current=workflow.StartAt, data=copy.deepcopy(event.input)),
        )
        run.saga = saga
        run.note("ExecutionStarted")
        run.enter(saga.main)
    else:
        assert state is not None
        run.saga = state.model_copy(deep=True)
        if isinstance(event, Redriven):
            run.redrive()
        elif run.saga.finished:
            run.note("EventAfterEnd", detail={"kind": event.kind})
        elif isinstance(event, ReplyReceived):
            run.on_reply(event)
        elif isinstance(event, TimerFired):
            run.on_timer(event)
    return Decision(state=run.saga, commands=run.commands, timers=run.timers, history=run.history)


class _Run:
    """The working set of one decision."""

    def __init__(self, workflow: Workflow, ctx: Context) -> None:
        self.wf = workflow
        self.ctx = ctx
        self.saga: SagaState
        self.commands: list[CommandOut] = []
        self.timers: dict[str, TimerSpec | None] = {}
        self.history: list[HistoryEntry] = []

    # -- bookkeeping -------------------------------------------------------------------------
    def note(self, event: str, lane: Lane | None = None, **fields: Any) -> None:
        self.history.append(
            HistoryEntry(
                at=self.ctx.now,
                event=event,
                lane=lane.key if lane else "main",
                state=fields.pop("state", lane.current if lane else None),
                **fields,
            )
        )

    def task(self, lane: Lane) -> TaskState:
        state = self.wf.state(lane.prefix + (lane.current or ""))
        assert isinstance(state, TaskState)
        return state

    # -- events ------------------------------------------------------------------------------
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

    def on_timer(self, event: TimerFired) -> None:
        if event.lane == PARALLEL_LANE:
            if self.saga.branches and event.token == self._parallel_token():
                self.parallel_timed_out()
            return
        lane = next((lane for lane in self.saga.lanes() if lane.key == event.lane), None)
        if lane is not None and lane.waitToken is not None and event.token == lane.waitToken:
            self.timers[lane.key] = None
            self.note("WaitStateExited", lane)
            state = self.wf.state(lane.prefix + (lane.current or ""))
            assert isinstance(state, WaitState)
            self.wait_over(lane, state)
            return
        if lane is None or lane.run is None:
            return
        run = lane.run
        if run.phase == "waiting_reply" and event.token == f"timeout:{run.commandId}":
            self.timers[lane.key] = None
            timed_out = "ReconcileTimedOut" if run.reconcileOf else "TaskTimedOut"
            self.note(timed_out, lane, attempt=run.attempt, commandId=run.commandId, error=TIMEOUT)
            self.timed_out(lane, ErrorOut(Error=TIMEOUT, Cause="no reply within TimeoutSeconds"))
        elif run.phase == "waiting_retry" and event.token == f"retry:{run.commandId}":
            self.schedule(lane, attempt=run.attempt + 1, counts=run.retryCounts)

    # -- transitions -------------------------------------------------------------------------
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

    def catch(self, lane: Lane, catchers: list[Any], error: ErrorOut, branches: list[Lane] | None = None) -> None:
        if lane.key == "main" and lane.current:
            self.saga.redrive = RedrivePoint(state=lane.current, lastAttempt=lane.lastAttempt, branches=branches or [])
        catcher = retry.find_catcher(catchers, error.Error)
        if catcher is None:
            self.note("NoCatcherMatched", lane, error=error.Error, cause=error.Cause)
            self.lane_failed(lane, error)
            return
        lane.data = paths.put(lane.data, catcher.ResultPath, error.model_dump())
        self.note("Caught", lane, error=error.Error, detail={"next": catcher.Next})
        lane.current = catcher.Next
        self.enter(lane)

    def advance(self, lane: Lane, next_state: str | None, end: bool | None) -> None:
        if end or next_state is None:
            self.lane_succeeded(lane, status=None)
            return
        lane.current = next_state
        self.enter(lane)

    def enter(self, lane: Lane) -> None:
        """Run the lane's current state: schedule a task, or pass through non-task states."""
        state = self.wf.state(lane.prefix + (lane.current or ""))
        if isinstance(state, TaskState):
            lane.lastAttempt = 0
            self.schedule(lane, attempt=1, counts=[0] * len(state.Retry))
        elif isinstance(state, PassState):
            self.note("PassStateEntered", lane)
            try:
                # A Pass's Result, when it has one, is its result; otherwise its effective input is.
                result = state.Result
                if result is None:
                    result = io.effective_input(state, lane.data, self.scope(lane))
            except io.DataError as exc:
                self.data_failed(lane, exc, [])
                return
            self.finish_state(lane, state, result, [])
        elif isinstance(state, SucceedState):
            try:
                lane.data = io.path_of(io.path_of(lane.data, state.InputPath), state.OutputPath)
            except io.DataError as exc:
                self.data_failed(lane, exc, [])
                return
            self.lane_succeeded(lane, status=state.Status)
        elif isinstance(state, FailState):
            error = ErrorOut(
                Error=_text(lane.data, state.ErrorPath) or state.Error or "States.Failed",
                Cause=_text(lane.data, state.CausePath) or state.Cause or "",
            )
            self.lane_failed(lane, error, status=state.Status)
        elif isinstance(state, ParallelState):
            self.start_parallel(lane, state)
        elif isinstance(state, ChoiceState):
            self.choose(lane, state)
        elif isinstance(state, WaitState):
            self.wait(lane, state)
        elif isinstance(state, MapState):
            self.start_map(lane, state)

    def wait(self, lane: Lane, state: WaitState) -> None:
        """Set the lane's durable timer for the Wait's time; a time already past goes on at once."""
        scope = self.scope(lane)
        try:
            data = io.path_of(lane.data, state.InputPath, scope.context)
            due = self._due(state, data, scope.context)
        except io.DataError as exc:
            self.data_failed(lane, exc, [])
            return
        if due <= self.ctx.now:
            self.note("WaitStateEntered", lane, detail={"until": due.isoformat(), "waited": False})
            self.wait_over(lane, state)
            return
        lane.waitToken = f"wait:{lane.current}:{self.ctx.new_id()}"
        self.timers[lane.key] = TimerSpec(token=lane.waitToken, dueAt=due, kind="wait")
        self.note("WaitStateEntered", lane, detail={"until": due.isoformat()})

    def _due(self, state: WaitState, data: Any, context: Any) -> datetime:
        if state.Seconds is not None:
            return self.ctx.now + timedelta(seconds=state.Seconds)
        if state.Timestamp is not None:
            stamp = parse_timestamp(state.Timestamp)
            assert stamp is not None, "checked when the definition loaded"
            return stamp
        if state.SecondsPath is not None:
            seconds = io.path_of(data, state.SecondsPath, context)
            whole = isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds == int(seconds)
            if not whole or seconds < 0:
                cause = f"SecondsPath {state.SecondsPath!r} gave {seconds!r}, not a whole number >= 0"
                raise io.DataError(io.RUNTIME, cause)
            return self.ctx.now + timedelta(seconds=int(seconds))
        text = io.path_of(data, state.TimestampPath, context)
        stamp = parse_timestamp(text) if isinstance(text, str) else None
        if stamp is None:
            cause = f"TimestampPath {state.TimestampPath!r} gave {text!r}, not an RFC 3339 timestamp"
            raise io.DataError(io.RUNTIME, cause)
        return stamp

    def wait_over(self, lane: Lane, state: WaitState) -> None:
        lane.waitToken = None
        try:
            lane.data = io.path_of(io.path_of(lane.data, state.InputPath), state.OutputPath)
        except io.DataError as exc:
            self.data_failed(lane, exc, [])
            return
        self.advance(lane, state.Next, state.End)

    def choose(self, lane: Lane, state: ChoiceState) -> None:
        """The first rule that holds picks the Next; the output is the input through InputPath and OutputPath."""
        scope = self.scope(lane)
        try:
            data = io.path_of(lane.data, state.InputPath, scope.context)
            chosen = next((r["Next"] for r in state.Choices if choice.matches(r, data, scope.context)), state.Default)
            output = io.path_of(data, state.OutputPath, scope.context)
        except choice.ChoiceError as exc:
            self.data_failed(lane, io.DataError(io.RUNTIME, str(exc)), [])
            return
        except io.DataError as exc:
            self.data_failed(lane, exc, [])
            return
        if chosen is None:
            self.note("ChoiceStateFailed", lane, error=NO_CHOICE_MATCHED)
            self.lane_failed(lane, ErrorOut(Error=NO_CHOICE_MATCHED, Cause=f"no rule of {lane.current} matched"))
            return
        self.note("ChoiceStateEntered", lane, detail={"next": chosen})
        lane.data = output
        lane.current = chosen
        self.enter(lane)

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

    # -- input and output --------------------------------------------------------------------
    def scope(self, lane: Lane, *, retry_count: int = 0) -> Scope:
        """The context object ($$) of the lane's current state, with the engine's ids and randomness."""
        context = {
            "Execution": {"Id": self.saga.orderId, "Name": self.saga.orderId},
            "State": {"Name": lane.current, "EnteredTime": self.ctx.now.isoformat(), "RetryCount": retry_count},
        }
        if lane.item is not None:
            context["Map"] = {"Item": lane.item}
        return Scope(lane.data, context, self.ctx.new_id, self.ctx.rng)

    def payload(self, lane: Lane, task: TaskState, attempt: int) -> dict[str, Any]:
        """The command's payload: InputPath, then Parameters (for lambda:invoke, their Payload). A command takes
        a JSON object."""
        payload = io.effective_input(task, lane.data, self.scope(lane, retry_count=attempt - 1))
        if task.Integration is not None:
            payload = payload.get("Payload", {}) if isinstance(payload, dict) else payload
        if not isinstance(payload, dict):
            raise io.DataError(io.RUNTIME, f"the input of {task.Resource} must be a JSON object, not {payload!r}")
        return payload

    def finish_state(self, lane: Lane, state: Any, result: Any, catchers: list[Any]) -> None:
        """The state's result through ResultSelector, ResultPath and OutputPath, then on to its Next."""
        try:
            lane.data = io.output(state, lane.data, result, self.scope(lane))
        except io.DataError as exc:
            self.data_failed(lane, exc, catchers)
            return
        self.advance(lane, state.Next, state.End)

    def data_failed(self, lane: Lane, exc: io.DataError, catchers: list[Any]) -> None:
        """Input or output processing failed: no retry; the state's Catch (if any) decides."""
        self.note("StateDataFailed", lane, error=exc.error, cause=exc.cause)
        self.catch(lane, catchers, ErrorOut(Error=exc.error, Cause=exc.cause))

    # -- lane ends ---------------------------------------------------------------------------
    def lane_succeeded(self, lane: Lane, status: str | None) -> None:
        lane.outcome = "succeeded"
        if lane.key == "main":
            self.finish(status or "SUCCEEDED", None)
        else:
            self.note("BranchSucceeded", lane)
            self.branch_done()

    def lane_failed(self, lane: Lane, error: ErrorOut, status: str | None = None) -> None:
        lane.outcome = "failed"
        lane.error = error
        if lane.key == "main":
            self.finish(status or "FAILED", error)
        else:
            self.note("BranchFailed", lane, error=error.Error, cause=error.Cause)
            self.branch_done()

    def finish(self, status: str, error: ErrorOut | None) -> None:
        self.saga.status = status
        self.saga.error = error
        for lane in self.saga.lanes():
            self.timers.setdefault(lane.key, None)
        self.note(
            "ExecutionSucceeded" if error is None else "ExecutionFailed",
            detail={"status": status},
            error=error.Error if error else None,
            cause=error.Cause if error else None,
        )

    # -- parallel ----------------------------------------------------------------------------
    def _parallel_token(self) -> str:
        return f"parallel:{self.saga.main.current}:{self.saga.branches[0].prefix}"

    def start_parallel(self, lane: Lane, state: ParallelState) -> None:
        assert lane.key == "main", "Parallel states are supported in the main flow only"
        self.note("ParallelStateEntered", lane, detail={"branches": len(state.Branches)})
        try:
            branch_input = io.effective_input(state, lane.data, self.scope(lane))
        except io.DataError as exc:
            self.data_failed(lane, exc, state.Catch)
            return
        self.saga.branches = [
            Lane(
                key=f"branch:{i}",
                prefix=f"{lane.current}/{i}/",
                current=branch.StartAt,
                data=copy.deepcopy(branch_input),
            )
            for i, branch in enumerate(state.Branches)
        ]
        if state.TimeoutSeconds:
            self.timers[PARALLEL_LANE] = TimerSpec(
                token=self._parallel_token(),
                dueAt=self.ctx.now + timedelta(seconds=state.TimeoutSeconds),
                kind="timeout",
            )
        for branch in self.saga.branches:
            self.enter(branch)

    # -- map ---------------------------------------------------------------------------------
    def start_map(self, lane: Lane, state: MapState) -> None:
        """One lane per item (its input: the ItemSelector, or the item), started up to MaxConcurrency at a time."""
        scope = self.scope(lane)
        try:
            data = io.path_of(lane.data, state.InputPath, scope.context)
            items = io.path_of(data, state.ItemsPath, scope.context)
            if not isinstance(items, list):
                cause = f"ItemsPath {state.ItemsPath!r} gave {type(items).__name__}, not an array"
                raise io.DataError(io.RUNTIME, cause)
            inputs = []
            for i, item in enumerate(items):
                entry = {"Index": i, "Value": item}
                if state.selector is None:
                    inputs.append(item)
                else:
                    context = {**scope.context, "Map": {"Item": entry}}
                    inputs.append(io.template(state.selector, Scope(data, context, scope.new_uuid, scope.rng)))
        except io.DataError as exc:
            self.data_failed(lane, exc, state.Catch)
            return
        self.note("MapStateEntered", lane, detail={"items": len(items), "maxConcurrency": state.MaxConcurrency})
        if not items:
            self.note("MapStateSucceeded", lane)
            self.finish_state(lane, state, [], state.Catch)
            return
        self.saga.branches = [
            Lane(
                key=f"branch:{i}",
                prefix=f"{lane.current}/{i}/",
                current=state.processor.StartAt,
                data=inputs[i],
                item={"Index": i, "Value": item},
                queued=True,
            )
            for i, item in enumerate(items)
        ]
        self.fill_map(state)

    def fill_map(self, state: MapState) -> None:
        """Start queued iterations while fewer than MaxConcurrency run (an iteration may end at once: re-read)."""
        while self.saga.status == RUNNING and self.saga.branches:
            branches = self.saga.branches
            running = sum(1 for b in branches if not b.queued and b.outcome is None)
            queued = next((b for b in branches if b.queued), None)
            if queued is None or (state.MaxConcurrency and running >= state.MaxConcurrency):
                return
            queued.queued = False
            self.note("MapIterationStarted", queued, detail={"index": queued.item["Index"] if queued.item else None})
            self.enter(queued)

    # -- branch ends ---------------------------------------------------------------------------
    def branch_done(self) -> None:
        if self.saga.status != RUNNING or not self.saga.branches:
            return
        main = self.saga.main
        state = self.wf.state(main.current or "")
        if isinstance(state, MapState):
            if any(b.outcome == "failed" for b in self.saga.branches):
                for branch in self.saga.branches:
                    if branch.queued:  # ASL stops a Map at its first failure: nothing new starts
                        branch.queued, branch.outcome = False, "cancelled"
            else:
                self.fill_map(state)
            if not self.saga.branches or self.saga.status != RUNNING:
                return  # an iteration that ended at once already finished the Map
        if any(b.outcome is None for b in self.saga.branches):
            return
        kind = "Map" if isinstance(state, MapState) else "Parallel"
        assert isinstance(state, ParallelState | MapState)
        branches, self.saga.branches = self.saga.branches, []
        self.timers[PARALLEL_LANE] = None
        failed = [b for b in branches if b.outcome == "failed"]
        if failed:
            error = ErrorOut(
                Error=failed[0].error.Error if failed[0].error else BRANCH_FAILED,
                Cause="; ".join(f"{b.prefix}{b.current}: {b.error.Error if b.error else ''}" for b in failed),
            )
            main.data = paths.put(main.data, state.ResultPath, [b.data for b in branches])
            self.note(f"{kind}StateFailed", main, error=error.Error, cause=error.Cause)
            self.catch(main, state.Catch, error, branches=branches)
            return
        self.note(f"{kind}StateSucceeded", main)
        self.finish_state(main, state, [b.data for b in branches], state.Catch)

    def parallel_timed_out(self) -> None:
        main = self.saga.main
        state = self.wf.state(main.current or "")
        assert isinstance(state, ParallelState)
        branches = self.saga.branches
        pending = [b for b in branches if b.outcome is None]
        for branch in pending:
            self.timers[branch.key] = None
        self.saga.branches = []
        self.timers[PARALLEL_LANE] = None
        error = ErrorOut(
            Error=TIMEOUT, Cause="branches still running: " + ", ".join(f"{b.prefix}{b.current}" for b in pending)
        )
        self.note("ParallelStateTimedOut", main, error=TIMEOUT, cause=error.Cause)
        for branch in pending:
            branch.outcome, branch.run = "failed", None
        self.catch(main, state.Catch, error, branches=branches)

    # -- redrive -----------------------------------------------------------------------------
    def redrive(self) -> None:
        """Restart the step that failed; steps and branches that succeeded are not run again."""
        point = self.saga.redrive
        if not self.saga.finished or point is None:
            self.note("RedriveRefused", detail={"status": self.saga.status})
            return
        main = self.saga.main
        self.saga.status, self.saga.error, self.saga.redrive = RUNNING, None, None
        self.saga.redriveCount += 1
        main.current, main.outcome, main.error = point.state, None, None
        self.note("ExecutionRedriven", main, detail={"redriveCount": self.saga.redriveCount})
        state = self.wf.state(point.state)
        if isinstance(state, TaskState):
            self.schedule(main, attempt=point.lastAttempt + 1, counts=[0] * len(state.Retry))
        elif isinstance(state, ParallelState | MapState) and point.branches:
            self.saga.branches = point.branches
            for branch in self.saga.branches:
                if branch.outcome == "cancelled":
                    branch.outcome, branch.queued = None, True
            if isinstance(state, ParallelState) and state.TimeoutSeconds:
                self.timers[PARALLEL_LANE] = TimerSpec(
                    token=self._parallel_token(),
                    dueAt=self.ctx.now + timedelta(seconds=state.TimeoutSeconds),
                    kind="timeout",
                )
            for branch in self.saga.branches:
                if branch.outcome == "succeeded" or branch.queued:
                    continue
                branch.outcome, branch.error = None, None
                branch_state = self.wf.state(branch.prefix + (branch.current or ""))
                if isinstance(branch_state, TaskState):
                    self.schedule(branch, attempt=branch.lastAttempt + 1, counts=[0] * len(branch_state.Retry))
                else:
                    self.enter(branch)
            if isinstance(state, MapState):
                self.fill_map(state)
        else:
            self.enter(main)


def _result(task: TaskState, reply: dict[str, Any]) -> Any:
    """The task's result as Step Functions would hand it on: lambda:invoke wraps the function's return value."""
    if task.Integration is None:
        return reply
    return {"Payload": reply, "StatusCode": 200}


def _text(data: dict[str, Any], path: str | None) -> str | None:
    if not path:
        return None
    try:
        value = paths.get(data, path)
    except paths.PathError:
        return None
    return None if value is None else str(value)
