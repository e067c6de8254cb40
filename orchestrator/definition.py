"""The workflow definition: Amazon States Language, validated on load, in the form the engine reads.

A definition file is standard ASL (it passes asl-validator and statelint): Task
resources are ARNs, bound to commands by the resource map (orchestrator/resources.json),
and Orderflow's extensions sit beside it in ``<name>.orderflow.json`` (orchestrator.asl).
``parse`` binds both into the engine's form, where ``Resource`` is the command's routing
key and the extensions are fields of their states, each documented in docs/workflow.md:
``Status`` on Succeed and Fail states (the order's terminal status), ``TimeoutSeconds``
on a Parallel state (the guide's 120 s compensation window), ``Compensation`` on a Task
state (it undoes an earlier step; counted in orderflow_compensations_total) and
``Reconcile`` on a Task state (when it times out and no retry is left, the command is
asked once more, same key, before its Catch applies). A stored version is that form.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.asl import choice, intrinsics, jsonpath, templates
from orchestrator.asl import extensions as asl_extensions
from orchestrator.asl import resources as asl_resources
from orchestrator.asl.choice import parse_timestamp

ALL = "States.ALL"
TASK_FAILED = "States.TaskFailed"
TIMEOUT = "States.Timeout"
BRANCH_FAILED = "States.BranchFailed"
NO_CHOICE_MATCHED = "States.NoChoiceMatched"
#: ASL's predefined error names (the specification's table); an own error name may not start with 'States.'.
PREDEFINED_ERRORS = {
    ALL,
    TASK_FAILED,
    TIMEOUT,
    BRANCH_FAILED,
    NO_CHOICE_MATCHED,
    "States.Runtime",
    "States.DataLimitExceeded",
    "States.HeartbeatTimeout",
    "States.IntrinsicFailure",
    "States.ParameterPathFailure",
    "States.Permissions",
    "States.ResultPathMatchFailure",
    "States.ExceedToleratedFailureThreshold",
    "States.ItemReaderFailed",
    "States.ResultWriterFailed",
    "States.QueryEvaluationError",
}
#: A service's refusal of a command whose deadline passed (plumbing.errors.COMMAND_EXPIRED, the same name): the
#: engine sends the command afresh while its step still waits, instead of matching Retry and Catch.
COMMAND_EXPIRED = "Command.Expired"

DEFINITION_FILE = Path(__file__).parent / "workflow.json"
#: How deep Parallel and Map states may nest: 1 is one in the main flow, 2 one inside its branch or iteration.
MAX_GROUP_DEPTH = 3


class DefinitionError(ValueError):
    """The workflow definition is not valid; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_error_names(names: list[str]) -> list[str]:
    if not names:
        raise ValueError("ErrorEquals must name at least one error")
    for name in names:
        if name.startswith("States.") and name not in PREDEFINED_ERRORS:
            raise ValueError(f"{name!r}: error names starting with 'States.' are reserved")
    if ALL in names and len(names) > 1:
        raise ValueError("States.ALL must appear alone in its ErrorEquals")
    return names


class Retrier(_Strict):
    """One Retry entry; defaults are Step Functions' own."""

    ErrorEquals: list[str]
    IntervalSeconds: float = Field(1.0, gt=0)
    MaxAttempts: int = Field(3, ge=0, description="Retries, not runs: total runs = 1 + MaxAttempts.")
    BackoffRate: float = Field(2.0, ge=1.0)
    MaxDelaySeconds: float | None = Field(None, gt=0)
    JitterStrategy: Literal["FULL", "NONE"] = "NONE"
    Comment: str | None = None

    _names = field_validator("ErrorEquals")(_check_error_names)


class Catcher(_Strict):
    ErrorEquals: list[str]
    Next: str
    ResultPath: str | None = "$"
    Comment: str | None = None

    _names = field_validator("ErrorEquals")(_check_error_names)


def _check_path(path: str | None, field: str, *, reference: bool = False) -> None:
    if path is None:
        return
    try:
        context, steps = jsonpath.parse(path)
    except jsonpath.PathError as exc:
        raise ValueError(f"{field}: {exc}") from None
    if reference and (context or not jsonpath.is_definite(steps)):
        raise ValueError(f"{field} {path!r} must be a Reference Path: fields and indexes from '$'")


def _check_template(template: Any, field: str) -> None:
    for value in templates.expressions(template):
        try:
            # A call is checked now; a path when it is read (a malformed one fails the state with States.Runtime).
            if intrinsics.is_intrinsic(value):
                intrinsics.parse(value)
            elif not (isinstance(value, str) and value.startswith("$")):
                raise ValueError(f"{value!r}: a '.$' field takes a path or an intrinsic function")
        except jsonpath.PathError as exc:
            raise ValueError(f"{field}: {exc}") from None


