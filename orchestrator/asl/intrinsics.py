"""ASL intrinsic functions: ``States.Format('{}-release', $.orderId)`` and the rest, evaluated purely.

Arguments are string literals ('...', with \\' \\{ \\} \\\\ escapes), numbers, true,
false, null, paths into the input or the context object, and nested intrinsic calls.
A call that cannot be evaluated raises IntrinsicError (States.IntrinsicFailure); a
path argument that does not resolve raises PathError (States.Runtime).
"""

import base64
import hashlib
import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.asl.jsonpath import PathError, select

INTRINSIC_FAILURE = "States.IntrinsicFailure"


class IntrinsicError(PathError):
    """An intrinsic function call that is malformed or fails on its arguments."""


@dataclass
class Scope:
    """What an expression reads: the input, the context object, and the engine's ids and randomness."""

    data: Any
    context: Any = None
    new_uuid: Callable[[], str] = field(default=lambda: str(uuid.uuid4()))
    rng: random.Random = field(default_factory=random.Random)


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class PathArg:
    path: str


def is_intrinsic(expression: Any) -> bool:
    return isinstance(expression, str) and expression.startswith("States.")


def parse(expression: str) -> Call:
    """Parse one call; IntrinsicError names what is wrong."""
    call, end = _call(expression, 0)
    if expression[end:].strip():
        raise IntrinsicError(f"{expression!r}: unexpected text after the call: {expression[end:]!r}")
    return call


def _call(text: str, i: int) -> tuple[Call, int]:
    open_paren = text.find("(", i)
    if open_paren < 0:
        raise IntrinsicError(f"{text!r}: an intrinsic function needs '(...)'")
    name = text[i:open_paren].strip()
    if name not in FUNCTIONS:
        raise IntrinsicError(f"{text!r}: {name!r} is not a supported intrinsic function")
    args: list[Any] = []
    i = _skip(text, open_paren + 1)
    if i < len(text) and text[i] == ")":
        return Call(name, ()), i + 1
    while True:
        arg, i = _argument(text, _skip(text, i))
        args.append(arg)
        i = _skip(text, i)
        if i >= len(text):
            raise IntrinsicError(f"{text!r}: missing ')'")
        if text[i] == ")":
            return Call(name, tuple(args)), i + 1
        if text[i] != ",":
            raise IntrinsicError(f"{text!r}: expected ',' or ')' at {text[i:]!r}")
        i += 1


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _argument(text: str, i: int) -> tuple[Any, int]:
    if text.startswith("States.", i):
        return _call(text, i)
    if i < len(text) and text[i] == "'":
        out, j = [], i + 1
        while j < len(text):
            if text[j] == "\\" and j + 1 < len(text):
                out.append(text[j : j + 2] if text[j + 1] in "{}" else text[j + 1])
                j += 2
            elif text[j] == "'":
                return "".join(out), j + 1
            else:
                out.append(text[j])
                j += 1
        raise IntrinsicError(f"{text!r}: unterminated string")
    j, depth, quote = i, 0, None
    while j < len(text):
        char = text[j]
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"" and depth:
            quote = char
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif depth == 0 and char in ",)":
            break
        j += 1
    token = text[i:j].strip()
    if token.startswith("$"):
        return PathArg(token), j
    try:
        return json.loads(token), j
    except json.JSONDecodeError:
        raise IntrinsicError(f"{text!r}: {token!r} is not a string, number, boolean, null, path or call") from None


def evaluate(expression: str, scope: Scope) -> Any:
    return _apply(parse(expression), scope, expression)


def _apply(call: Call, scope: Scope, expression: str) -> Any:
    args = [_value(arg, scope, expression) for arg in call.args]
    try:
        return FUNCTIONS[call.name](scope, *args)
    except IntrinsicError as exc:
        raise IntrinsicError(f"{call.name} in {expression!r}: {exc}") from None
    except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError) as exc:
        raise IntrinsicError(f"{call.name} in {expression!r}: {exc}") from None


def _value(arg: Any, scope: Scope, expression: str) -> Any:
    if isinstance(arg, Call):
        return _apply(arg, scope, expression)
    if isinstance(arg, PathArg):
        return select(scope.data, arg.path, scope.context)
    return arg


