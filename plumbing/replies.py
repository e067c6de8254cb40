"""The failure reply every command handler may send, in the Amazon States Language's shape."""

from pydantic import BaseModel, ConfigDict, Field


class CommandFailed(BaseModel):
    """A command's step failed: the orchestrator matches ``Error`` against Retry and Catch."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    Error: str = Field(description="Error name, e.g. PaymentDeclined or Database.DeadlockDetected.")
    Cause: str = Field("", description="Human-readable detail; never card data or contact details.")
