"""How late do durable timers fire? Starts N sagas, sets their step timeouts to fall due over a few seconds,
runs the orchestrator's timer loop, and reports the lateness of each firing (fired at - due at).

    .venv/bin/python bench/timer_latency.py --sagas 500 --spread 5

Needs only PostgreSQL; it creates and drops a database of its own.
"""

import argparse
import asyncio
import statistics
import time
import uuid
from datetime import timedelta

from orchestrator import definition
from orchestrator.main import MIGRATIONS
from orchestrator.runner import Runner, utcnow
from orchestrator.timers import TimerLoop
from plumbing.db import create_pool, drop_database, ensure_database, with_database
from plumbing.migrations import migrate

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


async def main(sagas: int, spread: float) -> None:
    name = f"of_bench_{uuid.uuid4().hex[:8]}"
    dsn = with_database("postgresql://orderflow_orchestrator@127.0.0.1:5432/x", name)
    await ensure_database(ADMIN, dsn)
    try:
        await migrate(dsn, MIGRATIONS)
        pool = await create_pool(dsn, size=4)
        runner = Runner(definition.load())
        order = {
            "customer": {"email": "a@b.co", "phone": None},
            "items": [{"productId": "p", "quantity": 1}],
            "paymentMethodId": "pm_card_visa",
            "currency": "usd",
        }
        async with pool.acquire() as conn:
            for i in range(sagas):
                async with conn.transaction():
                    await runner.start(conn, {**order, "orderId": f"B{i}"}, causation_id=None)
            base = utcnow() + timedelta(seconds=1)
            await conn.execute(
                "UPDATE saga_timer SET due_at = $1::timestamptz + random() * make_interval(secs => $2)", base, spread
            )
            due = {r["order_id"]: r["due_at"] for r in await conn.fetch("SELECT order_id, due_at FROM saga_timer")}
        loop = asyncio.create_task(TimerLoop(pool, runner).run())
        started = time.monotonic()
        while await pool.fetchval("SELECT count(*) FROM saga_timer WHERE kind = 'timeout'") > 0:
            await asyncio.sleep(0.2)
            if time.monotonic() - started > spread + 60:
                break
        loop.cancel()
        fired = await pool.fetch("SELECT order_id, at FROM saga_history WHERE event = 'TaskTimedOut' ORDER BY order_id")
        lateness = sorted((r["at"] - due[r["order_id"]]).total_seconds() for r in fired)
        await pool.close()
        print(f"timers: {sagas}, fired: {len(lateness)}, due over {spread:.1f}s")
        if lateness:
            print(
                f"lateness seconds: p50 {statistics.median(lateness):.3f}  "
                f"p95 {lateness[int(len(lateness) * 0.95) - 1]:.3f}  max {lateness[-1]:.3f}  min {lateness[0]:.3f}"
            )
    finally:
        await drop_database(ADMIN, name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sagas", type=int, default=500)
    parser.add_argument("--spread", type=float, default=5.0, help="seconds over which the timers fall due")
    args = parser.parse_args()
    asyncio.run(main(args.sagas, args.spread))
