"""ASL paths: JSONPath as Step Functions reads it, over JSON values (dicts, lists, scalars).

A *Path* (InputPath, OutputPath, ItemsPath, a '.$' value) may select many nodes
(``$.items[*].sku``, ``$.a[0:2]``, ``$..price``): it then yields a list. A *Reference
Path* (ResultPath) names one node by fields and indexes only. ``$$`` reads the
context object (``$$.Map.Item.Value``, ``$$.Execution.Id``) instead of the input.
"""

import copy
import re
from dataclasses import dataclass
from typing import Any

_NAME = re.compile(r"[^.\[\]\s]+")
_SLICE = re.compile(r"^(-?\d*):(-?\d*)(?::(-?\d+))?$")


class PathError(ValueError):
    """A path that is malformed or does not resolve (States.Runtime in Step Functions)."""


@dataclass(frozen=True)
class Step:
    kind: str  # "field", "index", "wildcard", "slice", "union", "descend"
    value: Any = None


def parse(path: str) -> tuple[bool, list[Step]]:
    """(reads the context object, steps). Raises PathError for a malformed path."""
    if not isinstance(path, str) or not path.startswith("$"):
        raise PathError(f"path {path!r} must start with '$.'")
    context = path.startswith("$$")
    rest = path[2:] if context else path[1:]
    steps: list[Step] = []
    i = 0
    while i < len(rest):
        if rest.startswith("..", i):
            match = _NAME.match(rest, i + 2)
            if not match:
                raise PathError(f"path {path!r}: '..' must be followed by a field name")
            steps.append(Step("descend", match.group()))
            i = match.end()
        elif rest[i] == ".":
            if rest.startswith(".*", i):
                steps.append(Step("wildcard"))
                i += 2
                continue
            match = _NAME.match(rest, i + 1)
            if not match:
                raise PathError(f"path {path!r}: a field name must follow '.'")
            steps.append(Step("field", match.group()))
            i = match.end()
        elif rest[i] == "[":
            end = _closing(rest, i, path)
            steps.append(_bracket(rest[i + 1 : end].strip(), path))
            i = end + 1
        else:
            raise PathError(f"path {path!r} must start with '$.'")
    return context, steps


def _closing(text: str, start: int, path: str) -> int:
    quote = None
    for j in range(start + 1, len(text)):
        char = text[j]
        if quote:
            if char == quote and text[j - 1] != "\\":
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "]":
            return j
    raise PathError(f"path {path!r}: '[' without ']'")


def _bracket(inner: str, path: str) -> Step:
    if inner == "*":
        return Step("wildcard")
    if inner[:1] in "'\"" and inner[-1:] == inner[:1] and len(inner) >= 2:
        return Step("field", inner[1:-1].replace("\\" + inner[0], inner[0]))
    if inner.startswith("?"):
        raise PathError(f"path {path!r}: filter expressions are not supported")
    slice_match = _SLICE.match(inner)
    if slice_match:
        start, stop, step = (int(g) if g else None for g in slice_match.groups())
        return Step("slice", slice(start, stop, step))
    try:
        if "," in inner:
            return Step("union", tuple(int(part) for part in inner.split(",")))
        return Step("index", int(inner))
    except ValueError:
        raise PathError(f"path {path!r}: list indexes must be integers") from None


def is_definite(steps: list[Step]) -> bool:
    return all(step.kind in ("field", "index") for step in steps)


def select(data: Any, path: str, context: Any = None) -> Any:
    """The value at ``path``: one node for a definite path (PathError when absent), else the list of matches."""
    reads_context, steps = parse(path)
    root = context if reads_context else data
    if reads_context and context is None:
        raise PathError(f"path {path!r}: no context object here")
    if is_definite(steps):
        value = root
        for step in steps:
            value = _child(value, step, path)
        return value
    nodes = [root]
    for step in steps:
        nodes = [found for node in nodes for found in _children(node, step)]
    return nodes


def _child(value: Any, step: Step, path: str) -> Any:
    # Python would index into a string ('$.orderId[0]' -> 'O'); JSONPath does not.
    if step.kind == "field" and isinstance(value, dict) and step.value in value:
        return value[step.value]
    if step.kind == "index" and isinstance(value, list) and -len(value) <= step.value < len(value):
        return value[step.value]
    raise PathError(f"path {path!r} does not resolve")


def _children(node: Any, step: Step) -> list[Any]:
    if step.kind == "field":
        return [node[step.value]] if isinstance(node, dict) and step.value in node else []
    if step.kind == "index":
        ok = isinstance(node, list) and -len(node) <= step.value < len(node)
        return [node[step.value]] if ok else []
    if step.kind == "wildcard":
        return list(node.values()) if isinstance(node, dict) else list(node) if isinstance(node, list) else []
    if step.kind == "slice":
        return node[step.value] if isinstance(node, list) else []
    if step.kind == "union":
        return [node[i] for i in step.value if isinstance(node, list) and -len(node) <= i < len(node)]
    found: list[Any] = []  # descend: every field of that name, at any depth
    if isinstance(node, dict):
        if step.value in node:
            found.append(node[step.value])
        for child in node.values():
            found.extend(_children(child, step))
    elif isinstance(node, list):
        for child in node:
            found.extend(_children(child, step))
    return found


def put(data: Any, path: str, value: Any) -> Any:
    """A copy of ``data`` with ``value`` at the Reference Path ``path`` ('$' replaces it); missing fields are
    created. Raises PathError when the path crosses a value that is not an object (States.ResultPathMatchFailure)."""
    reads_context, steps = parse(path)
    if reads_context or not is_definite(steps):
        raise PathError(f"ResultPath {path!r} must be a Reference Path: fields and indexes from '$'")
    if not steps:
        return copy.deepcopy(value)
    result = copy.deepcopy(data)
    node = result
    for step, following in zip(steps, steps[1:] + [None], strict=True):
        last = following is None
        if step.kind == "field":
            if not isinstance(node, dict):
                raise PathError(f"ResultPath {path!r} does not match the input: {step.value!r} is not in an object")
            if last:
                node[step.value] = value
            else:
                node = node.setdefault(step.value, {})
        else:
            if not isinstance(node, list) or not -len(node) <= step.value < len(node):
                raise PathError(f"ResultPath {path!r} does not match the input: no item {step.value}")
            if last:
                node[step.value] = value
            else:
                node = node[step.value]
    return result
