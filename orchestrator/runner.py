"""Apply the engine's decisions: saga row, history, timers and outbox rows in one transaction.

Every transition of one saga locks its saga row first (SELECT ... FOR UPDATE,
which also reads the row, in one round trip), so replicas of the orchestrator
serialize per saga: no command is sent twice by a race and no timer fires
twice. Starting a saga, when there is no row to lock yet, inserts it with ON
CONFLICT DO NOTHING, which waits for a concurrent start of the same order.
What a decision writes (the saga row, its history, its timers and its outbox
rows) goes in one statement: one round trip per transition, however many
rows it holds.
"""

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from contracts.orders import OrderOutcome, OrderRejected
from contracts.registry import BY_NAME
from orchestrator import batch, cancellation, manual_actions, metrics, saga_clock
from orchestrator.definition import Workflow
from orchestrator.engine import Context, decide
from orchestrator.state import Decision, Event, ReplyReceived, SagaState, Started
from orchestrator.versions import ORDER_WORKFLOW, Versions
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
    def __init__(self, workflow: Workflow, *, clock: Clock = utcnow, others: dict[str, Workflow] | None = None) -> None:
        #: The definition new sagas start on; a saga started on another version runs on that one.
        self.workflow = workflow
        self.versions = Versions(workflow)
        #: Every workflow by name (the order workflow and ``others``): a saga runs on its own (saga.workflow_name).
        self.workflows = {ORDER_WORKFLOW: self.versions} | {
            name: Versions(other, name=name) for name, other in (others or {}).items()
        }
        self.clock = clock
        for name, versions in self.workflows.items():
            metrics.prepare(versions.current, name=name)

    async def start(self, conn: asyncpg.Connection, order: dict[str, Any], *, causation_id: str | None) -> str:
        """Start the saga of ``order`` unless it exists; returns 'started', 'duplicate' or 'conflict'."""
        order_id = order["orderId"]
        digest = request_hash(order)
        decision = decide(self.workflow, None, Started(input=order), self._ctx())
        messages = self._messages(order_id, decision, causation_id)
        await self.versions.deploy(conn)
        inserted, _ = await self._write(
            conn,
            _INSERT_SAGA,
            order_id,
            decision,
            messages,
            extra=[digest, self.versions.name, self.versions.version],
        )
        if inserted:
            metrics.observe(decision, workflow=self.workflow, before=None, duration_seconds=None, name=ORDER_WORKFLOW)
            return "started"
        existing = await conn.fetchval("SELECT request_hash FROM saga WHERE order_id = $1", order_id)
        if existing == digest:
            return "duplicate"
        rejected = OrderRejected(orderId=order_id, reasons=["orderId already used by an order with different content"])
        await outbox.enqueue_many(conn, [_event(order_id, "order.rejected", rejected, causation_id)])
        return "conflict"

    async def start_workflow(
        self, conn: asyncpg.Connection, name: str, saga_key: str, document: dict[str, Any], *, causation_id: str | None
    ) -> bool:
        """Start a saga of workflow ``name`` under ``saga_key`` with ``document`` as its input; False when a saga
        with that key exists (nothing is written)."""
        versions = self.workflows[name]
        decision = decide(versions.current, None, Started(input=document), self._ctx())
        messages = self._messages(saga_key, decision, causation_id)
        await versions.deploy(conn)
        extra = [request_hash(document), versions.name, versions.version]
        inserted, _ = await self._write(conn, _INSERT_SAGA, saga_key, decision, messages, extra=extra)
        if inserted:
            metrics.observe(decision, workflow=versions.current, before=None, duration_seconds=None, name=name)
        return inserted

    async def workflow_of(self, conn: asyncpg.Connection, name: str | None, version: str | None) -> Workflow:
        """The definition a saga runs on, by its workflow's name (None: a saga from before names, an order's)
        and version. LookupError when this process does not know the workflow or the version is not stored."""
        versions = self.workflows.get(name or ORDER_WORKFLOW)
        if versions is None:
            raise LookupError(f"workflow {name} is not one this orchestrator runs")
        return await versions.workflow(conn, version)

    async def apply(
        self, conn: asyncpg.Connection, order_id: str, event: Event, *, causation_id: str | None
    ) -> Decision | None:
        """Apply a reply or a timer to a running saga; None when the saga does not exist, or when the reply
        answers an operator's command sent outside the workflow (a manual refund: recorded apart)."""
        row = await lock_saga(conn, order_id)
        if row is None:
            return None
        before = SagaState.model_validate(row["state"])
        # Only a reply no step of the saga waits for can answer a manual action: the engine's own replies skip
        # the lookup (a round trip per transition otherwise).
        if (
            isinstance(event, ReplyReceived)
            and not _awaited(before, event.commandId)
            and await manual_actions.settle(conn, order_id, event, at=self.clock())
        ):
            return None
        name = row["workflow_name"] or ORDER_WORKFLOW
        workflow = await self.workflow_of(conn, name, row["workflow_version"])
        decision = decide(workflow, before, event, self._ctx())
        messages = self._messages(order_id, decision, causation_id)
        just_finished = decision.state.finished and not before.finished
        if just_finished:
            messages.append(self._outcome(decision.state, causation_id, name))
        _, retried = await self._write(conn, _UPDATE_SAGA, order_id, decision, messages, finished=just_finished)
        duration = (self.clock() - row["created_at"]).total_seconds() if just_finished else None
        metrics.observe(
            decision, workflow=workflow, before=before, duration_seconds=duration, retried=bool(retried), name=name
        )
        return decision

    def _ctx(self) -> Context:
        return Context(now=self.clock())

    async def _write(
        self,
        conn: asyncpg.Connection,
        sql: str,
        order_id: str,
        decision: Decision,
        messages: list[outbox.Outgoing],
        *,
        finished: bool = False,
        extra: list[Any] | None = None,
    ) -> tuple[bool, bool | None]:
        """Write the saga row, and if that wrote a row its history, timers and messages, in one statement.
        Returns whether the saga row was written and, for a saga that just finished, whether its history
        (this decision's rows included) holds a retry (for orderflow_sagas_retried_total)."""
        history = decision.history
        armed = {lane: timer for lane, timer in decision.timers.items() if timer is not None}
        # The timer loop wakes at least every heartbeat anyway: only a timer due sooner than that (a short
        # retry wait) needs to wake it, and a step timeout of 30 s does not cost a NOTIFY per transition.
        soon = self.clock() + timedelta(seconds=saga_clock.HEARTBEAT_SECONDS)
        state = decision.state
        row = await conn.fetchrow(
            sql,
            order_id,
            state.status,
            state.current_step(),
            state.model_dump(mode="json"),
            finished,
            any(h.event == "RetryScheduled" for h in history),
            any(t.dueAt <= soon for t in armed.values()),
            [h.at for h in history],
            [h.event for h in history],
            [h.state for h in history],
            [h.lane for h in history],
            [h.attempt for h in history],
            [h.commandId for h in history],
            [h.error for h in history],
            [h.cause for h in history],
            [h.detail for h in history],
            [lane for lane, timer in decision.timers.items() if timer is None],
            list(armed),
            [t.token for t in armed.values()],
            [t.kind for t in armed.values()],
            [t.dueAt for t in armed.values()],
            *outbox.columns(messages),
            *(extra or []),
        )
        outbox.inserted(row["sent"])
        return row["written"], row["retried"]

    def _messages(self, order_id: str, decision: Decision, causation_id: str | None) -> list[outbox.Outgoing]:
        messages = []
        for command in decision.commands:
            model = BY_NAME[command.resource.split(".", 1)[1]].model
            envelope = Envelope(
                messageId=command.messageId,
                type=model.__name__,
                correlationId=order_id,
                causationId=causation_id,
                attempt=command.attempt,
                replyTo=REPLY_KEY,
                deadline=command.deadline,
            )
            payload = model.model_validate(command.payload)
            messages.append(outbox.Outgoing(COMMANDS_EXCHANGE, command.resource, envelope, payload))
        return messages

    def _outcome(self, saga: SagaState, causation_id: str | None, name: str = ORDER_WORKFLOW) -> outbox.Outgoing:
        if name == cancellation.CANCELLATION_WORKFLOW:
            return _event(saga.orderId, *cancellation.outcome(saga), causation_id)
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
        return _event(saga.orderId, f"order.{saga.status.lower()}", outcome, causation_id)


