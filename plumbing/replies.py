"""The failure reply every command handler may send, in the Amazon States Language's shape."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class CommandFailed(BaseModel):
    """A command's step failed: the orchestrator matches ``Error`` against Retry and Catch."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    Error: str = Field(description="Error name, e.g. PaymentDeclined or Database.DeadlockDetected.")
    Cause: str = Field("", description="Human-readable detail; never card data or contact details.")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        # PostgreSQL cannot store NUL in text: refuse it here rather than crash the orchestrator later.
        if isinstance(data, dict) and any(isinstance(v, str) and "\x00" in v for v in data.values()):
            raise ValueError("text must not contain NUL characters")
        return data
