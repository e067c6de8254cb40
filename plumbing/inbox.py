"""Inbox: remember each handled message id so a redelivery has no second effect.

Rows are forgotten after INBOX_RETENTION_HOURS by every process's retention loop (plumbing/retention.py).
"""

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
