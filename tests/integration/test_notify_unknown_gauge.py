"""orderflow_notifications_unknown on a real migrated notify database: rows left 'sending' for longer than the
margin are counted by channel; a send still in progress (a young 'sending' row) and settled rows ('sent',
'failed') are not. Read from the registry after a count, and from the /metrics endpoint of the notify process as
services/notify/main.py wires it (its scrape hook on the process's pool). Ages are set with SQL, never waited."""

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp import web
from harness import free_port, metric_value, migrated_pool
from prometheus_client import REGISTRY

from plumbing.http import make_app, serve
from services.notify import unknown
from services.notify.main import MIGRATIONS, NotifySettings, build

pytestmark = pytest.mark.integration

MARGIN = 300.0


@pytest.fixture
async def db() -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool("of_notify_unknown_gauge", MIGRATIONS, size=4) as pool:
        yield pool


async def claim(db: asyncpg.Pool, channel: str, status: str, age_seconds: float, kind: str = "confirmation") -> str:
    """A notification row as the handler leaves it, last changed ``age_seconds`` ago; returns its order id."""
    order_id = f"ORDER#{uuid.uuid4().hex[:8]}"
    await db.execute(
        """INSERT INTO notification (order_id, kind, channel, status, updated_at)
           VALUES ($1, $2, $3, $4, now() - make_interval(secs => $5))""",
        order_id,
        kind,
        channel,
        status,
        age_seconds,
    )
    return order_id


def gauge(channel: str) -> float | None:
    return REGISTRY.get_sample_value("orderflow_notifications_unknown", {"channel": channel})


async def test_rows_sending_past_the_margin_are_counted_by_channel(db: asyncpg.Pool) -> None:
    await claim(db, "email", "sending", MARGIN + 100)
    await claim(db, "email", "sending", MARGIN + 5000, kind="cancellation")
    await claim(db, "sms", "sending", MARGIN + 1)
    await claim(db, "email", "sending", 5)  # a send in progress
    await claim(db, "sms", "sending", MARGIN - 30)  # a slow one, still within the margin
    await claim(db, "email", "sent", MARGIN + 1000)
    await claim(db, "sms", "failed", MARGIN + 1000)

    assert await unknown.count(db, after_seconds=MARGIN) == {"email": 2, "sms": 1}
    assert (gauge("email"), gauge("sms")) == (2, 1)


async def test_every_channel_is_exported_at_zero_when_nothing_is_unknown(db: asyncpg.Pool) -> None:
    await claim(db, "email", "sent", MARGIN + 1000)
    await claim(db, "sms", "sending", 1)

    assert await unknown.count(db, after_seconds=MARGIN) == {"email": 0, "sms": 0}
    assert (gauge("email"), gauge("sms")) == (0, 0)


async def test_the_notify_process_serves_the_count_at_each_scrape(db: asyncpg.Pool) -> None:
    """The process as main.py builds it, its pool the test database: each scrape of /metrics counts afresh, with
    NOTIFY_UNKNOWN_AFTER_SECONDS from its settings; a row an operator marks stops counting at the next scrape."""
    process = build(NotifySettings(notify_unknown_after_seconds=60))
    process.pool = db
    app = make_app(process.ready)
    assert process.routes is not None
    process.routes(app)
    port = free_port()
    runner: web.AppRunner = await serve(app, "127.0.0.1", port)
    try:

        async def scraped(channel: str) -> float:
            # metric_value blocks (urllib): in a thread, so this loop keeps serving the request.
            return await asyncio.to_thread(metric_value, port, "orderflow_notifications_unknown", channel=channel)

        lost = await claim(db, "email", "sending", 61)  # past this process's 60 s, within the default 300 s
        await claim(db, "sms", "sending", 30)
        assert (await scraped("email"), await scraped("sms")) == (1, 0)

        await db.execute(
            "UPDATE notification SET status = 'sent', updated_at = now() WHERE order_id = $1 AND status = 'sending'",
            lost,
        )
        await db.execute("UPDATE notification SET updated_at = now() - interval '2 minutes' WHERE channel = 'sms'")
        assert (await scraped("email"), await scraped("sms")) == (0, 1)
    finally:
        await runner.cleanup()


async def test_the_partial_index_serves_the_count(db: asyncpg.Pool) -> None:
    """Migration 0003's index holds only the rows 'sending': the count reads it instead of the whole table (which
    keeps a row per order and channel for ever). The planner is told not to scan, as a big table would tell it."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + unknown._COUNT, MARGIN))
    assert "notification_sending_age" in plan, plan
