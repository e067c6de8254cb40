"""What every part of the engine shares: the injected Context and the working set of one decision.

The run is one object; its parts (tasks, Choice and Wait, lane groups, redrive) are mixins of RunBase in the
orchestrator/engine_*.py modules, and orchestrator/engine.py puts them together with the lane core.
"""

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from orchestrator.asl.intrinsics import Scope
from orchestrator.definition import TaskState, Workflow
from orchestrator.state import CommandOut, HistoryEntry, Lane, SagaState, TimerSpec


@dataclass
class Context:
    """What a decision may not find out for itself: the time, new ids and randomness (tests fix all three)."""

    now: datetime
    new_id: Callable[[], str] = field(default=lambda: str(uuid.uuid4()))
    rng: random.Random = field(default_factory=random.Random)


class RunBase:
    """The working set of one decision: the saga as it changes, and the commands, timers and history it makes."""

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

    def scope(self, lane: Lane, *, retry_count: int = 0) -> Scope:
        """The context object ($$) of the lane's current state, with the engine's ids and randomness."""
        context = {
            "Execution": {"Id": self.saga.orderId, "Name": self.saga.orderId},
            "State": {"Name": lane.current, "EnteredTime": self.ctx.now.isoformat(), "RetryCount": retry_count},
        }
        if lane.item is not None:
            context["Map"] = {"Item": lane.item}
        return Scope(lane.data, context, self.ctx.new_id, self.ctx.rng)
