"""Cancel a running saga (an operator's): abandon the step in flight and take its Catch, as if it had failed.

Which compensation runs is the definition's, not this module's: the main flow's current state gets the error
``CancelledByOperator`` and its Catch table picks the next state, exactly as for any error no Retry takes. In
the guide's workflow every forward step catches ``States.ALL`` onto the compensation for "it may have taken
effect" (ReserveInventory onto ReservationFailed, which releases what the order holds; ProcessPayment onto
PaymentOutcomeUnknown, refund and release; CreateOrderRecord onto RefundPaymentAndRelease), so the step in
flight is compensated too: its effect may have happened with its answer lost. Compensations are idempotent and
the services keep tombstones, so the abandoned command, should it land later, fails with Command.Compensated;
its reply finds no run waiting for it and is recorded as LateReplyIgnored.

A cancel is refused, with nothing changed, when the saga has ended; when it is already on its way to a failed
end (its current state is off the forward path: only a Catch leads there); and when the current state's Catch
leads on to a Succeed state (past the point of no return: the guide's NotifyCustomer continues to OrderSuccess
on any error, so the order will be CONFIRMED; cancel it then, with the cancellation workflow).
"""

from orchestrator import retry
from orchestrator.definition import ChoiceState, MapState, ParallelState, SucceedState, TaskState, Workflow
from orchestrator.engine_base import RunBase
from orchestrator.state import Cancelled, ErrorOut, Lane, SagaState, group_timer_key

#: The error a cancelled step fails with: its Catch's ResultPath holds it, a Fail's ErrorPath names it.
CANCELLED_BY_OPERATOR = "CancelledByOperator"

SAGA_FINISHED, ALREADY_COMPENSATING, PAST_NO_RETURN = "SagaFinished", "AlreadyCompensating", "PastPointOfNoReturn"


def _links(state: object, *, catches: bool = True) -> list[str]:
    """The states ``state`` may go to at its own level: Next, each Choice's and the Default, and (``catches``)
    each Catch's."""
    found: list[str] = []
    if isinstance(state, ChoiceState):
        found += [rule["Next"] for rule in state.Choices if "Next" in rule]
        found += [state.Default] if state.Default else []
    next_state = getattr(state, "Next", None)
    found += [next_state] if next_state else []
    if catches:
        found += [catcher.Next for catcher in getattr(state, "Catch", [])]
    return found


def forward_path(workflow: Workflow) -> set[str]:
    """The main flow's states reachable from StartAt without a Catch: where a saga goes when nothing fails."""
    seen: set[str] = set()
    pending = [workflow.StartAt]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending += _links(workflow.States[name], catches=False)
    return seen


def reaches_success(workflow: Workflow, start: str) -> bool:
    """Whether some way from ``start`` (Next, Choice or Catch, at the main flow's level) ends in a Succeed."""
    seen: set[str] = set()
    pending = [start]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        state = workflow.States[name]
        if isinstance(state, SucceedState):
            return True
        pending += _links(state)
    return False


def cancel_refusal(workflow: Workflow, saga: SagaState) -> tuple[str, str] | None:
    """Why ``saga`` may not be cancelled, as (reason, detail); None when it may. Pure: the API asks it first to
    answer 409, and the engine again under the saga's row lock."""
    current = saga.main.current
    if saga.finished or current is None:
        return SAGA_FINISHED, f"the saga has ended: it is {saga.status}"
    if current not in forward_path(workflow):
        return ALREADY_COMPENSATING, f"the saga is at {current}, already on its way to a failed end"
    catcher = retry.find_catcher(getattr(workflow.States[current], "Catch", []), CANCELLED_BY_OPERATOR)
    if catcher is not None and reaches_success(workflow, catcher.Next):
        return PAST_NO_RETURN, (
            f"the saga is at {current}, past its point of no return: a failure there goes on to {catcher.Next} "
            "and the order succeeds; once it is CONFIRMED, cancel it (the cancellation workflow refunds it)"
        )
    return None


class CancelStep(RunBase):
    """The cancel's part of a run (the lane core's catch and cut come from engine.py and engine_groups.py)."""

    def cancel(self, event: Cancelled) -> None:
        refused = cancel_refusal(self.wf, self.saga)
        if refused is not None:
            self.note("CancelRefused", detail={"reason": refused[0], "detail": refused[1]})
            return
        main = self.saga.main
        state = self.wf.state(main.current or "")
        error = ErrorOut(Error=CANCELLED_BY_OPERATOR, Cause=event.reason)
        self.note("ExecutionCancelled", main, error=error.Error, cause=error.Cause, detail={"by": event.by})
        branches = self.stop(main)
        catchers = state.Catch if isinstance(state, TaskState | ParallelState | MapState) else []
        self.catch(main, catchers, error, branches=branches or None)

    def stop(self, lane: Lane) -> list[Lane]:
        """Abandon what ``lane`` waits for: its run (recorded as TaskCancelled, so its attempt ends), its Wait,
        its group's lanes; every timer of theirs is cleared. Returns the group's lanes as they were stopped."""
        if lane.run is not None:
            run = lane.run
            detail = {"phase": run.phase, "reconcile": run.reconcileOf is not None}
            self.note("TaskCancelled", lane, attempt=run.attempt, commandId=run.commandId, detail=detail)
            lane.lastAttempt = run.attempt
        branches = self.saga.children(lane)
        for branch in branches:
            if branch.outcome is None:
                self.stop(branch)
                self.cut(branch)
        if branches:
            self.saga.set_children(lane, [])
            self.timers[group_timer_key(lane.key)] = None
        self.timers[lane.key] = None
        lane.run, lane.waitToken = None, None
        return branches
