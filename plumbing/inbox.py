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


async def claim_many(conn: asyncpg.Connection, consumer: str, message_ids: list[str]) -> list[bool]:
    """``claim`` for a batch, in one statement: whether each id (in the order given) is new. Copies of one id in
    the batch are duplicates but the first. The ids are inserted in their sorted order, so two batches claiming
    the same ids lock them in the same order (no deadlock)."""
    copies: dict[str, int] = {}
    for message_id in message_ids:
        copies[message_id] = copies.get(message_id, 0) + 1
    rows = await conn.fetch(
        """INSERT INTO inbox (consumer, message_id, duplicates)
           SELECT $1, id, n - 1 FROM unnest($2::text[], $3::int[]) AS t(id, n) ORDER BY id
           ON CONFLICT (consumer, message_id) DO UPDATE SET duplicates = inbox.duplicates + excluded.duplicates + 1
           RETURNING message_id, xmax = 0 AS new""",
        consumer,
        list(copies),
        list(copies.values()),
    )
    new = {row["message_id"] for row in rows if row["new"]}
    claimed = []
    for message_id in message_ids:
        claimed.append(message_id in new)
        new.discard(message_id)  # a second copy in the same batch is a duplicate
    return claimed
