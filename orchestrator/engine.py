"""The pure saga engine: state + event + now -> new state, commands, timers and history.

No I/O happens here. Time, ids and jitter come in through ``Context`` so tests
drive the engine step by step and advance time instead of sleeping.

This module holds ``decide`` and the lane core (entering states, Catch, a lane's end,
the saga's end); the states' own parts are mixins: Task in engine_tasks, Choice and
Wait in engine_states, Parallel and the lane groups in engine_groups, Map in
engine_map, redrive in engine_redrive, an operator's cancel in engine_cancel.
"""

import copy
from typing import Any

from orchestrator import paths, retry
from orchestrator.asl import io
from orchestrator.definition import (
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
from orchestrator.engine_base import Context
from orchestrator.engine_cancel import CancelStep
from orchestrator.engine_groups import PARALLEL_LANE, LaneGroups
from orchestrator.engine_map import MapSteps
from orchestrator.engine_redrive import RedriveStep
from orchestrator.engine_states import ChoiceAndWait
from orchestrator.engine_tasks import MAX_REISSUES, TaskSteps
from orchestrator.state import (
    MAIN,
    Cancelled,
    Decision,
    ErrorOut,
    Event,
    Lane,
    Redriven,
    RedrivePoint,
    ReplyReceived,
    SagaState,
    Started,
    TimerFired,
)

__all__ = ["MAX_REISSUES", "PARALLEL_LANE", "Context", "decide"]


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
        elif isinstance(event, Cancelled):
            run.cancel(event)
        elif run.saga.finished:
            run.note("EventAfterEnd", detail={"kind": event.kind})
        elif isinstance(event, ReplyReceived):
            run.on_reply(event)
        elif isinstance(event, TimerFired):
            run.on_timer(event)
    return Decision(state=run.saga, commands=run.commands, timers=run.timers, history=run.history)


class _Run(TaskSteps, ChoiceAndWait, LaneGroups, MapSteps, RedriveStep, CancelStep):
    """One decision: the lane core here, each state's part from its mixin."""

    def on_timer(self, event: TimerFired) -> None:
        if event.lane.startswith(PARALLEL_LANE):
            self.on_group_timer(event.lane, event.token)
            return
        lane = self.saga.lane(event.lane)
        if lane is None:
            return
        if lane.waitToken is not None:
            self.on_wait_timer(lane, event)
        else:
            self.on_task_timer(lane, event)

    def catch(self, lane: Lane, catchers: list[Any], error: ErrorOut, branches: list[Lane] | None = None) -> None:
        if lane.key == MAIN and lane.current:
            self.saga.redrive = RedrivePoint(state=lane.current, lastAttempt=lane.lastAttempt, branches=branches or [])
        catcher = retry.find_catcher(catchers, error.Error)
        if catcher is None:
            if lane.key != MAIN and branches:
                lane.branches = branches  # the failed group as it ended: a redrive runs its lanes that failed
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
        if lane.key == MAIN:
            self.finish(status or "SUCCEEDED", None)
        else:
            self.note("BranchSucceeded", lane)
            self.branch_done(lane)

    def lane_failed(self, lane: Lane, error: ErrorOut, status: str | None = None) -> None:
        lane.outcome = "failed"
        lane.error = error
        if lane.key == MAIN:
            self.finish(status or "FAILED", error)
        else:
            self.note("BranchFailed", lane, error=error.Error, cause=error.Cause)
            self.branch_done(lane)

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


def _text(data: dict[str, Any], path: str | None) -> str | None:
    if not path:
        return None
    try:
        value = paths.get(data, path)
    except paths.PathError:
        return None
    return None if value is None else str(value)