def _transition_sql(saga_write: str) -> str:
    """A transition's one statement: ``saga_write`` (the saga row, RETURNING 1), then, only if it wrote a row,
    the history rows, the timers cleared and armed, and the outbox rows. Parameters: $1 order id, $2 status,
    $3 current state, $4 state document, $5 the saga just finished, $6 this decision schedules a retry, $7 a
    timer is due within the heartbeat, $8-$16 history columns, $17 lanes whose timer is cleared, $18-$21
    timers armed, $22-$27 outbox columns and hold, then ``saga_write``'s own. It returns whether the saga row
    was written, whether the saga has retried, and the ids of the outbox rows written."""
    written = "EXISTS (SELECT 1 FROM saga_row)"
    return f"""
WITH saga_row AS ({saga_write}),
history AS (
    INSERT INTO saga_history (order_id, at, event, state, lane, attempt, command_id, error, cause, detail)
    SELECT $1::text, * FROM unnest($8::timestamptz[], $9::text[], $10::text[], $11::text[], $12::int[],
                                   $13::text[], $14::text[], $15::text[], $16::jsonb[])
    WHERE {written}
),
cleared AS (
    DELETE FROM saga_timer WHERE order_id = $1::text AND lane = ANY($17::text[]) AND {written}
),
armed AS (
    INSERT INTO saga_timer (order_id, lane, token, kind, due_at)
    SELECT $1::text, * FROM unnest($18::text[], $19::text[], $20::text[], $21::timestamptz[])
    WHERE {written}
    ON CONFLICT (order_id, lane) DO UPDATE
    SET token = excluded.token, kind = excluded.kind, due_at = excluded.due_at, armed_at = now(),
        failures = 0, last_error = NULL, parked_at = NULL
),
sent AS ({outbox.insert_sql(22, only_if=written)})
SELECT {written} AS written,
       ARRAY(SELECT message_id FROM sent) AS sent,
       -- Every statement of a WITH sees the history as it was before it: this decision's rows count apart.
       CASE WHEN $5::bool THEN $6::bool OR EXISTS (
           SELECT 1 FROM saga_history WHERE order_id = $1::text AND event = 'RetryScheduled') END AS retried,
       CASE WHEN $7::bool AND {written} THEN pg_notify('{TIMER_CHANNEL}', '') END AS woken
"""