# -- the functions ---------------------------------------------------------------------------
def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _format(scope: Scope, template: str, *args: Any) -> str:
    if not isinstance(template, str):
        raise IntrinsicError("the template must be a string")
    pieces, current, i = [], [], 0
    while i < len(template):  # '\{' and '\}' are literal braces; '{}' a placeholder
        if template[i] == "\\" and template[i + 1 : i + 2] in ("{", "}"):
            current.append(template[i + 1])
            i += 2
        elif template.startswith("{}", i):
            pieces.append("".join(current))
            current = []
            i += 2
        else:
            current.append(template[i])
            i += 1
    pieces.append("".join(current))
    if len(pieces) != len(args) + 1:
        raise IntrinsicError(f"{len(pieces) - 1} placeholders for {len(args)} arguments")
    # Non-string arguments are rendered as JSON (true, null), as Step Functions does, not as Python (True, None).
    rendered = [arg if isinstance(arg, str) else _json(arg) for arg in args]
    return pieces[0] + "".join(text + piece for text, piece in zip(rendered, pieces[1:], strict=True))


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise IntrinsicError(f"{what} must be an integer, not {_json(value)}")
    return int(value)


def _list(value: Any, what: str = "the argument") -> list[Any]:
    if not isinstance(value, list):
        raise IntrinsicError(f"{what} must be an array, not {_json(value)}")
    return value


def _text(value: Any, what: str = "the argument") -> str:
    if not isinstance(value, str):
        raise IntrinsicError(f"{what} must be a string, not {_json(value)}")
    return value


def _partition(scope: Scope, items: Any, size: Any) -> list[list[Any]]:
    items, size = _list(items), _int(size, "the chunk size")
    if size <= 0:
        raise IntrinsicError("the chunk size must be above 0")
    return [items[i : i + size] for i in range(0, len(items), size)]


def _range(scope: Scope, start: Any, end: Any, step: Any) -> list[int]:
    start, end, step = _int(start, "start"), _int(end, "end"), _int(step, "step")
    if step == 0:
        raise IntrinsicError("the step must not be 0")
    values = list(range(start, end + (1 if step > 0 else -1), step))
    if len(values) > 1000:
        raise IntrinsicError("at most 1000 items")
    return values


def _unique(scope: Scope, items: Any) -> list[Any]:
    seen: list[Any] = []
    for item in _list(items):
        if item not in seen:
            seen.append(item)
    return seen


def _merge(scope: Scope, left: Any, right: Any, deep: Any) -> dict[str, Any]:
    if deep is not False:
        raise IntrinsicError("only a shallow merge (false) is supported, as in Step Functions")
    if not isinstance(left, dict) or not isinstance(right, dict):
        raise IntrinsicError("both arguments must be objects")
    return {**left, **right}


def _hash(scope: Scope, value: Any, algorithm: Any) -> str:
    names = {"MD5": "md5", "SHA-1": "sha1", "SHA-256": "sha256", "SHA-384": "sha384", "SHA-512": "sha512"}
    if algorithm not in names:
        raise IntrinsicError(f"the algorithm must be one of {sorted(names)}")
    data = value if isinstance(value, str) else _json(value)
    return hashlib.new(names[algorithm], data.encode()).hexdigest()


def _random(scope: Scope, start: Any, end: Any, seed: Any = None) -> int:
    rng = random.Random(_int(seed, "the seed")) if seed is not None else scope.rng
    return rng.randint(_int(start, "start"), _int(end, "end"))


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "States.Format": _format,
    "States.StringToJson": lambda scope, text: json.loads(_text(text)),
    "States.JsonToString": lambda scope, value: _json(value),
    "States.Array": lambda scope, *items: list(items),
    "States.ArrayPartition": _partition,
    "States.ArrayContains": lambda scope, items, value: value in _list(items),
    "States.ArrayRange": _range,
    "States.ArrayGetItem": lambda scope, items, index: _list(items)[_int(index, "the index")],
    "States.ArrayLength": lambda scope, items: len(_list(items)),
    "States.ArrayUnique": _unique,
    "States.Base64Encode": lambda scope, text: base64.b64encode(_text(text).encode()).decode(),
    "States.Base64Decode": lambda scope, text: base64.b64decode(_text(text), validate=True).decode(),
    "States.Hash": _hash,
    "States.JsonMerge": _merge,
    "States.MathRandom": _random,
    "States.MathAdd": lambda scope, a, b: _int(a, "the first number") + _int(b, "the second number"),
    "States.StringSplit": lambda scope, text, by: [p for p in _split(_text(text), _text(by, "the delimiter")) if p],
    "States.UUID": lambda scope: scope.new_uuid(),
}


def _split(text: str, delimiters: str) -> list[str]:
    """Step Functions splits on any of the delimiter's characters."""
    parts, current = [], []
    for char in text:
        if char in delimiters:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts
