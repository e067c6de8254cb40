"""The console's reads of the saga table: filtered listings with keyset pages and counts, one saga's detail.

Every value reaches PostgreSQL as a parameter; only fixed SQL fragments are joined. Pages are keyset pages on
(created_at, order_id), newest first (indexes in migration 0006), so a saga started while someone pages is
neither listed twice nor skipped, and a page deep down costs what the first one does. The cursor is opaque to
clients: the last row's key in URL-safe base64.
"""

import base64
import binascii
import json
from datetime import datetime
from typing import Any

import asyncpg

from orchestrator.api_models import SAGA_STATUSES, ListQuery, SagaFilter, SagaPage, SagaSummary


class BadCursor(ValueError):
    """A cursor this API did not make (or one mangled on the way)."""


def encode_cursor(created_at: datetime, order_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), order_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created_at, order_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(created_at), str(order_id)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise BadCursor("the cursor is not one this API made: start again without it") from exc


def like_escape(text: str) -> str:
    """``text`` as a literal inside a LIKE pattern (ESCAPE '\\'): its % and _ match only themselves."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class _Where:
    """A WHERE clause built from fixed fragments, with its values as numbered parameters."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.args: list[Any] = []

    def add(self, fragment: str, *values: Any) -> None:
        """``fragment`` with ``{}`` for each value's placeholder, e.g. ``status = ANY({}::text[])``."""
        placeholders = []
        for value in values:
            self.args.append(value)
            placeholders.append(f"${len(self.args)}")
        self.parts.append(fragment.format(*placeholders))

    def sql(self) -> str:
        return " AND ".join(self.parts) or "TRUE"


def _where(f: SagaFilter, *, with_status: bool = True) -> _Where:
    w = _Where()
    if with_status and f.status:
        w.add("status = ANY({}::text[])", list(f.status))
    if f.step:
        w.add("current_state = ANY({}::text[])", f.step)
    if f.error:
        # Any error the saga recorded, not only the one it ended with: its final error (error_name), or one in
        # its history (every TaskFailed, RetryScheduled, Caught, BranchFailed, ExecutionFailed names its error).
        # The EXISTS probes saga_history_error (migration 0010) per saga, or drives the query from it.
        w.add(
            """(error_name = ANY({0}::text[]) OR EXISTS (
                   SELECT 1 FROM saga_history h WHERE h.order_id = saga.order_id AND h.error = ANY({0}::text[])))""",
            f.error,
        )
    if f.product is not None:
        w.add("input -> 'items' @> {}::jsonb", [{"productId": f.product}])  # the jsonb codec encodes it
    if f.q is not None:
        w.add("order_id LIKE '%' || {} || '%' ESCAPE '\\'", like_escape(f.q))
    for column, low, high in (
        ("created_at", f.createdFrom, f.createdTo),
        ("updated_at", f.updatedFrom, f.updatedTo),
    ):
        if low is not None:
            w.add(f"{column} >= {{}}", low)
        if high is not None:
            w.add(f"{column} < {{}}", high)
    return w


_SUMMARY_COLUMNS = """order_id, status, current_state, state -> 'error' AS error, created_at, updated_at,
    coalesce((state ->> 'redriveCount')::int, 0) AS redrive_count, workflow_name, workflow_version"""


def summary(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "orderId": row["order_id"],
        "status": row["status"],
        "currentStep": row["current_state"],
        "error": row["error"],
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
        "redriveCount": row["redrive_count"],
        "workflowName": row["workflow_name"],
        "workflowVersion": row["workflow_version"],
    }


async def page(
    conn: asyncpg.Connection, f: SagaFilter, *, limit: int, cursor: str | None
) -> tuple[list[asyncpg.Record], str | None]:
    """One page of the sagas ``f`` matches, newest first, and the cursor of the next page (None: the last)."""
    w = _where(f)
    if cursor is not None:
        w.add("(created_at, order_id) < ({}, {})", *decode_cursor(cursor))
    w.args.append(limit + 1)  # one more than asked: whether there is a next page, without a count
    rows = await conn.fetch(
        f"""SELECT {_SUMMARY_COLUMNS} FROM saga WHERE {w.sql()}
            ORDER BY created_at DESC, order_id DESC LIMIT ${len(w.args)}""",
        *w.args,
    )
    if len(rows) <= limit:
        return list(rows), None
    last = rows[limit - 1]
    return list(rows[:limit]), encode_cursor(last["created_at"], last["order_id"])


async def counts(conn: asyncpg.Connection, f: SagaFilter) -> dict[str, int]:
    """Sagas by status for the filter without its status part: every status, 0 where none."""
    w = _where(f, with_status=False)
    rows = await conn.fetch(f"SELECT status, count(*) AS n FROM saga WHERE {w.sql()} GROUP BY status", *w.args)
    found = {r["status"]: r["n"] for r in rows}
    return {status: found.get(status, 0) for status in (*SAGA_STATUSES, *sorted(set(found) - set(SAGA_STATUSES)))}


async def listing(conn: asyncpg.Connection, query: ListQuery) -> SagaPage:
    """GET /api/v1/sagas and ``orderctl list`` in direct mode: a page, its next cursor, the total and counts."""
    rows, next_cursor = await page(conn, query, limit=query.limit, cursor=query.cursor)
    by_status = await counts(conn, query)
    total = sum(n for status, n in by_status.items() if not query.status or status in query.status)
    items = [SagaSummary.model_validate(summary(r)) for r in rows]
    return SagaPage(items=items, nextCursor=next_cursor, total=total, counts=by_status)


async def redrivable_ids(
    conn: asyncpg.Connection, f: SagaFilter, statuses: frozenset[str], *, limit: int
) -> tuple[list[str], int]:
    """Up to ``limit`` ids of sagas ``f`` matches whose status is in ``statuses``, newest first; and how many
    match in all."""
    w = _where(f)
    w.add("status = ANY({}::text[])", sorted(statuses))
    rows = await conn.fetch(
        f"""SELECT order_id, count(*) OVER () AS matched FROM saga WHERE {w.sql()}
            ORDER BY created_at DESC, order_id DESC LIMIT {int(limit)}""",
        *w.args,
    )
    return [r["order_id"] for r in rows], (rows[0]["matched"] if rows else 0)


async def saga_row(conn: asyncpg.Connection, order_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT order_id, status, current_state, state, version, workflow_name, workflow_version, input,
                  created_at, updated_at
           FROM saga WHERE order_id = $1""",
        order_id,
    )


async def history(conn: asyncpg.Connection, order_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT id, at, event, state, lane, attempt, command_id, error, cause, detail
           FROM saga_history WHERE order_id = $1 ORDER BY id""",
        order_id,
    )


async def record_audit(
    conn: asyncpg.Connection, order_id: str, *, event: str, state: str | None, detail: dict[str, Any]
) -> datetime:
    """An audit entry in the saga's history (who did what, from where); returns when. In the caller's
    transaction, so it stands or falls with the change it records."""
    return await conn.fetchval(
        """INSERT INTO saga_history (order_id, at, event, state, lane, detail)
           VALUES ($1, now(), $2, $3, 'main', $4::jsonb) RETURNING at""",
        order_id,
        event,
        state,
        detail,
    )
