"""A fluent driver for the pure engine, in the eventuate-tram style.

    saga = given(workflow).start(order)
    saga.expect_command("inventory.CheckInventory")
    saga.reply_error("Service.Unavailable").expect_retry_delay(2)

The clock is fixed and only moves when a test says so (``advance``, or firing a
timer moves it to the timer's due time); command ids count up (``cmd-1``,
``cmd-2``, ...) and jitter comes from ``random.Random(0)``, so every run of a
test sees the same decisions.
"""

import itertools
import random
from datetime import UTC, datetime, timedelta
from typing import Any, Self

import pytest

from orchestrator import definition
from orchestrator.definition import Workflow
from orchestrator.engine import PARALLEL_LANE, Context, decide
from orchestrator.state import (
    CommandOut,
    Decision,
    ErrorOut,
    Event,
    ReplyReceived,
    SagaState,
    Started,
    TimerFired,
    TimerSpec,
)

T0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
#: An order as the guide's OrderRequested carries it, and CheckInventory's pricing of it: the start of most
#: engine tests that drive the order workflow itself.
ORDER: dict[str, Any] = {
    "orderId": "ORDER#1",
    "customer": {"email": "ada@example.com", "phone": None},
    "items": [{"productId": "456", "quantity": 2}],
    "currency": "usd",
    "paymentMethodId": "pm_card_visa",
}
PRICED = {"amount": 129.57, "currency": "usd", "lines": []}


def given(workflow: Workflow | dict[str, Any] | None = None) -> "SagaDsl":
    """A driver for ``workflow``: a parsed Workflow, a definition dict, or None for workflow.json."""
    if workflow is None:
        workflow = definition.load()
    elif isinstance(workflow, dict):
        workflow = definition.parse(workflow)
    return SagaDsl(workflow)


class SagaDsl:
    def __init__(self, workflow: Workflow, *, now: datetime = T0, seed: int = 0) -> None:
        self.workflow = workflow
        self.now = now
        self._ids = itertools.count(1)
        self.rng = random.Random(seed)
        self.state: SagaState | None = None
        self.decisions: list[Decision] = []
        self.timers: dict[str, TimerSpec] = {}
        self.pending: list[CommandOut] = []
        self.current: CommandOut | None = None

    # -- driving -----------------------------------------------------------------------------
    def _ctx(self) -> Context:
        return Context(now=self.now, new_id=lambda: f"cmd-{next(self._ids)}", rng=self.rng)

    def send(self, event: Event) -> Decision:
        """Feed one event to the engine and fold its decision into the driver."""
        decision = decide(self.workflow, self.state, event, self._ctx())
        self.decisions.append(decision)
        self.state = decision.state
        self.pending.extend(decision.commands)
        for lane, timer in decision.timers.items():
            if timer is None:
                self.timers.pop(lane, None)
            else:
                self.timers[lane] = timer
        return decision

    def start(self, input: dict[str, Any]) -> Self:
        self.send(Started(input=input))
        return self

    def advance(self, seconds: float) -> Self:
        self.now += timedelta(seconds=seconds)
        return self

    def reply_ok(self, result: dict[str, Any] | None = None, *, to: CommandOut | None = None) -> Self:
        """Reply success to ``to``, by default the command last returned by ``expect_command``."""
        self.send(ReplyReceived(commandId=self._target(to).messageId, ok=True, result=result or {}))
        return self

    def reply_error(self, name: str, cause: str = "", *, to: CommandOut | None = None) -> Self:
        error = ErrorOut(Error=name, Cause=cause)
        self.send(ReplyReceived(commandId=self._target(to).messageId, ok=False, error=error))
        return self

    def fire_timeout(self, lane: str = "main") -> Self:
        """Move the clock to the lane's timeout and fire it."""
        return self._fire(lane, "timeout")

    def fire_retry(self, lane: str = "main") -> Self:
        """Move the clock to the lane's retry timer and fire it."""
        return self._fire(lane, "retry")

    def fire_wait(self, lane: str = "main") -> Self:
        """Move the clock to the lane's Wait timer and fire it."""
        return self._fire(lane, "wait")

    def fire_parallel_timeout(self, lane: str = PARALLEL_LANE) -> Self:
        """Fire a Parallel's TimeoutSeconds: the main flow's, or (``parallel:0``) the one lane branch:0 runs."""
        return self._fire(lane, "timeout")

    def _fire(self, lane: str, kind: str) -> Self:
        timer = self.timers.get(lane)
        assert timer is not None, f"no timer set on lane {lane!r}; timers: {self.timers}"
        assert timer.kind == kind, f"lane {lane!r} has a {timer.kind} timer, not a {kind} timer"
        self.now = max(self.now, timer.dueAt)
        self.send(TimerFired(lane=lane, token=timer.token))
        return self

    def _target(self, to: CommandOut | None) -> CommandOut:
        target = to or self.current
        assert target is not None, "no command to reply to: call expect_command first"
        return target

    # -- expectations ------------------------------------------------------------------------
    def expect_command(self, resource: str) -> CommandOut:
        """The oldest unconsumed command to ``resource``; it becomes the default reply target."""
        for i, command in enumerate(self.pending):
            if command.resource == resource:
                self.current = self.pending.pop(i)
                return self.current
        raise AssertionError(f"expected a {resource} command; pending: {[c.resource for c in self.pending]}")

    def expect_no_command(self) -> Self:
        assert not self.pending, f"unexpected commands: {[c.resource for c in self.pending]}"
        return self

    def expect_status(self, status: str) -> Self:
        assert self.saga.status == status, f"status {self.saga.status!r}, expected {status!r}"
        return self

    def expect_retry_delay(self, seconds: float, lane: str = "main") -> Self:
        """The lane waits ``seconds`` (from now) before its next run."""
        assert self.retry_delay(lane) == pytest.approx(seconds, abs=1e-6), (
            f"retry on {lane!r} in {self.retry_delay(lane)} s, expected {seconds} s"
        )
        return self

    def retry_delay(self, lane: str = "main") -> float:
        timer = self.timers.get(lane)
        assert timer is not None and timer.kind == "retry", f"no retry timer on lane {lane!r}: {timer}"
        return (timer.dueAt - self.now).total_seconds()

    def expect_timeout_in(self, seconds: float, lane: str = "main") -> Self:
        timer = self.timers.get(lane)
        assert timer is not None and timer.kind == "timeout", f"no timeout timer on lane {lane!r}: {timer}"
        assert (timer.dueAt - self.now).total_seconds() == pytest.approx(seconds, abs=1e-6)
        return self

    # -- views -------------------------------------------------------------------------------
    @property
    def saga(self) -> SagaState:
        assert self.state is not None, "the saga has not started"
        return self.state

    @property
    def data(self) -> dict[str, Any]:
        return self.saga.main.data

    @property
    def last(self) -> Decision:
        return self.decisions[-1]

    def events(self) -> list[str]:
        """Every history event so far, in order."""
        return [entry.event for decision in self.decisions for entry in decision.history]

    def resources(self) -> list[str]:
        """Every command sent so far, in order."""
        return [command.resource for decision in self.decisions for command in decision.commands]