# A concurrent start of the same order makes ON CONFLICT DO NOTHING wait for it to end: exactly one start
# writes the saga; the others then read the row it committed. The times are clock_timestamp(), not now(): a
# batch starts several sagas in one transaction, and the listing orders and filters by when each began.
_INSERT_SAGA = _transition_sql(
    """INSERT INTO saga (order_id, status, current_state, state, request_hash, workflow_name, workflow_version,
                         created_at, updated_at)
       VALUES ($1::text, $2::text, $3::text, $4::jsonb, $28::text, $29::text, $30::text,
               clock_timestamp(), clock_timestamp())
       ON CONFLICT (order_id) DO NOTHING RETURNING 1"""
)
_UPDATE_SAGA = _transition_sql(
    """UPDATE saga SET status = $2::text, current_state = $3::text, state = $4::jsonb,
           version = version + 1, updated_at = clock_timestamp()
       WHERE order_id = $1::text RETURNING 1"""
)


def _awaited(saga: SagaState, command_id: str) -> bool:
    """Whether a step of ``saga`` waits for the reply to ``command_id`` (as the engine matches replies)."""
    return any(
        lane.run is not None and lane.run.commandId == command_id and lane.run.phase == "waiting_reply"
        for lane in saga.lanes()
    )


async def lock_saga(conn: asyncpg.Connection, order_id: str) -> asyncpg.Record | None:
    """Lock the saga's row until the transaction ends and read it; None when there is no such saga. Whoever
    changes a saga or its timers takes this lock first, so locks are always taken in the same order. A batch of
    replies locked its sagas already, in order (orchestrator/batch.py): the first transition of each uses that."""
    if (row := batch.take_locked(conn, order_id)) is not None:
        return row
    return await conn.fetchrow(
        "SELECT state, status, created_at, workflow_name, workflow_version FROM saga WHERE order_id = $1 FOR UPDATE",
        order_id,
    )


def _event(order_id: str, routing_key: str, payload: Any, causation_id: str | None) -> outbox.Outgoing:
    envelope = Envelope(type=type(payload).__name__, correlationId=order_id, causationId=causation_id)
    return outbox.Outgoing(EVENTS_EXCHANGE, routing_key, envelope, payload)
