"""The fraud screen's handler (payment.ScreenOrder) on a real database: a decision is taken once per idempotency
key and answered as it was taken, even after the rules change; a refusal is the failure reply
FraudCheck.Rejected with the decision committed beside it."""

from decimal import Decimal

import asyncpg
import pytest
from harness import migrated_pool

from contracts.payment import OrderScreened, ScreenOrder
from plumbing.envelope import Envelope
from plumbing.middleware.delivery import MessageContext
from services.payment.fraud import FraudRules, screen_order
from services.payment.main import MIGRATIONS

pytestmark = pytest.mark.integration

STRICT = FraudRules(amount_ceiling=Decimal("100"))
LENIENT = FraudRules(amount_ceiling=Decimal("1000"))


@pytest.fixture
async def pool(servers: None) -> asyncpg.Pool:
    async with migrated_pool("fraud_screen", MIGRATIONS) as pool:
        yield pool


def command(order_id: str, amount: str) -> ScreenOrder:
    return ScreenOrder.model_validate(
        {
            "orderId": order_id,
            "amount": amount,
            "currency": "usd",
            "customer": {"email": "ada@example.com"},
            "lines": [{"productId": "456", "name": "Widget", "quantity": 1, "unitPrice": amount, "lineTotal": amount}],
            "idempotencyKey": f"{order_id}-screen",
        }
    )


async def screen(pool: asyncpg.Pool, order: ScreenOrder, rules: FraudRules) -> tuple[OrderScreened | None, list]:
    """The handler's reply and the failure replies it wrote to the outbox, in one committed transaction."""
    async with pool.acquire() as conn, conn.transaction():
        envelope = Envelope(type="ScreenOrder", correlationId=order.orderId, replyTo="orchestrator")
        reply = await screen_order(MessageContext(envelope=envelope, conn=conn, consumer="test"), order, rules=rules)
        failures = await conn.fetch(
            "SELECT convert_from(body, 'UTF8') FROM outbox "
            "WHERE envelope->>'correlationId' = $1 AND envelope->>'type' = 'CommandFailed'",
            order.orderId,
        )
    return reply, [r[0] for r in failures]


async def decisions(pool: asyncpg.Pool, order_id: str) -> list[str]:
    return [r[0] for r in await pool.fetch("SELECT decision FROM fraud_screening WHERE order_id = $1", order_id)]


async def test_a_refusal_is_fraud_check_rejected_with_the_decision_kept(pool: asyncpg.Pool) -> None:
    reply, failures = await screen(pool, command("ORDER#big", "500.00"), STRICT)
    assert reply is None
    assert len(failures) == 1 and "FraudCheck.Rejected" in failures[0] and "amount_ceiling" in failures[0]
    assert await decisions(pool, "ORDER#big") == ["rejected"]
    # Asked again under rules that would pass it, the order keeps its first answer.
    reply, failures = await screen(pool, command("ORDER#big", "500.00"), LENIENT)
    assert reply is None and len(failures) == 2
    assert await decisions(pool, "ORDER#big") == ["rejected"]


async def test_an_approval_is_answered_the_same_when_asked_again(pool: asyncpg.Pool) -> None:
    reply, failures = await screen(pool, command("ORDER#ok", "50.00"), STRICT)
    assert reply == OrderScreened(rules=["amount_ceiling", "max_units", "blocked_email_domain"]) and failures == []
    reply, failures = await screen(pool, command("ORDER#ok", "50.00"), FraudRules(amount_ceiling=Decimal("10")))
    assert reply is not None and failures == []
    assert await decisions(pool, "ORDER#ok") == ["approved"]
