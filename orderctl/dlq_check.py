"""Whether a dead letter may still be replayed, judged by its saga's state (``orderctl dlq replay``).

A dead letter replayed days later must not act on a saga that has moved on: a ProcessPayment replayed after
the order was compensated would charge a card nobody refunds. So before a replay each dead letter is judged
against the orchestrator's saga row (read as ``orderctl status`` reads it), by what it is:

- a command (its correlation id is the orderId, its message id the engine's commandId): replayed only while
  the saga is RUNNING and one of its lanes waits for exactly this command's reply;
- a reply (its ``x-causation-id`` names the command it answers): the same, for the command it answers;
- an OrderRequested: replayed only if no saga exists for its orderId (a saga that exists has it already);
- an order outcome (``order.<status>``): replayed only if the saga ended with that status (a redrive may
  have changed it since); other events are facts and are replayed.

``judge`` is pure; ``verdicts`` reads the sagas in one query and judges each letter. ``--force`` skips both.
"""

import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import asyncpg
from pydantic import ValidationError

from contracts.orders import OrderOutcome, OrderRequested
from contracts.registry import BY_NAME
from orchestrator.state import SagaState
from orderctl.dlq import DeadLetter
from orderctl.reach import database_variable, reaching
from plumbing.db import connect
from plumbing.topology import q_name

REQUESTS_QUEUE = q_name("orchestrator", "order-requests")


@dataclass(frozen=True)
class Saga:
    """What a replay needs to know of a saga."""

    status: str
    #: The command ids its lanes wait for a reply to.
    waiting: frozenset[str]

    @property
    def running(self) -> bool:
        return self.status == "RUNNING"


class Verdict(NamedTuple):
    replay: bool
    reason: str


def message_type(letter: DeadLetter, queue: str) -> str | None:
    """The letter's type; a client's OrderRequested may come without one (its queue's default type)."""
    if letter.type:
        return letter.type
    return OrderRequested.__name__ if queue.removesuffix(".dlq") == REQUESTS_QUEUE else None


def order_id(letter: DeadLetter, queue: str) -> str | None:
    """The order a dead letter belongs to: its correlation id, or an OrderRequested body's orderId."""
    if letter.correlation_id:
        return letter.correlation_id
    if message_type(letter, queue) == OrderRequested.__name__:
        # Only the orderId: a request dead-lettered for its schema may be wrong anywhere else.
        try:
            document = json.loads(letter.body)
        except ValueError:
            return None
        value = document.get("orderId") if isinstance(document, dict) else None
        return value if isinstance(value, str) and value else None
    return None


def judge(letter: DeadLetter, queue: str, saga: Saga | None) -> Verdict:
    """Replay or not, and why; ``saga`` is the saga of ``order_id(letter, queue)``, None if there is none."""
    name = message_type(letter, queue)
    spec = BY_NAME.get(name or "")
    order = order_id(letter, queue)
    if spec is None:
        return Verdict(False, f"unknown type {name!r}: cannot check it against a saga (--force replays it)")
    if name == OrderRequested.__name__:
        if order is None:
            return Verdict(True, "no readable orderId, so no saga: the edge answers it again")
        if saga is not None:
            return Verdict(False, f"a saga exists for {order} (status {saga.status}): it was requested already")
        return Verdict(True, f"no saga for {order} yet")
    if order is None:
        return Verdict(False, "no correlation id: its saga is unknown (--force replays it)")
    if saga is None:
        return Verdict(False, f"no saga for {order}")
    if spec.kind in ("command", "reply"):
        awaited = letter.message_id if spec.kind == "command" else letter.causation_id
        if not saga.running:
            return Verdict(False, f"saga finished with status {saga.status}")
        if awaited is None or awaited not in saga.waiting:
            what = "attempt" if spec.kind == "command" else "reply (its command is no longer awaited)"
            return Verdict(False, f"superseded {what}: the saga waits for {sorted(saga.waiting) or 'no reply'}")
        return Verdict(True, f"the saga waits for {'it' if spec.kind == 'command' else 'this reply'}")
    if name == OrderOutcome.__name__:
        try:
            status = OrderOutcome.model_validate_json(letter.body).status
        except ValidationError:
            return Verdict(False, "unreadable outcome (--force replays it)")
        if saga.status != status:
            return Verdict(False, f"stale outcome {status}: the saga is now {saga.status}")
        return Verdict(True, f"the saga ended {status}")
    return Verdict(True, "an event: a fact, replayed as it is")


def saga_of(row: asyncpg.Record) -> Saga:
    state = SagaState.model_validate(row["state"])
    waiting = frozenset(
        lane.run.commandId for lane in state.lanes() if lane.run is not None and lane.run.phase == "waiting_reply"
    )
    return Saga(status=row["status"], waiting=waiting)


async def read_sagas(conn: asyncpg.Connection, order_ids: Iterable[str]) -> dict[str, Saga]:
    """The sagas of ``order_ids`` that exist, by order id."""
    rows = await conn.fetch(
        "SELECT order_id, status, state FROM saga WHERE order_id = ANY($1::text[])", sorted(set(order_ids))
    )
    return {row["order_id"]: saga_of(row) for row in rows}


async def verdicts(conn: asyncpg.Connection, queue: str, letters: list[DeadLetter]) -> list[Verdict]:
    """Judge each of ``letters``, dead letters of ``queue``, against its saga as the database holds it now."""
    orders = [order_id(letter, queue) for letter in letters]
    sagas = await read_sagas(conn, [o for o in orders if o is not None])
    return [judge(letter, queue, sagas.get(o) if o else None) for letter, o in zip(letters, orders, strict=True)]


def saga_check(database_url: str, queue: str) -> Callable[[list[DeadLetter]], Awaitable[list[Verdict]]]:
    """The check ``dlq.replay`` runs on the chosen dead letters of ``queue``: the orchestrator's database at
    ``database_url`` read once, when there is something to judge."""

    async def check(letters: list[DeadLetter]) -> list[Verdict]:
        with reaching("PostgreSQL for orchestrator", database_variable("orchestrator"), database_url):
            conn = await connect(database_url)
        try:
            return await verdicts(conn, queue, letters)
        finally:
            await conn.close()

    return check
