"""Which fields of a message carry text that can reach a header, found in the generated AsyncAPI document rather
than listed by hand: every string whose schema has the header-safe pattern (or the stricter orderId pattern). The
unit test and the end-to-end fuzz test (tests/e2e/test_poison.py) both put control characters into each."""

import copy
from typing import Any

from contracts import asyncapi
from contracts.base import ORDER_ID_PATTERN
from plumbing.envelope import HEADER_SAFE_PATTERN

DOC: dict[str, Any] = asyncapi.build()
GUARDED = {HEADER_SAFE_PATTERN, ORDER_ID_PATTERN}
#: C0 (CR and LF among them), DEL, C1 (NEL among them), and the Unicode line and paragraph separators.
FORBIDDEN = [chr(c) for c in range(0x20)] + ["\x7f"] + [chr(c) for c in range(0x80, 0xA0)] + ["\u2028", "\u2029"]


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" not in node:
        return node
    found: Any = DOC
    for part in node["$ref"][2:].split("/"):
        found = found[part]
    return found


def payload_schema(name: str) -> dict[str, Any]:
    return resolve(DOC["components"]["messages"][name]["payload"])


def _guarded(node: dict[str, Any]) -> bool:
    return any(resolve(option).get("pattern") in GUARDED for option in node.get("anyOf", [node]))


def header_bound_paths(name: str, sample: dict[str, Any]) -> list[tuple]:
    """Paths into ``sample`` (a valid ``name`` payload) of every header-bound string field, present or not."""
    found: list[tuple] = []

    def walk(schema: dict[str, Any], value: Any, path: tuple) -> None:
        schema = resolve(schema)
        if isinstance(value, dict):
            for key, prop in schema.get("properties", {}).items():
                if _guarded(prop):
                    found.append((*path, key))
                elif key in value:
                    option = next((o for o in prop.get("anyOf", [prop]) if o.get("type") != "null"), prop)
                    walk(option, value[key], (*path, key))
        elif isinstance(value, list) and value:
            walk(schema.get("items", {}), value[0], (*path, 0))

    walk(payload_schema(name), sample, ())
    return found


def value_at(body: dict[str, Any], path: tuple) -> Any:
    node: Any = body
    for step in path[:-1]:
        node = node[step]
    return node.get(path[-1])


def with_value(body: dict[str, Any], path: tuple, value: str) -> dict[str, Any]:
    body = copy.deepcopy(body)
    node: Any = body
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return body


def poisoned(sample: Any, before: str, control: str, after: str) -> str:
    """A field's value with ``control`` inside; an email keeps its @ and domain, so only the control is wrong."""
    text = sample if isinstance(sample, str) and sample else "x"
    if "@" in text:
        return text.replace("@", f"{before}{control}{after}@", 1)
    return f"{text[:4]}{before}{control}{after}"
