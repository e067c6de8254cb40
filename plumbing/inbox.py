"""Inbox: remember each handled message id so a redelivery has no second effect."""

import asyncpg


async def claim(conn: asyncpg.Connection, consumer: str, message_id: str) -> bool:
    """Record ``message_id`` inside the caller's transaction; False if it was handled before.

    The row commits or rolls back with the handler's effects, so a crash before
    commit leaves the message unclaimed and its redelivery is handled afresh.
    """
    # A duplicate is counted (and the row locked until this transaction ends), not applied.
    return await conn.fetchval(
        """INSERT INTO inbox (consumer, message_id) VALUES ($1, $2)
           ON CONFLICT (consumer, message_id) DO UPDATE SET duplicates = inbox.duplicates + 1
           RETURNING xmax = 0""",
        consumer,
        message_id,
    )


async def purge(conn: asyncpg.Connection, *, older_than_days: int) -> int:
    """Forget message ids older than the longest redelivery window we keep."""
    result = await conn.execute(
        "DELETE FROM inbox WHERE processed_at < now() - make_interval(days => $1)", older_than_days
    )
    return int(result.split()[-1])