class _Flow(_Strict):
    """What every state but Fail has: a transition, and the input and output paths."""

    Comment: str | None = None
    Next: str | None = None
    End: bool | None = None
    InputPath: str | None = Field("$", description="Selects the effective input; null gives {}.")
    OutputPath: str | None = Field("$", description="Selects the output; null gives {}.")

    @model_validator(mode="after")
    def _next_or_end(self) -> "_Flow":
        if bool(self.Next) == bool(self.End):
            raise ValueError("exactly one of Next and End must be set")
        _check_path(self.InputPath, "InputPath")
        _check_path(self.OutputPath, "OutputPath")
        _check_path(getattr(self, "ResultPath", None), "ResultPath", reference=True)
        _check_template(getattr(self, "Parameters", None), "Parameters")
        _check_template(getattr(self, "ResultSelector", None), "ResultSelector")
        return self


def _check_ordering(entries: list[Any], kind: str) -> None:
    for i, entry in enumerate(entries):
        if ALL in entry.ErrorEquals and i != len(entries) - 1:
            raise ValueError(f"States.ALL must be in the last {kind}")


class ReconcilePolicy(_Strict):
    """Extension: a Task with side effects asks once more (same command, same idempotency keys) when it timed out
    and no retrier applies, so a step that took effect while its answer was lost proceeds instead of compensating."""

    TimeoutSeconds: float = Field(gt=0, description="How long the reconcile waits for its answer.")
    Comment: str | None = None


class TaskState(_Flow):
    """Send a command to a service and wait for its reply."""

    Type: Literal["Task"]
    Resource: str = Field(
        description="'<service>.<Command>': routing key of the command (the resource map binds the file's ARN)."
    )
    Integration: Literal["lambda:invoke"] | None = Field(
        None,
        description="Set when the file used arn:aws:states:::lambda:invoke: Parameters hold the Payload and the "
        "result reads as Lambda's, {'Payload': <reply>, 'StatusCode': 200}.",
    )
    Parameters: dict[str, Any] | None = Field(None, description="The command's payload; without: the input.")
    ResultSelector: dict[str, Any] | None = None
    ResultPath: str | None = "$"
    TimeoutSeconds: float = Field(60, gt=0)
    Retry: list[Retrier] = Field(default_factory=list)
    Catch: list[Catcher] = Field(default_factory=list)
    Compensation: bool = Field(
        False, description="Extension: the task undoes an earlier step (a release, a refund); only metrics read it."
    )
    Reconcile: ReconcilePolicy | None = Field(
        None, description="Extension: ask again once after a final States.Timeout, before the Catch applies."
    )

    @model_validator(mode="after")
    def _tables(self) -> "TaskState":
        _check_ordering(self.Retry, "retrier")
        _check_ordering(self.Catch, "catcher")
        if "." not in self.Resource:
            raise ValueError("Resource must be '<service>.<Command>'")
        if self.Reconcile is not None and self.Compensation:
            raise ValueError("Reconcile is for forward steps; a Compensation's own Retry asks again")
        return self

    @property
    def service(self) -> str:
        return self.Resource.split(".", 1)[0]

    @property
    def command(self) -> str:
        return self.Resource.split(".", 1)[1]


class PassState(_Flow):
    Type: Literal["Pass"]
    Parameters: Any = None
    Result: Any = None
    ResultPath: str | None = "$"


class SucceedState(_Strict):
    Type: Literal["Succeed"]
    Status: str | None = Field(None, description="Extension: the order's terminal status.")
    Comment: str | None = None
    InputPath: str | None = "$"
    OutputPath: str | None = "$"


class FailState(_Strict):
    Type: Literal["Fail"]
    Status: str | None = Field(None, description="Extension: the order's terminal status.")
    Error: str | None = None
    Cause: str | None = None
    ErrorPath: str | None = None
    CausePath: str | None = None
    Comment: str | None = None


