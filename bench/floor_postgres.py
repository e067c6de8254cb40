"""PostgreSQL's floor: small committed transactions with synchronous_commit on, from several connections, in a
scratch database dropped afterwards. bench/floor.py runs it.
"""

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

import asyncpg

from bench.floor_window import FloorError, Window, measured_window
from plumbing.db import drop_database, with_database

log = logging.getLogger(__name__)

PAYLOAD = "x" * 100


@dataclass(frozen=True)
class PostgresFloor:
    """Small committed transactions, synchronous_commit=on, N concurrent connections."""

    transactions: int
    """Every transaction of the run, warm-up included; equals the rows the table holds at the end."""
    seconds: float
    """Length of the measured window, which opens after the warm-up."""
    per_second: float
    """Transactions committed in the window, per second, all connections together."""
    connections: int


def scratch_database_name() -> str:
    return f"orderflow_bench_floor_{uuid.uuid4().hex[:12]}"


async def _commit(conn: asyncpg.Connection, worker: int, window: Window) -> tuple[int, int]:
    """Commit one-row transactions until the window closes; returns (all, in the window)."""
    await conn.execute("SET synchronous_commit = on")
    done = in_window = 0
    while time.monotonic() < window.end:
        # A lone statement is its own transaction, committed (WAL flushed) before the reply; BEGIN and
        # COMMIT around it would add two round trips that measure the client, not the disk.
        await conn.execute("INSERT INTO floor_tx (worker, payload) VALUES ($1, $2)", worker, PAYLOAD)
        done += 1
        in_window += window.holds(time.monotonic())
    return done, in_window


async def measure_postgres(admin_dsn: str, *, seconds: float = 10.0, connections: int = 8) -> PostgresFloor:
    """Commit single-row INSERTs from ``connections`` concurrent connections in a scratch database."""
    if seconds <= 0 or connections < 1:
        raise ValueError("seconds must be positive and connections at least 1")
    name = scratch_database_name()
    admin = await asyncpg.connect(admin_dsn)
    try:
        if await admin.fetchval("SHOW fsync") != "on":
            log.warning("fsync is off on this server: the PostgreSQL floor is not the disk's")
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    workers: list[asyncpg.Connection] = []
    try:
        dsn = with_database(admin_dsn, name)
        workers = list(await asyncio.gather(*(asyncpg.connect(dsn) for _ in range(connections))))
        await workers[0].execute(
            "CREATE TABLE floor_tx (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " worker int NOT NULL, payload text NOT NULL)"
        )
        window = measured_window(seconds)
        counts = await asyncio.gather(*(_commit(conn, i, window) for i, conn in enumerate(workers)))
        total = sum(done for done, _ in counts)
        rows = await workers[0].fetchval("SELECT count(*) FROM floor_tx")
        if rows != total:
            raise FloorError(f"{total} transactions committed but the table holds {rows} rows")
        return PostgresFloor(
            transactions=total,
            seconds=seconds,
            per_second=sum(in_window for _, in_window in counts) / seconds,
            connections=connections,
        )
    finally:
        await asyncio.gather(*(conn.close() for conn in workers), return_exceptions=True)
        await drop_database(admin_dsn, name)
