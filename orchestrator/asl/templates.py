"""Payload templates (Parameters, ResultSelector, ItemSelector): a key ending in '.$' takes its value from a
path or an intrinsic function; every other value is copied, objects and arrays recursively."""

from typing import Any

from orchestrator.asl import intrinsics
from orchestrator.asl.intrinsics import Scope
from orchestrator.asl.jsonpath import PathError, select


def resolve(template: Any, scope: Scope) -> Any:
    if isinstance(template, dict):
        out: dict[str, Any] = {}
        for key, value in template.items():
            if key.endswith(".$"):
                out[key[:-2]] = expression(value, scope)
            else:
                out[key] = resolve(value, scope)
        return out
    if isinstance(template, list):
        return [resolve(value, scope) for value in template]
    return template


def expression(value: Any, scope: Scope) -> Any:
    """The value of one '.$' field: a path into the input ('$.x') or the context object ('$$.x'), or a call."""
    if intrinsics.is_intrinsic(value):
        return intrinsics.evaluate(value, scope)
    if isinstance(value, str) and value.startswith("$"):
        return select(scope.data, value, scope.context)
    raise PathError(f"{value!r}: a '.$' field takes a path or an intrinsic function")


def expressions(template: Any) -> list[str]:
    """Every '.$' value in a template, for checking them when the definition loads."""
    found: list[str] = []
    if isinstance(template, dict):
        for key, value in template.items():
            if key.endswith(".$"):
                found.append(value)
            else:
                found.extend(expressions(value))
    elif isinstance(template, list):
        for value in template:
            found.extend(expressions(value))
    return found
