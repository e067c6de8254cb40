"""`orderctl dlq replay`'s check: which dead letters a saga's state lets through, and why the others stay."""

import json

import pytest

from orderctl.dlq import DeadLetter
from orderctl.dlq_check import Saga, judge

pytestmark = pytest.mark.unit

COMMANDS = "inventory.commands"
REQUESTS = "orchestrator.order-requests"
REPLIES = "orchestrator.replies"
WAITING = Saga(status="RUNNING", waiting=frozenset({"cmd-7"}))


def letter(
    type_: str | None,
    *,
    message_id: str = "cmd-7",
    correlation_id: str | None = "ORDER#1",
    causation_id: str | None = None,
    body: dict | None = None,
) -> DeadLetter:
    return DeadLetter(
        message_id=message_id,
        type=type_,
        correlation_id=correlation_id,
        reason="schema: simulated",
        kind="schema",
        origin=("orderflow.commands", "inventory.ReserveInventory"),
        body=json.dumps(body or {"orderId": "ORDER#1"}).encode(),
        causation_id=causation_id,
    )


def test_a_command_is_replayed_only_while_its_saga_waits_for_it() -> None:
    assert judge(letter("ReserveInventory"), COMMANDS, WAITING).replay
    superseded = judge(letter("ReserveInventory", message_id="cmd-3"), COMMANDS, WAITING)
    assert not superseded.replay and superseded.reason.startswith("superseded attempt")
    ended = judge(letter("ReserveInventory"), COMMANDS, Saga(status="FAILED_COMPENSATED", waiting=frozenset()))
    assert ended == (False, "saga finished with status FAILED_COMPENSATED")
    assert judge(letter("ReserveInventory"), COMMANDS, None) == (False, "no saga for ORDER#1")
    assert not judge(letter("ReserveInventory", correlation_id=None), COMMANDS, WAITING).replay


def test_a_reply_is_replayed_only_while_its_command_is_awaited() -> None:
    assert judge(letter("InventoryReserved", causation_id="cmd-7"), REPLIES, WAITING).replay
    late = judge(letter("InventoryReserved", causation_id="cmd-2"), REPLIES, WAITING)
    assert not late.replay and "superseded reply" in late.reason
    assert not judge(letter("CommandFailed", causation_id="cmd-7"), REPLIES, Saga("CONFIRMED", frozenset())).replay


def test_an_order_request_is_replayed_only_if_no_saga_exists() -> None:
    # A client's request may carry no type and no correlation id: the queue and the body say what it is.
    request = letter(None, correlation_id=None, body={"orderId": "ORDER#9"})
    assert judge(request, f"{REQUESTS}.dlq", None) == (True, "no saga for ORDER#9 yet")
    exists = judge(request, REQUESTS, Saga("RUNNING", frozenset()))
    assert exists == (False, "a saga exists for ORDER#9 (status RUNNING): it was requested already")
    unreadable = DeadLetter(None, None, None, "invalid_json", "invalid_json", ("orders", "order.requested"), b"{")
    assert judge(unreadable, REQUESTS, None).replay  # no order, so no saga: the edge answers it again


def test_an_outcome_is_replayed_only_if_the_saga_still_has_that_status() -> None:
    outcome = letter("OrderOutcome", body={"orderId": "ORDER#1", "status": "CONFIRMED"})
    assert judge(outcome, "inventory.order-events", Saga("CONFIRMED", frozenset())).replay
    stale = judge(outcome, "inventory.order-events", Saga("FAILED_COMPENSATED", frozenset()))
    assert stale == (False, "stale outcome CONFIRMED: the saga is now FAILED_COMPENSATED")


def test_an_unknown_type_is_not_guessed_at() -> None:
    verdict = judge(letter("Nonsense"), COMMANDS, WAITING)
    assert not verdict.replay and "--force" in verdict.reason
