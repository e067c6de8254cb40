"""The JSONPath subset the definition uses: reading '$.a.b', writing a ResultPath, resolving Parameters.

Parameters follow ASL: a key ending in '.$' takes its value from a path, or
from the intrinsic ``States.Format('{}-release', $.orderId)``.
"""

import copy
import json
import re
from typing import Any

_FORMAT = re.compile(r"^States\.Format\('((?:[^'\\]|\\.)*)'((?:\s*,\s*\$[\w.\[\]]*)*)\)$")


class PathError(ValueError):
    """A path does not resolve against the saga data (States.Runtime in Step Functions)."""


def _steps(path: str) -> list[str | int]:
    if path == "$":
        return []
    if not path.startswith("$."):
        raise PathError(f"path {path!r} must start with '$.'")
    steps: list[str | int] = []
    for part in path[2:].split("."):
        name, *indexes = part.split("[")
        if name:
            steps.append(name)
        try:
            steps.extend(int(i.rstrip("]")) for i in indexes)
        except ValueError:
            raise PathError(f"path {path!r}: list indexes must be integers") from None
    return steps


def get(data: Any, path: str) -> Any:
    value = data
    for step in _steps(path):
        if not isinstance(value, dict | list):
            # Python would index into a string ('$.orderId[0]' -> 'O'); JSONPath does not.
            raise PathError(f"path {path!r} does not resolve")
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            raise PathError(f"path {path!r} does not resolve") from None
    return value


def put(data: dict[str, Any], path: str | None, value: Any) -> dict[str, Any]:
    """Return a copy of ``data`` with ``value`` at ``path``; ``None`` discards, '$' replaces."""
    if path is None:
        return data
    steps = _steps(path)
    if not steps:
        return value if isinstance(value, dict) else {"value": value}
    result = copy.deepcopy(data)
    node: Any = result
    for step in steps[:-1]:
        if isinstance(step, str):
            node = node.setdefault(step, {})
        else:
            node = node[step]
    node[steps[-1]] = value
    return result


def resolve(template: Any, data: Any) -> Any:
    """Build a command payload from a Parameters template and the saga data."""
    if isinstance(template, dict):
        out: dict[str, Any] = {}
        for key, value in template.items():
            if key.endswith(".$"):
                out[key[:-2]] = _evaluate(value, data)
            else:
                out[key] = resolve(value, data)
        return out
    if isinstance(template, list):
        return [resolve(v, data) for v in template]
    return template


def _evaluate(expression: str, data: Any) -> Any:
    match = _FORMAT.match(expression)
    if match:
        pattern = match.group(1).replace("\\'", "'")
        args = [get(data, a.strip()) for a in match.group(2).split(",") if a.strip()]
        pieces = pattern.split("{}")
        if len(pieces) != len(args) + 1:
            raise PathError(f"{expression!r}: {len(pieces) - 1} placeholders for {len(args)} arguments")
        # Non-string arguments are rendered as JSON (true, null), as Step Functions does, not as Python (True, None).
        rendered = [arg if isinstance(arg, str) else json.dumps(arg) for arg in args]
        return pieces[0] + "".join(text + piece for text, piece in zip(rendered, pieces[1:], strict=True))
    return get(data, expression)
