"""Read a saga for people and clients: GET /orders/{orderId} and ``orderctl status``."""

from typing import Any

import asyncpg


async def saga_view(conn: asyncpg.Connection, order_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        """SELECT order_id, status, current_state, state, version, workflow_name, workflow_version, created_at,
                  updated_at
           FROM saga WHERE order_id = $1""",
        order_id,
    )
    if row is None:
        return None
    history = await conn.fetch(
        """SELECT at, event, state, lane, attempt, command_id, error, cause, detail
           FROM saga_history WHERE order_id = $1 ORDER BY id""",
        order_id,
    )
    state = row["state"]
    data = state["main"]["data"]
    return {
        "orderId": row["order_id"],
        "status": row["status"],
        "currentStep": row["current_state"],
        "version": row["version"],
        "workflow": {"name": row["workflow_name"], "version": row["workflow_version"]},
        "createdAt": row["created_at"].isoformat(),
        "updatedAt": row["updated_at"].isoformat(),
        "amount": (data.get("inventory") or {}).get("amount"),
        "currency": (data.get("inventory") or {}).get("currency"),
        "error": state.get("error"),
        "notificationError": data.get("notificationError"),
        "compensation": data.get("compensation"),
        "steps": _steps(history),
        "history": [
            {
                "at": h["at"].isoformat(),
                "event": h["event"],
                "state": h["state"],
                "lane": h["lane"],
                "attempt": h["attempt"],
                "commandId": h["command_id"],
                "error": h["error"],
                "cause": h["cause"],
                "detail": h["detail"],
            }
            for h in history
        ],
    }


_ENDS = {
    "TaskSucceeded": "succeeded",
    "TaskFailed": "failed",
    "TaskTimedOut": "timed_out",
    "ReconcileFailed": "failed",
    "ReconcileTimedOut": "timed_out",
    "TaskCancelled": "cancelled",
}


def _steps(history: list[asyncpg.Record]) -> list[dict[str, Any]]:
    """One entry per task attempt, and per reconcile (``"reconcile": true``): when it was sent, how it ended,
    and its error. A command sent afresh after Command.Expired (CommandReissued) continues its attempt's entry."""
    attempts: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for h in history:
        command_id, event = h["command_id"], h["event"]
        if event in ("TaskScheduled", "ReconcileScheduled") and command_id:
            attempts[command_id] = {
                "step": h["state"],
                "lane": h["lane"],
                "attempt": h["attempt"],
                "startedAt": h["at"].isoformat(),
                "endedAt": None,
                "outcome": "running",
                "error": None,
                "cause": None,
            }
            if event == "ReconcileScheduled":
                attempts[command_id]["reconcile"] = True
            order.append(command_id)
        elif event == "CommandReissued" and command_id and (h["detail"] or {}).get("expired") in attempts:
            attempts[command_id] = attempts[h["detail"]["expired"]]
        elif command_id in attempts and event in _ENDS:
            entry = attempts[command_id]
            entry["endedAt"] = h["at"].isoformat()
            entry["outcome"] = _ENDS[event]
            entry["error"], entry["cause"] = h["error"], h["cause"]
    return [attempts[c] for c in order]
