"""Parallel and Map: the lanes a state runs side by side, their end, and the group's timeout."""

import copy
from datetime import timedelta

from orchestrator import paths
from orchestrator.asl import io
from orchestrator.definition import BRANCH_FAILED, TIMEOUT, MapState, ParallelState
from orchestrator.engine_base import RunBase
from orchestrator.state import RUNNING, ErrorOut, Lane, TimerSpec

PARALLEL_LANE = "parallel"


class LaneGroups(RunBase):
    """The Parallel state's part of a run, and the end of every group of lanes (Parallel or Map)."""

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
