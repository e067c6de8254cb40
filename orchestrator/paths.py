"""Paths and payload templates over the saga data, as the engine and its tests use them.

The ASL itself lives in orchestrator.asl (jsonpath, intrinsics, templates); this module
keeps the engine's three verbs: ``get`` a path, ``put`` a ResultPath, ``resolve`` a template.
"""

from typing import Any

from orchestrator.asl import jsonpath, templates
from orchestrator.asl.intrinsics import Scope
from orchestrator.asl.jsonpath import PathError

__all__ = ["PathError", "get", "put", "resolve"]


def get(data: Any, path: str, context: Any = None) -> Any:
    return jsonpath.select(data, path, context)


def put(data: Any, path: str | None, value: Any) -> Any:
    """Return a copy of ``data`` with ``value`` at ``path``; ``None`` discards, '$' replaces."""
    if path is None:
        return data
    return jsonpath.put(data, path, value)


def resolve(template: Any, data: Any, scope: Scope | None = None) -> Any:
    """Build a payload from a template and the data (``scope`` adds the context object, ids and randomness)."""
    if scope is None:
        scope = Scope(data)
    return templates.resolve(template, scope)
