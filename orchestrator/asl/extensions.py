"""Orderflow's extensions to a definition, kept beside it (``<name>.orderflow.json``), and the binding of a
standard definition into the document the engine reads.

Neither ``asl-validator`` nor ``statelint`` accepts a field ASL does not define, so what
Orderflow adds lives in a sidecar keyed by state name (ASL state names are unique in the
whole machine): ``Status`` on Succeed and Fail, ``TimeoutSeconds`` on a Parallel,
``Reconcile`` on a Task, and ``Step``, the name history and metrics give a state (two
states may share one: both Parallels' refund branches count as RefundPayment).

``bind`` returns the engine's form: each Task's ``Resource`` replaced by its command's
routing key (``inventory.CheckInventory``), ``Compensation`` from the resource map, the
sidecar's fields inline and ``Step`` names applied. A document already in that form
(a stored version, a test's definition) passes through unchanged.
"""

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.asl.resources import ResourceError, ResourceMap
from orchestrator.asl.resources import bind as bind_resource

SIDECAR_SUFFIX = ".orderflow.json"
_ALLOWED = {
    "Status": {"Succeed", "Fail"},
    "TimeoutSeconds": {"Parallel"},
    "Reconcile": {"Task"},
    "Step": {"Task", "Pass", "Parallel", "Succeed", "Fail", "Choice", "Wait", "Map"},
}


class StateExtension(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    Status: str | None = Field(None, description="The order's terminal status (Succeed, Fail).")
    TimeoutSeconds: float | None = Field(None, gt=0, description="A Parallel's own time limit.")
    Reconcile: dict[str, Any] | None = Field(None, description="A Task's reconcile after a final States.Timeout.")
    Step: str | None = Field(None, min_length=1, description="The name history and metrics use.")


class Extensions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    States: dict[str, StateExtension] = Field(default_factory=dict)
    Comment: str | None = None


def sidecar_of(definition_file: Path) -> Path:
    """``workflow.json`` -> ``workflow.orderflow.json``."""
    return definition_file.with_name(definition_file.stem + SIDECAR_SUFFIX)


def read_extensions(document: dict[str, Any] | None) -> Extensions:
    try:
        return Extensions.model_validate(document or {})
    except ValidationError as exc:
        raise ValueError(f"extensions: {exc}") from None


def walk(states: dict[str, Any], where: str = "") -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Every state, nested ones included: (location, name, state)."""
    for name, state in states.items():
        if not isinstance(state, dict):
            continue
        yield where, name, state
        for i, branch in enumerate(state.get("Branches") or []):
            if isinstance(branch, dict) and isinstance(branch.get("States"), dict):
                yield from walk(branch["States"], f"{where}{name}/Branches[{i}]/")
        for key in ("ItemProcessor", "Iterator"):
            inner = state.get(key)
            if isinstance(inner, dict) and isinstance(inner.get("States"), dict):
                yield from walk(inner["States"], f"{where}{name}/{key}/")


def bind(document: dict[str, Any], resources: ResourceMap, extensions: Extensions) -> dict[str, Any]:
    """The engine's form of ``document`` (see the module docstring). Raises ValueError naming the state."""
    result = copy.deepcopy(document)
    states = result.get("States")
    if not isinstance(states, dict):
        return result
    seen: dict[str, str] = {}
    standard = any(_is_standard(state) for _, _, state in walk(states))
    for where, name, state in walk(states):
        if name in seen and standard:
            raise ValueError(f"{where}{name}: state names must be unique in the whole machine (also at {seen[name]})")
        seen.setdefault(name, where or "<root>")
        if state.get("Type") == "Task" and str(state.get("Resource", "")).startswith("arn:"):
            try:
                bound = bind_resource(state["Resource"], state.get("Parameters", {}), resources)
            except ResourceError as exc:
                raise ValueError(f"{where}{name}: {exc}") from None
            state["Resource"] = bound.binding.Command
            if "Parameters" in state or bound.integration:
                state["Parameters"] = bound.parameters
            if bound.integration:
                state["Integration"] = bound.integration
            if bound.binding.Compensation:
                state["Compensation"] = True
    unknown = set(extensions.States) - set(seen)
    if unknown:
        raise ValueError(f"extensions name states the definition does not have: {sorted(unknown)}")
    renames: list[tuple[dict[str, Any], str, str]] = []
    for where, name, state in walk(states):
        extension = extensions.States.get(name)
        if extension is None:
            continue
        for field, value in extension.model_dump(exclude_none=True).items():
            if state.get("Type") not in _ALLOWED[field]:
                raise ValueError(f"{where}{name}: extension {field} does not apply to a {state.get('Type')} state")
            if field != "Step":
                state[field] = value
        if extension.Step and extension.Step != name:
            renames.append((_scope_of(result, where), name, extension.Step))
    for scope, old, new in renames:
        _rename(scope, old, new)
    return result


def _is_standard(state: dict[str, Any]) -> bool:
    """A Task with an ARN: the document is standard ASL, whose state names are unique. The engine's own form
    (a stored version, a test's definition) names commands and may repeat a branch state's name."""
    return state.get("Type") == "Task" and str(state.get("Resource", "")).startswith("arn:")


def _scope_of(document: dict[str, Any], where: str) -> dict[str, Any]:
    """The object ({StartAt, States}) holding the states at ``where`` ('P/Branches[0]/...')."""
    scope = document
    for part in filter(None, where.split("/")):
        if part.startswith("Branches["):
            scope = scope["Branches"][int(part[len("Branches[") : -1])]
        elif part in ("ItemProcessor", "Iterator"):
            scope = scope[part]
        else:
            scope = scope["States"][part]
    return scope


def _rename(scope: dict[str, Any], old: str, new: str) -> None:
    states = scope["States"]
    if new in states:
        raise ValueError(f"{old}: Step {new!r} is already a state of its scope")
    scope["States"] = {new if name == old else name: state for name, state in states.items()}
    if scope.get("StartAt") == old:
        scope["StartAt"] = new
    for state in scope["States"].values():
        if state.get("Next") == old:
            state["Next"] = new
        for catcher in state.get("Catch") or []:
            if catcher.get("Next") == old:
                catcher["Next"] = new
        for rule in state.get("Choices") or []:
            if rule.get("Next") == old:
                rule["Next"] = new
        if state.get("Default") == old:
            state["Default"] = new
