"""What the API changes, in the orchestrator's process: redrive one saga, or those a filter matches.

A redrive here goes through the process's own Runner: it runs on the definition the saga records (as the
deployment stored it, orchestrator/versions.py), its metrics are this process's, and the relay publishes its
commands at once. In one transaction: the saga's row is locked, its status checked, the audit entry written
(who, from where, why) and the engine's Redriven event applied, so an audit entry exists exactly for the
redrives that happened.
"""

from collections.abc import Callable
from typing import Any

import asyncpg
from prometheus_client import Counter

from orchestrator import saga_queries
from orchestrator.api_models import MAX_BULK, REDRIVABLE, BulkRedriveRequest
from orchestrator.runner import Runner, lock_saga
from orchestrator.saga_detail import redrivability
from orchestrator.state import Redriven

#: The history event of an audit entry for a redrive asked through the API.
REDRIVE_REQUESTED = "RedriveRequested"
ACTIONS = Counter(
    "orderflow_api_actions_total",
    "Mutating calls of the orchestrator's API, per saga acted on: action (redrive, refund, cancel) and outcome "
    "(done, stopped: a RUNNING saga stopped and compensating, refused: not in a state that allows it, not_found, "
    "replayed: a refund repeated with its Idempotency-Key).",
    ["action", "outcome"],
)
for _outcome in ("done", "refused", "not_found"):
    ACTIONS.labels("redrive", _outcome)


class NoSuchSaga(LookupError):
    """No saga has that order id."""


class NotRedrivable(Exception):
    """The saga is in a status no redrive may change; ``status`` says which."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


async def redrive(
    conn: asyncpg.Connection,
    runner: Runner,
    order_id: str,
    *,
    actor: dict[str, Any],
    reason: str | None,
    bulk: bool = False,
) -> dict[str, Any]:
    """Redrive one saga with its audit entry, in one transaction; the result's fields are RedriveResult's."""
    try:
        async with conn.transaction():
            row = await lock_saga(conn, order_id)
            if row is None:
                raise NoSuchSaga(order_id)
            status = row["state"].get("status")
            verdict = redrivability(status)
            if not verdict["redrivable"]:
                raise NotRedrivable(status, verdict["reason"])
            if not row["state"].get("redrive"):  # the engine would refuse it (RedriveRefused): say so, write nothing
                raise NotRedrivable(status, f"the saga is {status} but records no step to restart")
            audit = {"action": "redrive", "by": actor, "reason": reason, "bulk": bulk}
            at = await saga_queries.record_audit(
                conn, order_id, event=REDRIVE_REQUESTED, state=row["state"]["main"].get("current"), detail=audit
            )
            decision = await runner.apply(conn, order_id, Redriven(), causation_id=None)
    except NoSuchSaga:
        ACTIONS.labels("redrive", "not_found").inc()
        raise
    except NotRedrivable:
        ACTIONS.labels("redrive", "refused").inc()
        raise
    assert decision is not None
    ACTIONS.labels("redrive", "done").inc()
    return {
        "orderId": order_id,
        "status": decision.state.status,
        "redriveCount": decision.state.redriveCount,
        "restarted": sorted({c.state for c in decision.commands}),
        "auditedAt": at,
        "by": actor,
    }


async def bulk_redrive(
    pool: asyncpg.Pool,
    runner: Runner,
    request: BulkRedriveRequest,
    *,
    actor: dict[str, Any],
    on_written: Callable[[], None],
) -> dict[str, Any]:
    """Redrive (or with dryRun only list) up to ``request.limit`` redrivable sagas the filter matches, newest
    first, each in its own transaction: one that changed meanwhile is reported, not a reason to stop."""
    async with pool.acquire() as conn:
        ids, matched = await saga_queries.redrivable_ids(
            conn, request.filter, REDRIVABLE, limit=min(request.limit, MAX_BULK)
        )
    done: list[str] = []
    failed: list[dict[str, str]] = []
    if not request.dryRun:
        for order_id in ids:
            async with pool.acquire() as conn:
                try:
                    await redrive(conn, runner, order_id, actor=actor, reason=request.reason, bulk=True)
                except (NoSuchSaga, NotRedrivable) as exc:
                    failed.append({"orderId": order_id, "reason": str(exc) or "no such saga"})
                    continue
            done.append(order_id)
        if done:
            on_written()
    return {
        "dryRun": request.dryRun,
        "matched": matched,
        "orderIds": ids if request.dryRun else done,
        "failed": failed,
        "truncated": matched > len(ids),
    }
