"""Issue 18 item 4: a definition written for Step Functions runs end to end on the real RabbitMQ and PostgreSQL.

examples/step-functions/order-saga.json (Lambda functions through ``arn:aws:states:::lambda:invoke``, a Choice on
the order total that screens large orders for fraud, a Map that holds each line's stock on its own) is the
orchestrator's WORKFLOW_FILE in a stack of its own. Four orders: a small one (not screened, each line held,
CONFIRMED, stock taken line by line), a large one the screen approves (its history shows the screen and one
hold per line), a large one the screen refuses (CANCELLED with FraudCheck.Rejected, nothing charged, nothing
held) and one whose second line runs out of stock between the check and its hold (the first line's hold
released by the Map's Catch). Outcomes are read from the services' databases and the outcome events."""

import json
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from faults_support import private_stack
from harness import Stack, db, eventually, order_body, outcome_of, publish_raw, seed, stock_of

from orderctl.client import OutcomeListener
from services.inventory import repository as inventory_repo

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "step-functions" / "order-saga.json"
#: The payment service's fraud ceiling in this stack: the refused order is above it, the approved one below.
FRAUD_CEILING = "5000"


@dataclass
class Running:
    stack: Stack
    channel: aio_pika.abc.AbstractChannel
    listener: OutcomeListener
    tag: str

    async def order(self, order_id: str, lines: list[tuple[str, int]], email: str = "ada@example.com") -> None:
        body = order_body(order_id, lines)
        body["customer"]["email"] = email
        await publish_raw(self.channel, json.dumps(body).encode())

    async def outcome(self, order_id: str) -> dict[str, Any]:
        return await outcome_of(self.listener, order_id, timeout=90)


