"""The resource map: which Orderflow command a Task's ``Resource`` runs (orchestrator/resources.json).

A Step Functions definition names Lambda functions, either as the function's ARN
(``arn:aws:lambda:us-east-1:123456789012:function:CheckInventory``: the effective
Parameters are the event, the result is the function's return value) or through the
optimised integration ``arn:aws:states:::lambda:invoke`` with ``Parameters.FunctionName``
and ``Parameters.Payload`` (the result is wrapped as ``{"Payload": ..., "StatusCode": 200}``).
The map binds function names to commands; region, account and qualifier are not read,
so a definition written for any account runs unchanged. Other ARNs (an activity, a
resource of the user's own) are bound exactly as written under ``Resources``.
"""

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

RESOURCE_MAP_FILE = Path(__file__).parent.parent / "resources.json"
LAMBDA_INVOKE = "arn:aws:states:::lambda:invoke"
#: Orderflow's name for the lambda:invoke integration on a bound Task (its result is wrapped as Lambda's).
LAMBDA_INTEGRATION = "lambda:invoke"
_FUNCTION_ARN = re.compile(r"^arn:aws[\w-]*:lambda:[^:]*:\d*:function:(?P<name>[^:]+)(?::[^:]+)?$")
_PARTIAL_FUNCTION = re.compile(r"^(?:\d+:function:)?(?P<name>[A-Za-z0-9_-]+)(?::[^:]+)?$")


class ResourceError(ValueError):
    """A Task's Resource cannot be bound to a command; the message says which and why."""


class Binding(BaseModel):
    """One function or resource: the command it runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    Command: str = Field(pattern=r"^[a-z][a-z0-9_]*\.[A-Z][A-Za-z0-9]*$", description="'<service>.<Command>'.")
    Compensation: bool = Field(False, description="The command undoes an earlier step (a release, a refund, a void).")
    Comment: str | None = None


class ResourceMap(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    Functions: dict[str, Binding] = Field(default_factory=dict, description="Lambda function name -> command.")
    Resources: dict[str, Binding] = Field(default_factory=dict, description="Any other ARN, exactly -> command.")
    Comment: str | None = None


@dataclass(frozen=True)
class BoundTask:
    """What a Task's Resource and Parameters become: the command, its payload template, how its result reads."""

    binding: Binding
    parameters: Any
    integration: str | None


@cache
def default_map() -> ResourceMap:
    return read_map(RESOURCE_MAP_FILE)


def read_map(path: Path) -> ResourceMap:
    try:
        return ResourceMap.model_validate(json.loads(path.read_text()))
    except ValidationError as exc:
        raise ResourceError(f"{path}: {exc}") from None


def function_name(reference: str) -> str | None:
    """The function a Lambda name, partial ARN or full ARN names (qualifier dropped); None if it names none."""
    match = _FUNCTION_ARN.match(reference) or _PARTIAL_FUNCTION.match(reference)
    return match.group("name") if match else None


def bind(resource: str, parameters: Any, resources: ResourceMap) -> BoundTask:
    """Bind one Task. Raises ResourceError naming the function or ARN that the map does not hold."""
    if resource in resources.Resources:
        return BoundTask(resources.Resources[resource], parameters, None)
    if resource.startswith(LAMBDA_INVOKE):
        if resource != LAMBDA_INVOKE:
            suffix = resource[len(LAMBDA_INVOKE) :]
            raise ResourceError(f"{resource!r}: the {suffix} pattern is not supported (request-response only)")
        if not isinstance(parameters, dict) or not isinstance(parameters.get("FunctionName"), str):
            raise ResourceError(f"{resource!r} needs Parameters.FunctionName, a fixed name (not a path)")
        extra = set(parameters) - {"FunctionName", "Payload", "Payload.$", "Qualifier"}
        if extra:
            raise ResourceError(f"{resource!r}: Parameters {sorted(extra)} are not supported")
        binding = _function(parameters["FunctionName"], resources)
        # The engine sends the resolved Payload: keeping the key (static or '.$') keeps ASL's own resolution rules.
        payload = {key: value for key, value in parameters.items() if key in ("Payload", "Payload.$")}
        return BoundTask(binding, payload, LAMBDA_INTEGRATION)
    if _FUNCTION_ARN.match(resource):
        return BoundTask(_function(resource, resources), parameters, None)
    raise ResourceError(f"Resource {resource!r} is not in the resource map (Resources)")


def _function(reference: str, resources: ResourceMap) -> Binding:
    name = function_name(reference)
    if name is None or name not in resources.Functions:
        raise ResourceError(f"function {reference!r} is not in the resource map (Functions)")
    return resources.Functions[name]
