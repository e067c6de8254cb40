"""Stripe's list endpoints: newest first, ``limit``, cursors, ``created`` ranges.

``GET /v1/payment_intents`` and ``GET /v1/refunds`` answer ``{"object": "list", "data": [...],
"has_more": ..., "url": ...}`` like api.stripe.com, so the SDK's ``list_async`` and its
``auto_paging_iter`` walk them page by page with ``starting_after``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import invalid, no_such
from .forms import to_int
from .store import Obj, Store

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
_RANGE = {"gt": int.__gt__, "gte": int.__ge__, "lt": int.__lt__, "lte": int.__le__}


def page_limit(params: dict[str, Any]) -> int:
    """``limit``: 1 to 100, 10 when absent, with Stripe's wording for a bad one."""
    limit = to_int(params, "limit")
    if limit is None:
        return DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid(f"Invalid limit: must be between 1 and {MAX_LIMIT}", param="limit")
    return limit


def created_matches(obj: Obj, params: dict[str, Any]) -> bool:
    """``created=<ts>`` or ``created[gt|gte|lt|lte]=<ts>``."""
    created = params.get("created")
    if created is None or created == "":
        return True
    if not isinstance(created, dict):
        return obj["created"] == to_int(params, "created")
    for op in created:
        if op not in _RANGE:
            raise invalid(f"Invalid created[{op}]", param="created")
        if not _RANGE[op](obj["created"], to_int(created, op)):
            return False
    return True


def newest_first(objects: Iterable[Obj]) -> list[Obj]:
    """Stripe lists newest first; the store keeps insertion order, which breaks ties of one second."""
    return list(reversed(list(objects)))


def list_page(store: Store, objects: list[Obj], params: dict[str, Any], *, url: str, noun: str) -> Obj:
    """One page of ``objects`` (already filtered, newest first) after ``starting_after`` or before
    ``ending_before``."""
    limit = page_limit(params)
    ids = [o["id"] for o in objects]

    def position(param: str) -> int:
        cursor = str(params[param])
        if cursor not in ids:
            raise no_such(noun, cursor, param=param)
        return ids.index(cursor)

    if params.get("starting_after"):
        start = position("starting_after") + 1
        chosen, has_more = objects[start : start + limit], start + limit < len(objects)
    elif params.get("ending_before"):
        end = position("ending_before")
        start = max(0, end - limit)
        chosen, has_more = objects[start:end], start > 0
    else:
        chosen, has_more = objects[:limit], limit < len(objects)
    return {"object": "list", "data": [store.view(o) for o in chosen], "has_more": has_more, "url": url}
