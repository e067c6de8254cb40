"""Two orchestrator replicas on one queue and one database: each saga's transitions are serialized,
so no command is sent twice by a race and no timer fires twice."""

import asyncio
import json
import sys
from collections import Counter

import pytest
from harness import Stack, db, eventually, free_port, is_ready, metric_value, new_id, order_body, publish_raw, seed

from orderctl.supervisor import Child, Supervisor

pytestmark = pytest.mark.e2e


async def test_two_orchestrators_send_each_command_once(stack: Stack, channel, listener) -> None:
    first = stack.supervisor.by_name("orchestrator")
    port = free_port()
    second = Supervisor(
        [Child("orchestrator-2", [sys.executable, "-m", "orchestrator"], {**first.env, "HTTP_PORT": str(port)})],
        log_dir=str(stack.log_dir),
    )
    await second.start()
    try:
        await eventually(lambda: asyncio.to_thread(is_ready, port), what="the second orchestrator ready")
        sku = new_id("sku-")
        await seed(stack, {sku: (100, "1.00")})
        # Slow orders lose their first payment reply, so both replicas' timer loops race for the timeouts.
        order_ids = [new_id() + ("-slow" if i % 2 else "") for i in range(16)]
        await asyncio.gather(*(publish_raw(channel, json.dumps(order_body(o, [(sku, 1)])).encode()) for o in order_ids))
        outcomes = await listener.wait_for(order_ids, 120)
        assert {o: outcomes.get(o, {}).get("status") for o in order_ids} == {o: "CONFIRMED" for o in order_ids}
        # Both replicas took part: each handled replies, and each fired timers or started sagas.
        for replica_port in (stack.port("orchestrator"), port):
            assert metric_value(replica_port, "orderflow_messages_handled_total", queue="orchestrator.replies") > 0
    finally:
        await second.stop()

    conn = await db(stack.settings, "orchestrator")
    try:
        rows = await conn.fetch(
            "SELECT order_id, event, state FROM saga_history WHERE order_id = ANY($1::text[])", order_ids
        )
    finally:
        await conn.close()
    for order_id in order_ids:
        events = Counter((r["event"], r["state"]) for r in rows if r["order_id"] == order_id)
        slow = order_id.endswith("-slow")
        assert events[("TaskScheduled", "ProcessPayment")] == (2 if slow else 1), order_id
        assert events[("TaskTimedOut", "ProcessPayment")] == (1 if slow else 0), order_id
        for step in ("CheckInventory", "ReserveInventory", "CreateOrderRecord", "NotifyCustomer"):
            assert events[("TaskScheduled", step)] == 1, (order_id, step)
        assert events[("ExecutionSucceeded", None)] == 1, order_id

    conn = await db(stack.settings, "inventory")
    try:
        assert await conn.fetchval("SELECT stock FROM product WHERE product_id = $1", sku) == 100 - len(order_ids)
    finally:
        await conn.close()
