"""Stripe's search query language, for ``GET /v1/payment_intents/search``.

The subset real clients use to find their objects: clauses ``field:value`` (exact match),
``metadata['key']:'value'``, numeric ``amount>1000`` / ``created<=...``, a leading ``-`` to
negate, joined by ``AND`` or by ``OR`` (Stripe does not allow both in one query). Values are
quoted with ``'`` or ``"``; a backslash escapes the quote. Answers are Stripe's
``{"object": "search_result", "data", "has_more", "next_page", "url"}``, paged by the opaque
``page`` token the previous page returned.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from .errors import ApiError, invalid
from .listing import page_limit
from .store import Obj, Store

#: Searchable PaymentIntent fields (Stripe's list): name -> numeric?
PAYMENT_INTENT_FIELDS = {"amount": True, "created": True, "currency": False, "customer": False, "status": False}

_CLAUSE = re.compile(
    r"""(?P<neg>-)?
        (?:metadata\[(?P<kq>['"])(?P<key>(?:\\.|(?!(?P=kq)).)*)(?P=kq)\]|(?P<field>[a-z_]+))
        (?P<op>:|>=|<=|>|<)
        (?P<value>'(?:\\.|[^'\\])*'|"(?:\\.|[^"\\])*"|[^\s'"]+)""",
    re.VERBOSE,
)
_JOIN = re.compile(r"\s+(AND|OR)\s+")
_ESCAPE = re.compile(r"\\(.)")


@dataclass(frozen=True)
class Clause:
    field: str  # "metadata" for metadata clauses
    key: str | None
    op: str
    value: str
    negate: bool

    def matches(self, obj: Obj) -> bool:
        if self.key is not None:
            found = (obj.get("metadata") or {}).get(self.key) == self.value
        elif self.op == ":":
            found = str(obj.get(self.field)) == self.value if obj.get(self.field) is not None else False
        else:
            actual = obj.get(self.field)
            found = isinstance(actual, int) and _compare(actual, self.op, int(self.value))
        return found != self.negate


def _compare(actual: int, op: str, value: int) -> bool:
    return {">": actual > value, ">=": actual >= value, "<": actual < value, "<=": actual <= value}[op]


def _unquote(raw: str) -> str:
    if raw[:1] in ("'", '"'):
        raw = raw[1:-1]
    return _ESCAPE.sub(r"\1", raw)


def _bad_query(query: str, why: str) -> ApiError:
    return invalid(f"Invalid query: {why} (query: {query!r}).", param="query", code="parameter_invalid_string")


def parse(query: str, fields: dict[str, bool]) -> tuple[list[Clause], str]:
    """The clauses of ``query`` and how they join ("AND" or "OR")."""
    text, pos, clauses, joins = query.strip(), 0, [], set()
    if not text:
        raise _bad_query(query, "empty")
    while True:
        match = _CLAUSE.match(text, pos)
        if match is None:
            raise _bad_query(query, f"cannot parse at position {pos}")
        field = match["field"] or "metadata"
        if match["field"] is not None and field not in fields:
            raise _bad_query(query, f"field `{field}` is an unsupported search field")
        value = _unquote(match["value"])
        if match["op"] != ":" and not (fields.get(field) and value.lstrip("-").isdigit()):
            raise _bad_query(query, f"`{match['op']}` needs a numeric field and an integer")
        key = _ESCAPE.sub(r"\1", match["key"]) if match["key"] is not None else None
        clauses.append(Clause(field, key, match["op"], value, bool(match["neg"])))
        pos = match.end()
        if pos == len(text):
            break
        join = _JOIN.match(text, pos)
        if join is None:
            raise _bad_query(query, f"expected AND or OR at position {pos}")
        joins.add(join[1])
        pos = join.end()
    if len(joins) > 1:
        raise _bad_query(query, "AND and OR cannot be combined")
    return clauses, joins.pop() if joins else "AND"


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def _offset(page: str) -> int:
    try:
        offset = json.loads(base64.urlsafe_b64decode(page.encode()))["offset"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise invalid("Invalid page token.", param="page") from exc
    if not isinstance(offset, int) or offset < 0:
        raise invalid("Invalid page token.", param="page")
    return offset


def search_page(store: Store, objects: list[Obj], params: dict[str, Any], *, url: str, fields: dict[str, bool]) -> Obj:
    """One page of the ``objects`` (newest first) that match ``params["query"]``."""
    query = params.get("query")
    if not query:
        raise invalid("Missing required param: query.", param="query", code="parameter_missing")
    clauses, join = parse(str(query), fields)
    combine = all if join == "AND" else any
    found = [o for o in objects if combine(c.matches(o) for c in clauses)]
    limit = page_limit(params)
    start = _offset(str(params["page"])) if params.get("page") else 0
    has_more = start + limit < len(found)
    result: Obj = {
        "object": "search_result",
        "data": [store.view(o) for o in found[start : start + limit]],
        "has_more": has_more,
        "next_page": _token(start + limit) if has_more else None,
        "url": url,
    }
    expand = params.get("expand") or []
    if "total_count" in (expand if isinstance(expand, list) else [expand]):
        result["total_count"] = len(found)
    return result