@pytest.fixture(scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Running:
    env = {"orchestrator": {"WORKFLOW_FILE": str(EXAMPLE)}, "payment": {"FRAUD_AMOUNT_CEILING": FRAUD_CEILING}}
    async with private_stack(tmp_path_factory.mktemp("sfn"), env, request=request) as stack:
        connection = await aio_pika.connect_robust(stack.settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            listener = OutcomeListener()
            await listener.start(channel)
            yield Running(stack, channel, listener, uuid.uuid4().hex[:8])


async def fetch(stack: Stack, service: str, query: str, *args: Any) -> list[dict[str, Any]]:
    conn = await db(stack.settings, service)
    try:
        return [dict(r) for r in await conn.fetch(query, *args)]
    finally:
        await conn.close()


async def reservations(stack: Stack, order_id: str) -> dict[str, tuple[str, str, int]]:
    """The order's holds by idempotency id: (status, product, quantity)."""
    rows = await fetch(
        stack,
        "inventory",
        """SELECT r.idempotency_id, r.status, l.product_id, l.quantity FROM reservation r
           JOIN reservation_line l ON l.reservation_id = r.reservation_id WHERE r.order_id = $1""",
        order_id,
    )
    return {r["idempotency_id"]: (r["status"], r["product_id"], r["quantity"]) for r in rows}


async def tasks_run(stack: Stack, order_id: str) -> list[str]:
    """The Task states the saga ran (scheduled), by state name, in order."""
    rows = await fetch(
        stack,
        "orchestrator",
        "SELECT state FROM saga_history WHERE order_id = $1 AND event = 'TaskScheduled' ORDER BY id",
        order_id,
    )
    return [r["state"].rsplit("/", 1)[-1] for r in rows]


async def payments(stack: Stack, order_id: str) -> list[dict[str, Any]]:
    return await fetch(stack, "payment", "SELECT status FROM payment WHERE order_id = $1", order_id)


async def screening(stack: Stack, order_id: str) -> list[dict[str, Any]]:
    """The fraud screen's decisions for the order, with their reasons (a jsonb list)."""
    query = "SELECT decision, reasons::text AS reasons FROM fraud_screening WHERE order_id = $1"
    rows = await fetch(stack, "payment", query, order_id)
    return [{"decision": r["decision"], "reasons": json.loads(r["reasons"])} for r in rows]


async def test_a_small_order_is_not_screened_and_each_line_is_held_then_sold(running: Running) -> None:
    stack, tag = running.stack, running.tag
    a, b, c = f"sku-{tag}-a", f"sku-{tag}-b", f"sku-{tag}-c"
    await seed(stack, {a: (10, "10.00"), b: (10, "5.00"), c: (10, "1.00")})
    order_id = f"ORDER#{tag}-small"
    await running.order(order_id, [(a, 2), (b, 1), (c, 3)])
    outcome = await running.outcome(order_id)
    assert outcome["status"] == "CONFIRMED"
    assert outcome["amount"] == 28.0
    assert [await stock_of(stack, p) for p in (a, b, c)] == [8, 9, 7]
    assert await reservations(stack, order_id) == {
        f"{order_id}-reserve-{a}": ("committed", a, 2),
        f"{order_id}-reserve-{b}": ("committed", b, 1),
        f"{order_id}-reserve-{c}": ("committed", c, 3),
    }
    tasks = await tasks_run(stack, order_id)
    assert "ScreenForFraud" not in tasks
    assert tasks.count("ReserveLine") == 3
    assert [await screening(stack, order_id), len(await payments(stack, order_id))] == [[], 1]


async def test_a_large_order_the_screen_approves_is_screened_then_held_line_by_line(running: Running) -> None:
    stack, tag = running.stack, running.tag
    d, e = f"sku-{tag}-d", f"sku-{tag}-e"
    await seed(stack, {d: (10, "600.00"), e: (10, "1.00")})
    order_id = f"ORDER#{tag}-large"
    await running.order(order_id, [(d, 2), (e, 1)])
    outcome = await running.outcome(order_id)
    assert outcome["status"] == "CONFIRMED"
    assert outcome["amount"] == 1201.0
    tasks = await tasks_run(stack, order_id)
    assert tasks[:2] == ["CheckInventory", "ScreenForFraud"]
    assert tasks.count("ReserveLine") == 2
    assert tasks.index("ScreenForFraud") < tasks.index("ReserveLine") < tasks.index("ProcessPayment")
    assert await screening(stack, order_id) == [{"decision": "approved", "reasons": []}]
    assert {k: v[0] for k, v in (await reservations(stack, order_id)).items()} == {
        f"{order_id}-reserve-{d}": "committed",
        f"{order_id}-reserve-{e}": "committed",
    }
    assert [await stock_of(stack, p) for p in (d, e)] == [8, 9]
    assert [p["status"] for p in await payments(stack, order_id)] == ["succeeded"]


async def test_a_large_order_the_screen_refuses_is_cancelled_with_nothing_charged_or_held(running: Running) -> None:
    stack, tag = running.stack, running.tag
    f = f"sku-{tag}-f"
    await seed(stack, {f: (10, "6000.00")})
    order_id = f"ORDER#{tag}-fraud"
    await running.order(order_id, [(f, 1)])
    outcome = await running.outcome(order_id)
    assert outcome["status"] == "CANCELLED"
    assert outcome["error"]["Error"] == "FraudCheck.Rejected"
    assert "amount_ceiling" in outcome["error"]["Cause"]
    [decision] = await screening(stack, order_id)
    assert decision["decision"] == "rejected" and decision["reasons"][0].startswith("amount_ceiling")
    assert await payments(stack, order_id) == []
    assert await reservations(stack, order_id) == {}
    assert await stock_of(stack, f) == 10
    tasks = await tasks_run(stack, order_id)
    assert tasks == ["CheckInventory", "ScreenForFraud"]


async def test_a_line_out_of_stock_has_the_other_lines_holds_released(running: Running) -> None:
    """The second line's stock goes between CheckInventory and its hold: an operator sets it to 0 while holding
    its product row, taken before the order was sent, so the hold waits for the change and then finds none."""
    stack, tag = running.stack, running.tag
    g, h = f"sku-{tag}-g", f"sku-{tag}-h"
    await seed(stack, {g: (5, "10.00"), h: (5, "10.00")})
    order_id = f"ORDER#{tag}-short"
    operator = await db(stack.settings, "inventory")
    try:
        change = operator.transaction()
        await change.start()
        await operator.execute("SELECT 1 FROM product WHERE product_id = $1 FOR UPDATE", h)
        try:
            await running.order(order_id, [(g, 1), (h, 1)])

            async def first_line_held() -> bool:
                held = await reservations(stack, order_id)
                return held.get(f"{order_id}-reserve-{g}", ("",))[0] == "active"

            await eventually(first_line_held, timeout=60, what="the first line held")
            await inventory_repo.upsert_product(
                operator, h, name=f"Product {h}", stock=0, price=Decimal("10.00"), currency="usd"
            )
        finally:
            await change.commit()
    finally:
        await operator.close()
    outcome = await running.outcome(order_id)
    assert outcome["status"] == "CANCELLED"
    assert outcome["error"]["Error"] == "InsufficientStockError"
    assert await reservations(stack, order_id) == {f"{order_id}-reserve-{g}": ("released", g, 1)}
    assert [await stock_of(stack, p) for p in (g, h)] == [5, 0]
    assert await payments(stack, order_id) == []
    tasks = await tasks_run(stack, order_id)
    assert tasks.count("ReserveLine") == 2 and tasks[-1] == "ReleaseHeldLines"
