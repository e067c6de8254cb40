"""Parallel and Map: the lanes a state runs side by side, the end of such a group, and its timeout.

The lanes form a tree: a branch (or a Map iteration) may run a Parallel or Map of its own. A group
belongs to the lane that runs it, its owner; when its last lane ends, the owner's state succeeds or
fails (with the first failed lane's error) and the owner goes on through its Catch, as ASL says: a
failure not caught inside a branch fails that branch, and so the enclosing Parallel. Every lane of a
group runs to its end (Orderflow's extension: one compensation failing does not stop its sibling).
"""

import contextlib
import copy
from datetime import timedelta

from orchestrator import paths
from orchestrator.asl import io
from orchestrator.definition import BRANCH_FAILED, TIMEOUT, MapState, ParallelState
from orchestrator.engine_base import RunBase
from orchestrator.state import GROUP_TIMER, RUNNING, ErrorOut, Lane, TimerSpec, child_key, group_timer_key

#: The saga_timer lane of the main flow's Parallel timeout (kept from before the tree of lanes).
PARALLEL_LANE = GROUP_TIMER


class LaneGroups(RunBase):
    """The Parallel state's part of a run, and the end of every group of lanes (Parallel or Map)."""

    def group_token(self, owner: Lane) -> str:
        """The token of the group's timeout: names the owner's state and the group's first lane, so a timer of
        an earlier group of the same owner does nothing."""
        return f"parallel:{owner.current}:{self.saga.children(owner)[0].prefix}"

    def arm_group_timer(self, owner: Lane, state: ParallelState) -> None:
        if state.TimeoutSeconds:
            self.timers[group_timer_key(owner.key)] = TimerSpec(
                token=self.group_token(owner),
                dueAt=self.ctx.now + timedelta(seconds=state.TimeoutSeconds),
                kind="timeout",
            )

    def start_parallel(self, lane: Lane, state: ParallelState) -> None:
        self.note("ParallelStateEntered", lane, detail={"branches": len(state.Branches)})
        try:
            branch_input = io.effective_input(state, lane.data, self.scope(lane))
        except io.DataError as exc:
            self.data_failed(lane, exc, state.Catch)
            return
        branches = [
            Lane(
                key=child_key(lane.key, i),
                prefix=f"{lane.prefix}{lane.current}/{i}/",
                current=branch.StartAt,
                data=copy.deepcopy(branch_input),
            )
            for i, branch in enumerate(state.Branches)
        ]
        self.saga.set_children(lane, branches)
        self.arm_group_timer(lane, state)
        for branch in branches:
            self.enter(branch)

    # -- a group's end -------------------------------------------------------------------------
    def branch_done(self, lane: Lane) -> None:
        """``lane`` ended: start what its Map may start, and when its group is over, end the owner's state."""
        if self.saga.status != RUNNING:
            return
        owner = self.saga.owner_of(lane)
        branches = self.saga.children(owner)
        state = self.wf.state(owner.prefix + (owner.current or ""))
        assert isinstance(state, ParallelState | MapState)
        if isinstance(state, MapState):
            if any(b.outcome == "failed" for b in branches):
                for branch in branches:
                    if branch.queued:  # ASL stops a Map at its first failure: nothing new starts
                        branch.queued, branch.outcome = False, "cancelled"
            else:
                self.fill_map(owner, state)
            if self.saga.children(owner) is not branches or self.saga.status != RUNNING:
                return  # an iteration that ended at once already finished the Map
        if any(b.outcome is None for b in branches):
            return
        self.end_group(owner, state)

    def end_group(self, owner: Lane, state: ParallelState | MapState) -> None:
        kind = "Map" if isinstance(state, MapState) else "Parallel"
        branches = self.saga.children(owner)
        self.saga.set_children(owner, [])
        self.timers[group_timer_key(owner.key)] = None
        failed = [b for b in branches if b.outcome == "failed"]
        if failed:
            error = ErrorOut(
                Error=failed[0].error.Error if failed[0].error else BRANCH_FAILED,
                Cause="; ".join(f"{b.prefix}{b.current}: {b.error.Error if b.error else ''}" for b in failed),
            )
            if state.ResultPath not in (None, "$"):
                # Extension: the lanes' outputs stay readable beside the error (what each compensation did); at
                # '$' they would replace the input the Catch's ResultPath goes into, so there ASL's rule holds.
                with contextlib.suppress(paths.PathError):
                    owner.data = paths.put(owner.data, state.ResultPath, [b.data for b in branches])
            self.note(f"{kind}StateFailed", owner, error=error.Error, cause=error.Cause)
            self.catch(owner, state.Catch, error, branches=branches)
            return
        self.note(f"{kind}StateSucceeded", owner)
        self.finish_state(owner, state, [b.data for b in branches], state.Catch)

    def on_group_timer(self, key: str, token: str) -> None:
        """A Parallel's TimeoutSeconds passed: its owner is the lane whose group timer ``key`` is."""
        owner = next((lane for lane in self.saga.lanes() if group_timer_key(lane.key) == key), None)
        if owner is not None and self.saga.children(owner) and token == self.group_token(owner):
            self.parallel_timed_out(owner)

    def parallel_timed_out(self, owner: Lane) -> None:
        state = self.wf.state(owner.prefix + (owner.current or ""))
        assert isinstance(state, ParallelState)
        branches = self.saga.children(owner)
        pending = [b for b in branches if b.outcome is None]
        for branch in pending:
            self.cut(branch)
        self.saga.set_children(owner, [])
        self.timers[group_timer_key(owner.key)] = None
        error = ErrorOut(
            Error=TIMEOUT, Cause="branches still running: " + ", ".join(f"{b.prefix}{b.current}" for b in pending)
        )
        self.note("ParallelStateTimedOut", owner, error=TIMEOUT, cause=error.Cause)
        self.catch(owner, state.Catch, error, branches=branches)

    def cut(self, lane: Lane) -> None:
        """Stop a lane that is still running, and every lane of the groups under it: no timer, no run; failed,
        so a redrive runs it again."""
        for child in self.saga.children(lane):
            if child.outcome is None:
                self.cut(child)
        if self.saga.children(lane):
            self.timers[group_timer_key(lane.key)] = None
        self.timers[lane.key] = None
        lane.outcome, lane.run, lane.waitToken = "failed", None, None
        if lane.queued:
            lane.queued, lane.outcome = False, "cancelled"