class WaitState(_Flow):
    """Wait for a time (Seconds, SecondsPath) or until one (Timestamp, TimestampPath), on a durable timer."""

    Type: Literal["Wait"]
    Seconds: int | None = Field(None, ge=0)
    Timestamp: str | None = None
    SecondsPath: str | None = None
    TimestampPath: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> "WaitState":
        given = [f for f in ("Seconds", "Timestamp", "SecondsPath", "TimestampPath") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError("a Wait state takes exactly one of Seconds, Timestamp, SecondsPath, TimestampPath")
        if self.Timestamp is not None and parse_timestamp(self.Timestamp) is None:
            raise ValueError(f"Timestamp {self.Timestamp!r} is not an RFC 3339 timestamp")
        _check_path(self.SecondsPath, "SecondsPath", reference=False)
        _check_path(self.TimestampPath, "TimestampPath", reference=False)
        return self


class ChoiceState(_Strict):
    """Go to the Next of the first rule that holds for the effective input, else to Default; with neither,
    fail with States.NoChoiceMatched. Rules are kept as written (orchestrator.asl.choice checks them)."""

    Type: Literal["Choice"]
    Choices: list[dict[str, Any]] = Field(min_length=1)
    Default: str | None = None
    InputPath: str | None = "$"
    OutputPath: str | None = "$"
    Comment: str | None = None

    @model_validator(mode="after")
    def _rules(self) -> "ChoiceState":
        for i, rule in enumerate(self.Choices):
            choice.check(rule, top=True, where=f"Choices[{i}]")
        _check_path(self.InputPath, "InputPath")
        _check_path(self.OutputPath, "OutputPath")
        return self


class Branch(_Strict):
    StartAt: str
    States: dict[str, "AnyState"]
    Comment: str | None = None


class ParallelState(_Flow):
    """Run branches side by side. Extension: TimeoutSeconds, and every branch runs to its end."""

    Type: Literal["Parallel"]
    Branches: list[Branch] = Field(min_length=1)
    Parameters: dict[str, Any] | None = None
    ResultSelector: dict[str, Any] | None = None
    ResultPath: str | None = "$"
    TimeoutSeconds: float | None = Field(None, gt=0)
    Retry: list[Retrier] = Field(default_factory=list)
    Catch: list[Catcher] = Field(default_factory=list)

    @model_validator(mode="after")
    def _tables(self) -> "ParallelState":
        _check_ordering(self.Catch, "catcher")
        if self.Retry:
            raise ValueError("Retry on a Parallel state is not supported; retry inside its branches")
        return self


class MapProcessorConfig(_Strict):
    Mode: Literal["INLINE"] = "INLINE"


class MapProcessor(_Strict):
    """The states each item runs through (``Iterator`` in older definitions)."""

    StartAt: str
    States: dict[str, "AnyState"]
    ProcessorConfig: MapProcessorConfig | None = None
    Comment: str | None = None


class MapState(_Flow):
    """Run the ItemProcessor once per item of ItemsPath, at most MaxConcurrency at a time (0: all at once); the
    result is the list of the iterations' outputs, in item order. Inline mode; it may nest (MAX_GROUP_DEPTH)."""

    Type: Literal["Map"]
    ItemProcessor: MapProcessor | None = None
    Iterator: MapProcessor | None = None
    ItemsPath: str | None = "$"
    ItemSelector: dict[str, Any] | None = None
    Parameters: dict[str, Any] | None = Field(None, description="The older name of ItemSelector.")
    MaxConcurrency: int = Field(0, ge=0)
    ResultSelector: dict[str, Any] | None = None
    ResultPath: str | None = "$"
    Retry: list[Retrier] = Field(default_factory=list)
    Catch: list[Catcher] = Field(default_factory=list)

    @model_validator(mode="after")
    def _shape(self) -> "MapState":
        if (self.ItemProcessor is None) == (self.Iterator is None):
            raise ValueError("a Map state takes exactly one of ItemProcessor and Iterator")
        if self.ItemSelector is not None and self.Parameters is not None:
            raise ValueError("ItemSelector and Parameters are the same field: give one")
        _check_ordering(self.Catch, "catcher")
        _check_path(self.ItemsPath, "ItemsPath")
        _check_template(self.ItemSelector, "ItemSelector")
        if self.Retry:
            raise ValueError("Retry on a Map state is not supported; retry inside its ItemProcessor")
        return self

    @property
    def processor(self) -> MapProcessor:
        processor = self.ItemProcessor or self.Iterator
        assert processor is not None
        return processor

    @property
    def selector(self) -> dict[str, Any] | None:
        return self.ItemSelector if self.ItemSelector is not None else self.Parameters


AnyState = Annotated[
    TaskState | PassState | SucceedState | FailState | ParallelState | ChoiceState | WaitState | MapState,
    Field(discriminator="Type"),
]
Branch.model_rebuild()
MapProcessor.model_rebuild()


class Workflow(_Strict):
    Comment: str | None = None
    StartAt: str
    States: dict[str, AnyState]
    Version: str = "1.0"

    @model_validator(mode="after")
    def _links(self) -> "Workflow":
        _check_links("", self.StartAt, self.States)
        _check_depth(self.States)
        return self

    def state(self, path: str) -> AnyState:
        """Look up a state by its path: 'Name' at top level, 'Parallel/0/Name' inside a branch, 'Map/3/Name'
        inside the Map's ItemProcessor (for its item 3)."""
        parts = path.split("/")
        states: dict[str, AnyState] = self.States
        while len(parts) > 1:
            outer = states[parts[0]]
            if isinstance(outer, MapState):
                states = outer.processor.States
            else:
                assert isinstance(outer, ParallelState)
                states = outer.Branches[int(parts[1])].States
            parts = parts[2:]
        return states[parts[0]]


def inner_states(state: Any) -> list[dict[str, AnyState]]:
    """The state maps nested directly in ``state``: a Parallel's branches, a Map's ItemProcessor."""
    if isinstance(state, ParallelState):
        return [branch.States for branch in state.Branches]
    if isinstance(state, MapState):
        return [state.processor.States]
    return []


def all_states(states: dict[str, AnyState]) -> Iterator[tuple[str, AnyState]]:
    """Every state, at any depth (inside Parallel branches and Map processors), with its name."""
    for name, state in states.items():
        yield name, state
        for nested in inner_states(state):
            yield from all_states(nested)


def _check_links(where: str, start: str, states: dict[str, Any]) -> None:
    if start not in states:
        raise ValueError(f"{where}StartAt {start!r} is not a state")
    for name, state in states.items():
        targets = [getattr(state, "Next", None)] + [c.Next for c in getattr(state, "Catch", [])]
        if isinstance(state, ChoiceState):
            targets += [rule["Next"] for rule in state.Choices] + [state.Default]
        for target in targets:
            if target is not None and target not in states:
                raise ValueError(f"{where}{name}: Next {target!r} is not a state")
        if isinstance(state, ParallelState):
            for i, branch in enumerate(state.Branches):
                _check_links(f"{where}{name}/Branches[{i}]: ", branch.StartAt, branch.States)
        if isinstance(state, MapState):
            _check_links(f"{where}{name}/ItemProcessor: ", state.processor.StartAt, state.processor.States)


def _check_depth(states: dict[str, Any], where: str = "", depth: int = 1) -> None:
    """Parallel and Map nest up to MAX_GROUP_DEPTH deep: each level adds '.<i>' to its lanes' keys (saga_timer's
    lane) and a level of lanes to the stored state."""
    for name, state in states.items():
        inner = inner_states(state)
        if inner and depth > MAX_GROUP_DEPTH:
            raise ValueError(
                f"{where}{name}: a {state.Type} nested {depth} deep; Parallel and Map nest at most "
                f"{MAX_GROUP_DEPTH} deep"
            )
        for nested in inner:
            _check_depth(nested, f"{where}{name}/", depth + 1)


def parse(
    document: dict[str, Any],
    *,
    extensions: dict[str, Any] | None = None,
    resources: asl_resources.ResourceMap | None = None,
) -> Workflow:
    """Bind and validate a definition document; every mistake is reported with its location.

    ``extensions`` is the sidecar's content; ``resources`` the resource map (default: orchestrator/resources.json).
    """
    try:
        bound = asl_extensions.bind(
            document, resources or asl_resources.default_map(), asl_extensions.read_extensions(extensions)
        )
    except ValueError as exc:
        raise DefinitionError(f"invalid workflow definition: {exc}") from None
    try:
        return Workflow.model_validate(bound)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if not str(p).endswith('State')) or '<root>'}: "
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise DefinitionError(f"invalid workflow definition: {problems}") from None


def load(path: Path = DEFINITION_FILE, *, resources: asl_resources.ResourceMap | None = None) -> Workflow:
    """A definition file with its sidecar (``<name>.orderflow.json``, when there is one)."""
    sidecar = asl_extensions.sidecar_of(path)
    extensions = json.loads(sidecar.read_text()) if sidecar.exists() else None
    return parse(json.loads(path.read_text()), extensions=extensions, resources=resources)


def engine_document(path: Path = DEFINITION_FILE) -> dict[str, Any]:
    """The definition at ``path`` in the engine's form, as a plain document: what tests copy and change a number
    of (a timeout, a reconcile) before writing it where a process reads its WORKFLOW_FILE."""
    return load(path).model_dump(mode="json", exclude_unset=True)
