"""How a state's input becomes its effective input, and its result its output (ASL's input and output
processing): InputPath, then Parameters; on a result, ResultSelector, ResultPath, then OutputPath.

Errors carry ASL's names: a path that does not resolve is States.Runtime, an intrinsic
function that fails States.IntrinsicFailure, a ResultPath that cannot be placed in the
input States.ResultPathMatchFailure.
"""

from typing import Any

from orchestrator.asl import templates
from orchestrator.asl.intrinsics import IntrinsicError, Scope
from orchestrator.asl.jsonpath import PathError, put, select

RUNTIME = "States.Runtime"
INTRINSIC_FAILURE = "States.IntrinsicFailure"
RESULT_PATH_MATCH_FAILURE = "States.ResultPathMatchFailure"


class DataError(Exception):
    """Input or output processing failed; ``error`` is the ASL error name, the message its cause."""

    def __init__(self, error: str, cause: str) -> None:
        super().__init__(cause)
        self.error = error
        self.cause = cause


def _named(exc: PathError) -> DataError:
    return DataError(INTRINSIC_FAILURE if isinstance(exc, IntrinsicError) else RUNTIME, str(exc))


def path_of(data: Any, path: str | None, context: Any = None) -> Any:
    """InputPath and OutputPath: null gives {} (the state sees or passes on nothing)."""
    if path is None:
        return {}
    try:
        return select(data, path, context)
    except PathError as exc:
        raise _named(exc) from None


def effective_input(state: Any, raw: Any, scope: Scope) -> Any:
    """InputPath, then Parameters (a state without them passes its selected input as it is)."""
    data = path_of(raw, getattr(state, "InputPath", "$"), scope.context)
    parameters = getattr(state, "Parameters", None)
    if parameters is None:
        return data
    return template(parameters, Scope(data, scope.context, scope.new_uuid, scope.rng))


def template(value: Any, scope: Scope) -> Any:
    try:
        return templates.resolve(value, scope)
    except PathError as exc:
        raise _named(exc) from None


def output(state: Any, raw: Any, result: Any, scope: Scope) -> Any:
    """ResultSelector on the result, ResultPath into the raw input (null: the input unchanged), OutputPath."""
    selector = getattr(state, "ResultSelector", None)
    if selector is not None:
        result = template(selector, Scope(result, scope.context, scope.new_uuid, scope.rng))
    combined = place(raw, getattr(state, "ResultPath", "$"), result)
    return path_of(combined, getattr(state, "OutputPath", "$"), scope.context)


def place(raw: Any, result_path: str | None, value: Any) -> Any:
    if result_path is None:
        return raw
    try:
        return put(raw, result_path, value)
    except PathError as exc:
        raise DataError(RESULT_PATH_MATCH_FAILURE, str(exc)) from None
