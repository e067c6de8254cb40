"""What the engine reads and returns: saga state, events, and the decision. Plain data, no I/O."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RUNNING = "RUNNING"


class ErrorOut(BaseModel):
    Error: str
    Cause: str = ""


class TaskRun(BaseModel):
    """The current run of a Task state in one lane."""

    commandId: str
    attempt: int = Field(description="1 for the first run; retries count up from 2.")
    retryCounts: list[int] = Field(default_factory=list, description="Retries used, per retrier.")
    phase: Literal["waiting_reply", "waiting_retry"] = "waiting_reply"
    startedAt: datetime
    reissues: int = Field(
        0, description="Times this run's command came back Command.Expired and was sent afresh (bounded)."
    )
    reconcileOf: ErrorOut | None = Field(
        None,
        description="Set when this run is a reconcile (the timed-out command asked again): the error its Catch "
        "gets if the reconcile does not succeed.",
    )


#: The lane key of the main flow, and the saga_timer lane of its Parallel's TimeoutSeconds.
MAIN = "main"
GROUP_TIMER = "parallel"


def child_key(owner: str, index: int) -> str:
    """The key of lane ``index`` of the group that lane ``owner`` runs: 'branch:<i>' under the main flow, then a
    dot and the index per level ('branch:0.2'): unique in the saga, and as short as the nesting is deep."""
    return f"branch:{index}" if owner == MAIN else f"{owner}.{index}"


def group_timer_key(owner: str) -> str:
    """The saga_timer lane of the TimeoutSeconds of the Parallel that lane ``owner`` runs: 'parallel' for the main
    flow's (as before the tree of lanes), 'parallel:0.2' for the one lane 'branch:0.2' runs."""
    return GROUP_TIMER if owner == MAIN else f"{GROUP_TIMER}:{owner.removeprefix('branch:')}"


class Lane(BaseModel):
    """A thread of execution: the main flow, or one branch of a Parallel state (or iteration of a Map), which may
    run a Parallel or Map of its own: the lanes form a tree."""

    key: str = Field(description="'main', or child_key's 'branch:<i>[.<j>...]': names the lane's timer.")
    prefix: str = Field("", description="Path of the lane's states in the definition.")
    current: str | None
    data: Any = Field(description="The current state's input; after a state, its output (any JSON value).")
    run: TaskRun | None = None
    outcome: Literal["succeeded", "failed", "cancelled"] | None = Field(
        None, description="cancelled: a Map iteration not started because another failed."
    )
    queued: bool = Field(False, description="A Map iteration waiting for a place under MaxConcurrency.")
    error: ErrorOut | None = None
    lastAttempt: int = Field(0, description="Runs of the current state so far; a redrive continues the count.")
    waitToken: str | None = Field(None, description="Set while the lane's Wait state waits: its timer's token.")
    item: dict[str, Any] | None = Field(
        None, description="A Map iteration's item, {Index, Value}: the context object's $$.Map.Item."
    )
    branches: list["Lane"] = Field(
        default_factory=list,
        description="The lanes of the Parallel or Map this branch runs (a nested group; the main flow's are "
        "SagaState.branches). After the group failed and no Catch took it, kept as they ended for a redrive.",
    )


class RedrivePoint(BaseModel):
    """Where the main flow last failed: the state a redrive restarts, and the branches as they ended."""

    state: str
    lastAttempt: int = 0
    branches: list[Lane] = Field(default_factory=list)


class SagaState(BaseModel):
    orderId: str
    status: str = RUNNING
    main: Lane
    branches: list[Lane] = Field(
        default_factory=list,
        description="The lanes of the main flow's Parallel or Map. Kept here, not in main.branches, so a saga "
        "without nesting is stored as before the tree of lanes (an older replica reads it).",
    )
    error: ErrorOut | None = None
    redrive: RedrivePoint | None = None
    redriveCount: int = 0

    @property
    def finished(self) -> bool:
        return self.status != RUNNING

    def lanes(self) -> list[Lane]:
        """Every lane of the tree, each before the lanes of its group."""
        found: list[Lane] = []
        pending = [self.main]
        while pending:
            lane = pending.pop(0)
            found.append(lane)
            pending[0:0] = self.children(lane)
        return found

    def children(self, owner: Lane) -> list[Lane]:
        """The lanes of the group ``owner`` runs (empty when it runs none)."""
        return self.branches if owner.key == MAIN else owner.branches

    def set_children(self, owner: Lane, lanes: list[Lane]) -> None:
        if owner.key == MAIN:
            self.branches = lanes
        else:
            owner.branches = lanes

    def owner_of(self, lane: Lane) -> Lane:
        """The lane whose group ``lane`` is in."""
        return next(owner for owner in self.lanes() if any(child is lane for child in self.children(owner)))

    def lane(self, key: str) -> Lane | None:
        return next((lane for lane in self.lanes() if lane.key == key), None)

    def current_step(self) -> str | None:
        return self.main.current


class Started(BaseModel):
    kind: Literal["started"] = "started"
    input: dict[str, Any]


class ReplyReceived(BaseModel):
    kind: Literal["reply"] = "reply"
    commandId: str
    ok: bool
    result: dict[str, Any] | None = None
    error: ErrorOut | None = None


class TimerFired(BaseModel):
    kind: Literal["timer"] = "timer"
    lane: str
    token: str


class Redriven(BaseModel):
    """Restart a failed saga from the step that failed, as Step Functions' RedriveExecution."""

    kind: Literal["redrive"] = "redrive"


class Cancelled(BaseModel):
    """An operator stops a running saga: the step in flight is abandoned and its Catch taken, as if it had failed
    with CancelledByOperator (orchestrator/engine_cancel.py)."""

    kind: Literal["cancel"] = "cancel"
    reason: str = Field(description="Why, the operator's words: the error's Cause.")
    by: dict[str, Any] | None = Field(None, description="Who asked (the API's audit actor), for the history.")


Event = Started | ReplyReceived | TimerFired | Redriven | Cancelled


class CommandOut(BaseModel):
    """A command to send: the runner writes it to the outbox."""

    model_config = ConfigDict(frozen=True)

    resource: str
    messageId: str
    attempt: int
    payload: dict[str, Any]
    state: str
    deadline: datetime | None = Field(None, description="When the step stops waiting for it: the envelope's deadline.")


class TimerSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    token: str
    dueAt: datetime
    kind: Literal["timeout", "retry", "wait"]


class HistoryEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    at: datetime
    event: str
    state: str | None = None
    lane: str = "main"
    attempt: int | None = None
    commandId: str | None = None
    error: str | None = None
    cause: str | None = None
    detail: dict[str, Any] | None = None


class Decision(BaseModel):
    state: SagaState
    commands: list[CommandOut] = Field(default_factory=list)
    timers: dict[str, TimerSpec | None] = Field(
        default_factory=dict, description="Per lane key: the timer to set, or None to clear it."
    )
    history: list[HistoryEntry] = Field(default_factory=list)
