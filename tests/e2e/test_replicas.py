"""Two replicas on one queue and one database: each saga's transitions are serialized, so no command is sent
twice by a race and no timer fires twice; and with two replicas of every process (batching on, the default),
every path of the workflow ends as it should with no invariant broken (docs/scaling.md)."""

import asyncio
import json
import sys
import time
from collections import Counter

import pytest
from harness import Stack, db, eventually, free_port, is_ready, metric_value, new_id, order_body, publish_raw, seed

from orderctl.checker import check
from orderctl.supervisor import Child, Supervisor

pytestmark = pytest.mark.e2e


async def test_two_orchestrators_send_each_command_once(stack: Stack, channel, listener) -> None:
    first = stack.supervisor.by_name("orchestrator")
    port = free_port()
    env = {**first.env, "HTTP_PORT": str(port), "API_PORT": str(free_port())}  # the API needs a port of its own
    second = Supervisor(
        [Child("orchestrator-2", [sys.executable, "-m", "orchestrator"], env)], log_dir=str(stack.log_dir)
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


#: The paths of the mix (the order id's suffix or the card decides; tests/harness.py's STACK_FAULTS), each with
#: the status it must end in.
MIX = {
    "happy": "CONFIRMED",
    "declined": "FAILED",
    "nostock": "CANCELLED",
    "record": "FAILED_COMPENSATED",
    "slow": "CONFIRMED",
}


async def test_two_replicas_of_every_process_complete_the_mixed_paths(stack: Stack, channel, listener) -> None:
    names = ["orchestrator", "inventory", "payment", "orders", "notify"]
    children = []
    for name in names:
        first = stack.supervisor.by_name(name)
        env = {**first.env, "HTTP_PORT": str(free_port())}
        if name == "orchestrator":
            env["API_PORT"] = str(free_port())
        children.append(Child(f"{name}-2", list(first.argv), env))
    second = Supervisor(children, log_dir=str(stack.log_dir))
    await second.start()
    try:
        for child in children:
            port = int(child.env["HTTP_PORT"])
            await eventually(lambda p=port: asyncio.to_thread(is_ready, p), what=f"{child.name} ready")
        sku, scarce = new_id("sku-"), new_id("sku-")
        await seed(stack, {sku: (1000, "1.00"), scarce: (0, "1.00")})
        plan: dict[str, str] = {}
        for i in range(60):
            path = list(MIX)[i % len(MIX)]
            suffix = {"record": "-record", "slow": "-slow"}.get(path, "")
            plan[new_id() + suffix] = path
        bodies = []
        for order_id, path in plan.items():
            items = [(scarce if path == "nostock" else sku, 1)]
            pm = "pm_card_chargeDeclined" if path == "declined" else "pm_card_visa"
            bodies.append(json.dumps(order_body(order_id, items, pm)).encode())
        fast = [o for o, p in plan.items() if p != "slow"]
        started = time.monotonic()
        await asyncio.gather(*(publish_raw(channel, body) for body in bodies))
        await listener.wait_for(fast, 180)
        fast_elapsed = time.monotonic() - started  # the slow ones wait for the payment timeout
        outcomes = await listener.wait_for(list(plan), 180)
        elapsed = time.monotonic() - started
        assert {o: outcomes.get(o, {}).get("status") for o in plan} == {o: MIX[p] for o, p in plan.items()}
        # Every replica of every process took part.
        for child in children:
            assert metric_value(int(child.env["HTTP_PORT"]), "orderflow_messages_handled_total") > 0, child.name
        print(
            f"two replicas each: {len(fast)} orders of the four paths without a timeout in {fast_elapsed:.1f} s "
            f"({len(fast) / fast_elapsed:.1f} sagas/s); all {len(plan)} in {elapsed:.1f} s"
        )
    finally:
        await second.stop()
    report = await check(stack.settings, allow_running=True)
    ours = [v for v in report.violations if v.order_id is None or v.order_id in plan]
    assert ours == [], "\n".join(str(v) for v in ours)
