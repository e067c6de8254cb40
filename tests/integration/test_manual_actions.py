"""The manual refund's orchestrator side on a real orchestrator database: what one request writes (the audit
entry, the kept command, the outbox row), how its reply is recorded without touching the saga, and how a
repeated or concurrent Idempotency-Key sends one command."""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest
from harness import migrated_pool

from orchestrator import api_refund, definition, manual_actions
from orchestrator.main import MIGRATIONS
from orchestrator.runner import REPLY_KEY, Runner
from orchestrator.state import ErrorOut, ReplyReceived

pytestmark = pytest.mark.integration

ACTOR = {"tokenId": 1, "token": "cs-ada", "role": "operator", "address": "127.0.0.1", "forwardedFor": None}
ORDER = {
    "customer": {"email": "ada@example.com", "phone": None},
    "items": [{"productId": "sku-refund", "quantity": 2}],
    "paymentMethodId": "pm_card_visa",
}


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool("of_manual", MIGRATIONS) as pool:
        yield pool


async def confirmed(pool: asyncpg.Pool, runner: Runner) -> str:
    """A saga as a CONFIRMED order of 30.00 USD leaves it (its steps' results written in, as the engine would)."""
    order_id = f"ORDER#manual-{uuid.uuid4().hex[:8]}"
    async with pool.acquire() as conn, conn.transaction():
        assert await runner.start(conn, {**ORDER, "orderId": order_id}, causation_id=None) == "started"
    results = {
        "inventory": {"amount": 30.0, "currency": "usd", "lines": []},
        "payment": {"paymentIntentId": "pi_manual", "status": "succeeded", "amount": 30.0},
    }
    await pool.execute(
        """UPDATE saga SET status = 'CONFIRMED',
               state = jsonb_set(jsonb_set(state, '{status}', '"CONFIRMED"'), '{main,data}',
                                 (state #> '{main,data}') || $2::jsonb)
           WHERE order_id = $1""",
        order_id,
        results,
    )
    await pool.execute("DELETE FROM outbox")
    return order_id


async def ask(pool: asyncpg.Pool, order_id: str, amount: str | None, key: str) -> dict:
    async with pool.acquire() as conn:
        return await api_refund.refund(
            conn,
            order_id,
            amount=None if amount is None else Decimal(amount),
            reason="damaged",
            request_key=key,
            actor=ACTOR,
        )


async def reply(pool: asyncpg.Pool, runner: Runner, order_id: str, event: ReplyReceived) -> object:
    async with pool.acquire() as conn, conn.transaction():
        return await runner.apply(conn, order_id, event, causation_id="reply-1")


async def test_a_refund_is_audited_sent_and_its_reply_recorded_apart(pool: asyncpg.Pool) -> None:
    runner = Runner(definition.load())
    order_id = await confirmed(pool, runner)
    before = await pool.fetchrow("SELECT state, version FROM saga WHERE order_id = $1", order_id)

    asked = await ask(pool, order_id, "12.50", "ticket-1")
    assert asked["status"] == "pending" and asked["expected"] == 12.5 and not asked["replayed"]
    sent = await pool.fetchrow("SELECT message_id, routing_key, envelope, body FROM outbox")
    assert sent["message_id"] == asked["commandId"] and sent["routing_key"] == "payment.RefundPayment"
    assert sent["envelope"]["replyTo"] == REPLY_KEY and sent["envelope"]["correlationId"] == order_id
    command = json.loads(sent["body"])
    assert command == {
        "orderId": order_id,
        "paymentIntentId": "pi_manual",
        "amount": 12.5,
        "reason": "damaged",
        "idempotencyKey": f"{order_id}-manual-refund-ticket-1",
    }
    audit = await pool.fetchrow(
        "SELECT detail FROM saga_history WHERE order_id = $1 AND event = 'ManualRefundRequested'", order_id
    )
    assert audit["detail"]["by"] == ACTOR and audit["detail"]["amount"] == 12.5
    assert audit["detail"]["charged"] == 30.0 and audit["detail"]["remaining"] == 30.0

    done = ReplyReceived(
        commandId=asked["commandId"],
        ok=True,
        result={"refunded": True, "refundId": "re_1", "amount": 12.5, "alreadyRefunded": False},
    )
    assert await reply(pool, runner, order_id, done) is None
    assert await reply(pool, runner, order_id, done) is None  # delivered again: nothing more
    outcomes = await pool.fetch(
        "SELECT event, command_id, detail FROM saga_history WHERE order_id = $1 AND event LIKE 'ManualRefund%' "
        "ORDER BY id",
        order_id,
    )
    assert [(o["event"], o["command_id"]) for o in outcomes] == [
        ("ManualRefundRequested", None),
        ("ManualRefundSucceeded", asked["commandId"]),
    ]
    assert outcomes[1]["detail"]["refundId"] == "re_1" and outcomes[1]["detail"]["by"] == ACTOR
    after = await pool.fetchrow("SELECT state, version FROM saga WHERE order_id = $1", order_id)
    assert (after["state"], after["version"]) == (before["state"], before["version"]), "the workflow is untouched"

    # A failed refund holds nothing; the full refund then asks for what remains of the charge.
    failed = await ask(pool, order_id, "10", "ticket-2")
    refused = ReplyReceived(
        commandId=failed["commandId"], ok=False, error=ErrorOut(Error="RefundExceedsCharge", Cause="too much")
    )
    assert await reply(pool, runner, order_id, refused) is None
    async with pool.acquire() as conn:
        assert await manual_actions.held(conn, order_id) == Decimal("12.50")
    rest = await ask(pool, order_id, None, "ticket-3")
    assert rest["amount"] is None and rest["expected"] == 17.5

    # A reply to no manual action is the engine's: the finished saga notes it and changes nothing else.
    stray = ReplyReceived(commandId="not-a-manual-command", ok=True, result={})
    assert await reply(pool, runner, order_id, stray) is not None


async def test_one_key_asked_twice_at_once_sends_one_command(pool: asyncpg.Pool) -> None:
    runner = Runner(definition.load())
    order_id = await confirmed(pool, runner)
    first, second = await asyncio.gather(*(ask(pool, order_id, "5", "double-click") for _ in range(2)))
    assert first["commandId"] == second["commandId"] and {first["replayed"], second["replayed"]} == {False, True}
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
    with pytest.raises(api_refund.KeyReused):
        await ask(pool, order_id, "6", "double-click")
