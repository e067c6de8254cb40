"""Fault injection for tests and demonstrations, off by default.

A process's ``FAULTS`` setting (JSON) lists rules; a command matching a rule
fails with the rule's error instead of being handled: always, on its first N
attempts (the envelope's attempt, so the count survives restarts), and only
for correlation ids (order ids) matching a pattern when one is given. The
error ``NoReply`` handles nothing and answers nothing, so the requester's
timeout fires, as when a reply is lost.
"""

import re
from functools import cached_property

from pydantic import BaseModel, ConfigDict, Field

from plumbing.envelope import Envelope

NO_REPLY = "NoReply"


class FaultRule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    messageType: str = Field(description="The command to fail, e.g. CreateOrderRecord.")
    error: str = Field(description="Error name to answer with, or NoReply to answer nothing.")
    cause: str = "injected fault"
    times: int | None = Field(None, ge=1, description="Fail attempts 1..times only; None fails every attempt.")
    correlationIdPattern: str | None = Field(None, description="Regex searched in the order id.")

    @cached_property
    def _pattern(self) -> re.Pattern[str] | None:
        return re.compile(self.correlationIdPattern) if self.correlationIdPattern else None

    def matches(self, envelope: Envelope) -> bool:
        if envelope.type != self.messageType:
            return False
        if self.times is not None and envelope.attempt > self.times:
            return False
        return self._pattern is None or self._pattern.search(envelope.correlationId) is not None


class FaultPlan:
    def __init__(self, rules: list[FaultRule]) -> None:
        self.rules = rules

    def match(self, envelope: Envelope) -> FaultRule | None:
        return next((rule for rule in self.rules if rule.matches(envelope)), None)
