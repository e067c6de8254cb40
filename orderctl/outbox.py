"""Parked outbox rows: list, retry and drop them (``orderctl outbox``).

The relay parks a row it can never publish (plumbing/parking.py) in its database's ``outbox_parked``. A retry
moves the row back into the outbox, as a new row (after every row waiting there) with its message id, so a
copy already delivered is still absorbed by the receiver's inbox; the relays are woken by the commit's
NOTIFY. A row that still cannot be published is parked again. A drop deletes it: its message is never sent.
"""

import argparse
from dataclasses import asdict, dataclass
from datetime import datetime

import asyncpg

from orderctl import output, reach
from orderctl.config import SERVICES, CtlSettings
from orderctl.errors import NotFound
from plumbing import outbox


@dataclass(frozen=True)
class ParkedRow:
    service: str
    id: int
    message_id: str
    type: str | None
    correlation_id: str | None
    exchange: str
    routing_key: str
    attempts: int
    first_failed_at: datetime | None
    parked_at: datetime
    reason: str


async def parked(conn: asyncpg.Connection, service: str) -> list[ParkedRow]:
    """The parked rows of one service's database, oldest first."""
    rows = await conn.fetch(
        """SELECT id, message_id, envelope->>'type' AS type, envelope->>'correlationId' AS correlation_id, exchange,
                  routing_key, attempts, first_failed_at, parked_at, reason
           FROM outbox_parked ORDER BY id"""
    )
    return [ParkedRow(service=service, **dict(row)) for row in rows]


async def retry(conn: asyncpg.Connection, parked_id: int) -> bool:
    """Put a parked row back into the outbox, in one transaction with its NOTIFY; False if there is no such row."""
    async with conn.transaction():
        row = await conn.fetchrow(
            """DELETE FROM outbox_parked WHERE id = $1
               RETURNING message_id, exchange, routing_key, envelope, body""",
            parked_id,
        )
        if row is None:
            return False
        await conn.execute(
            """INSERT INTO outbox (message_id, exchange, routing_key, envelope, body) VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (message_id) DO NOTHING""",
            *row.values(),
        )
        await outbox.announce(conn)
    return True


async def drop(conn: asyncpg.Connection, parked_id: int) -> bool:
    """Delete a parked row for good; False if there is no such row."""
    return await conn.fetchval("DELETE FROM outbox_parked WHERE id = $1 RETURNING true", parked_id) is not None


def render(rows: list[ParkedRow]) -> str:
    if not rows:
        return "no parked outbox rows"
    lines = []
    for row in rows:
        correlation = row.correlation_id or "-"
        if len(correlation) > 60:
            correlation = correlation[:57] + "..."
        lines += [
            f"{row.service} #{row.id} message {row.message_id}",
            f"   type     {row.type or '-'}  correlation {correlation}",
            f"   to       {row.exchange} {row.routing_key}",
            f"   parked   {row.parked_at:%Y-%m-%d %H:%M:%S} after {row.attempts} attempt(s)",
            f"   reason   {row.reason}",
        ]
    return "\n".join(lines)


async def cmd_outbox(settings: CtlSettings, args: argparse.Namespace) -> int:
    """``orderctl outbox parked [--service S] [--json] | retry ID --service S | drop ID --service S``."""
    services = [args.service] if args.service else [s.name for s in SERVICES]
    if args.action == "parked":
        found: list[ParkedRow] = []
        for service in services:
            conn = await reach.database(settings, service)
            try:
                found += await parked(conn, service)
            finally:
                await conn.close()
        if args.json:
            output.as_json([asdict(row) for row in found])
        else:
            print(render(found))
        return 0
    conn = await reach.database(settings, args.service)
    try:
        done = await (retry if args.action == "retry" else drop)(conn, args.id)
    finally:
        await conn.close()
    if not done:
        raise NotFound(f"no parked outbox row {args.id} in {args.service}")
    what = "back in the outbox" if args.action == "retry" else "dropped: its message is never sent"
    print(f"{args.service} #{args.id} {what}")
    return 0
