"""Decoding of Stripe's form encoding and parameter coercion.

The SDK flattens nested params as ``metadata[orderId]=x`` and lists as
``payment_method_types[0]=card`` (``expand[]=x`` from hand-written clients),
and sends every scalar as a string.  Handlers want ordinary nested Python
values, and must reject malformed integers/booleans the way Stripe does.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from .errors import invalid, missing_param

_KEY_RE = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_NO_LISTS = {"metadata"}  # metadata[0]=x is a key named "0", not a list


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """Split a urlencoded body/query into ordered pairs, keeping blanks."""
    return parse_qsl(text, keep_blank_values=True)


def decode(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Turn flattened pairs into nested dicts/lists."""
    root: dict[str, Any] = {}
    for raw_key, value in pairs:
        match = _KEY_RE.match(raw_key)
        if not match:
            raise invalid(f"Invalid parameter name: {raw_key}")
        parts = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        node = root
        for part in parts[:-1]:
            child = node.setdefault(part or str(len(node)), {})
            if not isinstance(child, dict):
                raise invalid(f"Invalid parameter: {raw_key}", param=parts[0])
            node = child
        node[parts[-1] or str(len(node))] = value
    result: dict[str, Any] = _listify(root, None)
    return result


def _listify(value: Any, key: str | None) -> Any:
    if not isinstance(value, dict):
        return value
    converted = {k: _listify(v, k) for k, v in value.items()}
    if key not in _NO_LISTS and converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def to_int(params: dict[str, Any], name: str, *, required: bool = False, positive: bool = False) -> int | None:
    """Read an integer param, with Stripe's wording for bad input."""
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise missing_param(name)
        return None
    if isinstance(raw, bool) or not str(raw).lstrip("-").isdigit():
        raise invalid(f"Invalid integer: {raw}", param=name, code="parameter_invalid_integer")
    number = int(raw)
    if positive and number <= 0:
        raise invalid("This value must be greater than or equal to 1.", param=name)
    return number


def to_bool(params: dict[str, Any], name: str, default: bool = False) -> bool:
    """Read a boolean param sent as the strings ``true``/``false``."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        return raw
    if str(raw).lower() in {"true", "false"}:
        return str(raw).lower() == "true"
    raise invalid(f"Invalid boolean: {raw}", param=name)


def to_str_map(params: dict[str, Any], name: str) -> dict[str, str]:
    """Read a ``metadata``-style map (string values; "" means unset)."""
    raw = params.get(name)
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, dict):
        raise invalid(f"Invalid object: {name} must be a hash of key/value pairs.", param=name)
    return {str(k): str(v) for k, v in raw.items() if v != ""}


def to_enum(params: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str | None:
    """Read an enum param, rejecting values Stripe would reject."""
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if raw not in allowed:
        choices = ", ".join(allowed[:-1]) + f", or {allowed[-1]}"
        raise invalid(f"Invalid {name}: must be one of {choices}", param=name)
    return str(raw)
