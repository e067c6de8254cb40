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


class Lane(BaseModel):
    """A thread of execution: the main flow, or one branch of a Parallel state."""

    key: str = Field(description="'main' or 'branch:<i>': names the lane's timer.")
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


class RedrivePoint(BaseModel):
    """Where the main flow last failed: the state a redrive restarts, and the branches as they ended."""

    state: str
    lastAttempt: int = 0
    branches: list[Lane] = Field(default_factory=list)


class SagaState(BaseModel):
    orderId: str
    status: str = RUNNING
    main: Lane
    branches: list[Lane] = Field(default_factory=list)
    error: ErrorOut | None = None
    redrive: RedrivePoint | None = None
    redriveCount: int = 0

    @property
    def finished(self) -> bool:
        return self.status != RUNNING

    def lanes(self) -> list[Lane]:
        return [self.main, *self.branches]

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


Event = Started | ReplyReceived | TimerFired | Redriven


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
