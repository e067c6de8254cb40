"""Redrive: restart a failed saga at the step that failed, as Step Functions' RedriveExecution."""

from datetime import timedelta

from orchestrator.definition import MapState, ParallelState, TaskState
from orchestrator.engine_base import RunBase
from orchestrator.engine_groups import PARALLEL_LANE
from orchestrator.state import RUNNING, TimerSpec


class RedriveStep(RunBase):
    """The redrive's part of a run."""

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
