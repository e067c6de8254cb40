"""Redrive: restart a failed saga at the step that failed, as Step Functions' RedriveExecution."""

from orchestrator.definition import MapState, ParallelState, TaskState
from orchestrator.engine_base import RunBase
from orchestrator.state import RUNNING, Lane


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
        main.current, main.lastAttempt = point.state, point.lastAttempt
        self.note("ExecutionRedriven", main, detail={"redriveCount": self.saga.redriveCount})
        self.saga.branches = point.branches
        self.resume(main)

    def resume(self, lane: Lane) -> None:
        """Run the lane's current state again: a Task with its next attempt; a Parallel or Map with the lanes of
        its group that did not succeed (each resumed the same way, down the tree), the iterations a failure
        cancelled queued again; any other state from its start."""
        lane.outcome, lane.error = None, None
        state = self.wf.state(lane.prefix + (lane.current or ""))
        branches = self.saga.children(lane)
        if isinstance(state, TaskState):
            self.schedule(lane, attempt=lane.lastAttempt + 1, counts=[0] * len(state.Retry))
        elif isinstance(state, ParallelState | MapState) and branches:
            for branch in branches:
                if branch.outcome == "cancelled":
                    branch.outcome, branch.queued = None, True
            if isinstance(state, ParallelState):
                self.arm_group_timer(lane, state)
            for branch in branches:
                if branch.outcome != "succeeded" and not branch.queued:
                    self.resume(branch)
            if isinstance(state, MapState):
                self.fill_map(lane, state)
        else:
            self.enter(lane)
