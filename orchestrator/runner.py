"""Apply the engine's decisions: saga row, history, timers and outbox rows in one transaction.

Every transition of one saga locks its saga row first (SELECT ... FOR UPDATE,
which also reads the row, in one round trip), so replicas of the orchestrator
serialize per saga: no command is sent twice by a race and no timer fires
twice. Starting a saga, when there is no row to lock yet, takes a
transaction-scoped advisory lock on the order id instead.
"""

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from contracts.orders import OrderOutcome, OrderRejected
from contracts.registry import BY_NAME
from orchestrator import metrics, saga_clock
from orchestrator.definition import Workflow
from orchestrator.engine import Context, decide
from orchestrator.state import Decision, Event, SagaState, Started
from plumbing import outbox
from plumbing.envelope import Envelope
from plumbing.topology import COMMANDS_EXCHANGE, EVENTS_EXCHANGE

TIMER_CHANNEL = "orderflow_timers"
REPLY_KEY = "orchestrator"

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def request_hash(document: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


class Runner:
    def __init__(self, workflow: Workflow, *, clock: Clock = utcnow) -> None:
        self.workflow = workflow
        self.clock = clock
        metrics.prepare(workflow)

    async def start(self, conn: asyncpg.Connection, order: dict[str, Any], *, causation_id: str | None) -> str:
        """Start the saga of ``order`` unless it exists; returns 'started', 'duplicate' or 'conflict'."""
        order_id = order["orderId"]
        await _lock(conn, order_id)
        digest = request_hash(order)
        existing = await conn.fetchval("SELECT request_hash FROM saga WHERE order_id = $1", order_id)
        if existing is not None:
            if existing == digest:
                return "duplicate"
            await _publish(
                conn,
                EVENTS_EXCHANGE,
                "order.rejected",
                OrderRejected(
                    orderId=order_id,
                    reasons=["orderId already used by an order with different content"],
                ),
                order_id,
                causation_id,
            )
            return "conflict"
        decision = decide(self.workflow, None, Started(input=order), self._ctx())
        await conn.execute(
            """INSERT INTO saga (order_id, status, current_state, state, request_hash)
               VALUES ($1, $2, $3, $4, $5)""",
            order_id,
            decision.state.status,
            decision.state.current_step(),
            decision.state.model_dump(mode="json"),
            digest,
        )
        await self._record(conn, order_id, decision, causation_id)
        metrics.observe(decision, workflow=self.workflow, before=None, duration_seconds=None)
        return "started"

    async def apply(
        self, conn: asyncpg.Connection, order_id: str, event: Event, *, causation_id: str | None
    ) -> Decision | None:
        """Apply a reply or a timer to a running saga; None when the saga does not exist."""
        row = await lock_saga(conn, order_id)
        if row is None:
            return None
        before = SagaState.model_validate(row["state"])
        decision = decide(self.workflow, before, event, self._ctx())
        await conn.execute(
            """UPDATE saga SET status = $2, current_state = $3, state = $4,
                   version = version + 1, updated_at = now() WHERE order_id = $1""",
            order_id,
            decision.state.status,
            decision.state.current_step(),
            decision.state.model_dump(mode="json"),
        )
        await self._record(conn, order_id, decision, causation_id)
        just_finished = decision.state.finished and not before.finished
        if just_finished:
            await self._publish_outcome(conn, decision.state, causation_id)
        duration = (self.clock() - row["created_at"]).total_seconds() if just_finished else None
        retried = just_finished and await _had_retry(conn, order_id)
        metrics.observe(decision, workflow=self.workflow, before=before, duration_seconds=duration, retried=retried)
        return decision

    def _ctx(self) -> Context:
        return Context(now=self.clock())

    async def _record(
        self, conn: asyncpg.Connection, order_id: str, decision: Decision, causation_id: str | None
    ) -> None:
        await conn.executemany(
            """INSERT INTO saga_history (order_id, at, event, state, lane, attempt, command_id, error, cause, detail)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
            [
                (order_id, h.at, h.event, h.state, h.lane, h.attempt, h.commandId, h.error, h.cause, h.detail)
                for h in decision.history
            ],
        )
        for lane, timer in decision.timers.items():
            if timer is None:
                await conn.execute("DELETE FROM saga_timer WHERE order_id = $1 AND lane = $2", order_id, lane)
            else:
                await conn.execute(
                    """INSERT INTO saga_timer (order_id, lane, token, kind, due_at) VALUES ($1, $2, $3, $4, $5)
                       ON CONFLICT (order_id, lane) DO UPDATE
                       SET token = excluded.token, kind = excluded.kind, due_at = excluded.due_at,
                           armed_at = now()""",
                    order_id,
                    lane,
                    timer.token,
                    timer.kind,
                    timer.dueAt,
                )
        # The timer loop wakes at least every heartbeat anyway: only a timer due sooner than that (a short
        # retry wait) needs to wake it, and a step timeout of 30 s does not cost a NOTIFY per transition.
        soon = self.clock() + timedelta(seconds=saga_clock.HEARTBEAT_SECONDS)
        if any(t is not None and t.dueAt <= soon for t in decision.timers.values()):
            await conn.execute("SELECT pg_notify($1, '')", TIMER_CHANNEL)
        for command in decision.commands:
            model = BY_NAME[command.resource.split(".", 1)[1]].model
            envelope = Envelope(
                messageId=command.messageId,
                type=model.__name__,
                correlationId=order_id,
                causationId=causation_id,
                attempt=command.attempt,
                replyTo=REPLY_KEY,
            )
            await outbox.enqueue(
                conn,
                exchange=COMMANDS_EXCHANGE,
                routing_key=command.resource,
                envelope=envelope,
                payload=model.model_validate(command.payload),
            )

    async def _publish_outcome(self, conn: asyncpg.Connection, saga: SagaState, causation_id: str | None) -> None:
        data = saga.main.data
        inventory = data.get("inventory") or {}
        confirmed = saga.status == "CONFIRMED"
        outcome = OrderOutcome(
            orderId=saga.orderId,
            status=saga.status,  # type: ignore[arg-type]
            amount=inventory.get("amount"),
            currency=inventory.get("currency"),
            lines=inventory.get("lines") or [],
            error=None if confirmed or saga.error is None else saga.error.model_dump(),
            notificationError=data.get("notificationError"),
        )
        await _publish(conn, EVENTS_EXCHANGE, f"order.{saga.status.lower()}", outcome, saga.orderId, causation_id)


async def _had_retry(conn: asyncpg.Connection, order_id: str) -> bool:
    """Whether the saga's history (this decision's rows included) holds a retry: for orderflow_sagas_retried_total."""
    query = "SELECT EXISTS (SELECT 1 FROM saga_history WHERE order_id = $1 AND event = 'RetryScheduled')"
    return bool(await conn.fetchval(query, order_id))


async def lock_saga(conn: asyncpg.Connection, order_id: str) -> asyncpg.Record | None:
    """Lock the saga's row until the transaction ends and read it; None when there is no such saga. Whoever
    changes a saga or its timers takes this lock first, so locks are always taken in the same order."""
    return await conn.fetchrow("SELECT state, created_at FROM saga WHERE order_id = $1 FOR UPDATE", order_id)


async def _lock(conn: asyncpg.Connection, order_id: str) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", order_id)


async def _publish(
    conn: asyncpg.Connection,
    exchange: str,
    routing_key: str,
    payload: Any,
    order_id: str | None,
    causation_id: str | None,
) -> None:
    envelope = Envelope(type=type(payload).__name__, correlationId=order_id or "", causationId=causation_id)
    await outbox.enqueue(conn, exchange=exchange, routing_key=routing_key, envelope=envelope, payload=payload)
