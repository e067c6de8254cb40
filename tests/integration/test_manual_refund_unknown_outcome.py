"""A manual refund whose reply is a transient failure (Stripe's answer lost after it refunded, found by the chaos
suite: the refund recorded failed, "no money moved", while Stripe held it) is asked again under the same Stripe
Idempotency-Key, and recorded as failed only after MAX_ASKS; a business refusal is recorded at once."""

import json
from collections.abc import AsyncIterator

import asyncpg
import pytest
from harness import migrated_pool
from test_manual_actions import ask, confirmed, reply

from orchestrator import definition, manual_actions
from orchestrator.main import MIGRATIONS
from orchestrator.runner import Runner
from orchestrator.state import ErrorOut, ReplyReceived

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool("of_manual_unknown", MIGRATIONS) as pool:
        yield pool


def lost(command_id: str) -> ReplyReceived:
    return ReplyReceived(
        commandId=command_id, ok=False, error=ErrorOut(Error="Service.ConnectionError", Cause="connection reset")
    )


async def sent(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT message_id, routing_key, body FROM outbox ORDER BY id")


async def test_a_lost_answer_is_asked_again_under_the_same_key_until_it_answers(pool: asyncpg.Pool) -> None:
    runner = Runner(definition.load())
    order_id = await confirmed(pool, runner)
    asked = await ask(pool, order_id, "4.20", "ticket-lost")
    (first,) = await sent(pool)
    await pool.execute("DELETE FROM outbox")

    assert await reply(pool, runner, order_id, lost(asked["commandId"])) is None
    (again,) = await sent(pool)
    assert again["message_id"] != asked["commandId"] and again["routing_key"] == first["routing_key"]
    assert json.loads(again["body"]) == json.loads(first["body"]), "the same refund, the same Idempotency-Key"
    row = await pool.fetchrow(
        "SELECT command_id, outcome, request FROM saga_manual_action WHERE order_id = $1", order_id
    )
    assert (row["command_id"], row["outcome"]) == (asked["commandId"], "pending"), "the first command id stays"
    assert (row["request"]["askedAs"], row["request"]["asks"]) == (again["message_id"], 2)
    # The first ask's failure delivered again (under another message id): answered already, nothing is sent.
    assert await reply(pool, runner, order_id, lost(asked["commandId"])) is None
    assert len(await sent(pool)) == 1, "asked again once"

    done = ReplyReceived(
        commandId=again["message_id"],
        ok=True,
        result={"refunded": True, "refundId": "re_lost", "amount": 4.2, "alreadyRefunded": False},
    )
    assert await reply(pool, runner, order_id, done) is None
    outcome = await pool.fetchrow("SELECT outcome, result FROM saga_manual_action WHERE order_id = $1", order_id)
    assert outcome["outcome"] == "succeeded" and outcome["result"]["refundId"] == "re_lost"
    events = await pool.fetch(
        "SELECT event, command_id, detail FROM saga_history WHERE order_id = $1 AND event LIKE 'ManualRefund%' "
        "ORDER BY id",
        order_id,
    )
    assert [e["event"] for e in events] == ["ManualRefundRequested", "ManualRefundSucceeded"]
    # Named by the command id the API answered, so `orderctl refund --wait` and the console find it.
    assert events[1]["command_id"] == asked["commandId"] and events[1]["detail"]["asks"] == 2


async def test_asked_max_asks_times_then_recorded_failed_and_a_refusal_at_once(pool: asyncpg.Pool) -> None:
    runner = Runner(definition.load())
    order_id = await confirmed(pool, runner)
    asked = await ask(pool, order_id, "1", "ticket-down")
    command_id = asked["commandId"]
    for _ in range(manual_actions.MAX_ASKS - 1):
        await pool.execute("DELETE FROM outbox")
        assert await reply(pool, runner, order_id, lost(command_id)) is None
        (again,) = await sent(pool)
        command_id = again["message_id"]
        assert json.loads(again["body"])["idempotencyKey"] == f"{order_id}-manual-refund-ticket-down"
    await pool.execute("DELETE FROM outbox")
    assert await reply(pool, runner, order_id, lost(command_id)) is None
    assert await sent(pool) == []
    row = await pool.fetchrow("SELECT outcome, result FROM saga_manual_action WHERE order_id = $1", order_id)
    assert row["outcome"] == "failed" and row["result"]["error"] == "Service.ConnectionError"

    refused = await ask(pool, order_id, "2", "ticket-refused")
    await pool.execute("DELETE FROM outbox")
    no = ReplyReceived(commandId=refused["commandId"], ok=False, error=ErrorOut(Error="RefundFailed", Cause="no"))
    assert await reply(pool, runner, order_id, no) is None
    assert await sent(pool) == []
    outcome = await pool.fetchval(
        "SELECT outcome FROM saga_manual_action WHERE order_id = $1 AND request_key = 'ticket-refused'", order_id
    )
    assert outcome == "failed"
