"""The floor of one saga step in this stack: a command and its reply, each a persistent message with publisher
confirms through a quorum queue, handled by a bare aio-pika consumer (no middleware, no validation, no
handler), optionally with one PostgreSQL transaction per delivery (an inbox row and an outbox row, committed
with synchronous_commit on) on each side.

    .venv/bin/python -m bench.hop --in-flight 16 --seconds 20
    .venv/bin/python -m bench.hop --in-flight 16 --seconds 20 --db

One OS process plays the orchestrator (publishes commands, takes replies, keeps ``--in-flight`` steps in
flight), a child plays a service (takes a command, publishes its reply, acknowledges). Both run on uvloop with
the same client libraries as Orderflow's processes. Printed: steps per second, and the CPU one step costs in
each process, in the RabbitMQ server and in PostgreSQL (whole servers, over the measured window). A saga is
seven such steps (14 deliveries), so seven times the total is what a saga costs before any of Orderflow's own
work: what the CPU target of issue 16 has to fit above (docs/benchmarks.md, "The floor of a step").
"""

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import aio_pika
import asyncpg
import psutil
import uvloop

from bench.usage import cpu_seconds, server_roots, tree_cpu_seconds

REPO_ROOT = Path(__file__).resolve().parents[1]
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
BODY = json.dumps({"orderId": "o-" + "x" * 30, "amount": "125.50", "lines": [{"sku": "SKU-1", "qty": 2}]}).encode()
WARMUP_SECONDS = 3.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (message_id text PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS outbox (id bigserial PRIMARY KEY, message_id text NOT NULL, body bytea NOT NULL);
"""
_INBOX = "INSERT INTO inbox (message_id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING 1"
_OUTBOX = "INSERT INTO outbox (message_id, body) VALUES ($1, $2)"


@dataclass(frozen=True)
class HopResult:
    in_flight: int
    db: bool
    seconds: float
    steps_per_second: float
    cpu_ms_per_step: dict[str, float]

    @property
    def total_ms(self) -> float:
        return round(sum(self.cpu_ms_per_step.values()), 3)


class Side:
    """One side of the step: takes a message from ``inbound``, (optionally) commits its transaction, and
    publishes to ``outbound`` with a confirm, then acknowledges."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel, pool: asyncpg.Pool | None) -> None:
        self.channel = channel
        self.pool = pool

    async def commit(self, message_id: str) -> None:
        if self.pool is None:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.fetchval(_INBOX, message_id)
            await conn.execute(_OUTBOX, message_id, BODY)

    async def send(self, queue: str) -> None:
        message = aio_pika.Message(BODY, message_id=uuid.uuid4().hex, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await self.channel.default_exchange.publish(message, routing_key=queue)


async def _connect(prefetch: int, db: str | None) -> tuple[aio_pika.abc.AbstractConnection, Side]:
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=prefetch)
    pool = await asyncpg.create_pool(db, min_size=2, max_size=prefetch) if db else None
    return connection, Side(channel, pool)


async def _declare(side: Side, *names: str) -> None:
    for name in names:
        await side.channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})


async def echo(commands: str, replies: str, prefetch: int, db: str | None) -> None:
    """The service side: every command answered by a reply, until stdin closes."""
    connection, side = await _connect(prefetch, db)
    queue = await side.channel.get_queue(commands)

    async def on_command(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await side.commit(message.message_id or "")
        await side.send(replies)
        await message.ack()

    await queue.consume(on_command)
    print(json.dumps({"ready": True}), flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await connection.close()


async def drive(in_flight: int, seconds: float, db: bool) -> HopResult:
    commands, replies = (f"bench.hop.{uuid.uuid4().hex[:10]}.{kind}" for kind in ("commands", "replies"))
    database = f"bench_hop_{uuid.uuid4().hex[:10]}" if db else None
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + f"/{database}" if database else None
    admin = await asyncpg.connect(ADMIN_DSN)
    child = None
    connection = None
    side: Side | None = None
    try:
        if database:
            await admin.execute(f'CREATE DATABASE "{database}"')
            setup = await asyncpg.connect(dsn)
            await setup.execute(_SCHEMA)
            await setup.close()
        connection, side = await _connect(in_flight, dsn)
        await _declare(side, commands, replies)
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.hop", "--role", "echo", "--commands", commands, "--replies", replies,
            "--in-flight", str(in_flight), *(["--dsn", dsn] if dsn else []),
            cwd=REPO_ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert child.stdout is not None and child.stdin is not None
        ready = await asyncio.wait_for(child.stdout.readline(), 30)
        if not ready:
            raise RuntimeError("the echo process did not start")
        done = 0
        stopping = False
        drained = asyncio.Event()

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal done, sent
            await side.commit(message.message_id or "")
            done += 1
            if not stopping:
                sent += 1
                await side.send(commands)
            await message.ack()
            if stopping and done == sent:
                drained.set()

        queue = await side.channel.get_queue(replies)
        await queue.consume(on_reply)
        sent = in_flight
        for _ in range(in_flight):
            await side.send(commands)
        await asyncio.sleep(WARMUP_SECONDS)  # a warm-up of fixed length, not a wait for a condition

        processes = {"orchestrator side": psutil.Process(os.getpid()), "service side": psutil.Process(child.pid)}
        servers = server_roots()
        before_cpu = {name: cpu_seconds(p) for name, p in processes.items()}
        before_servers = {name: _tree_cpu(roots) for name, roots in servers.items()}
        before_done, started = done, time.monotonic()
        await asyncio.sleep(seconds)
        steps, elapsed = done - before_done, time.monotonic() - started
        after_cpu = {name: cpu_seconds(p) for name, p in processes.items()}
        after_servers = {name: _tree_cpu(roots) for name, roots in servers.items()}
        stopping = True
        # The steps in flight finish before anything closes, so no handler is cut off mid-publish.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drained.wait(), 30)
        cpu = {name: after_cpu[name] - before_cpu[name] for name in processes}
        cpu |= {f"{name} server": after_servers[name] - before_servers[name] for name in servers}
        return HopResult(
            in_flight=in_flight,
            db=db,
            seconds=round(elapsed, 2),
            steps_per_second=round(steps / elapsed, 1),
            cpu_ms_per_step={name: round(1000 * value / max(steps, 1), 3) for name, value in cpu.items()},
        )
    finally:
        if child is not None and child.returncode is None:
            assert child.stdin is not None
            child.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.wait(), 10)
            if child.returncode is None:
                child.kill()
        if connection is not None and side is not None:
            await connection.close()
            if side.pool is not None:
                await side.pool.close()
            cleanup = await aio_pika.connect(AMQP_URL)
            async with cleanup:
                channel = await cleanup.channel()
                for name in (commands, replies):
                    await channel.queue_delete(name)
        if database:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


def _tree_cpu(roots: list[psutil.Process]) -> float:
    """CPU of a server's process trees; a root that went away meanwhile (a short-lived process taken for one)
    counts nothing."""
    total = 0.0
    for root in roots:
        with contextlib.suppress(psutil.Error):
            total += tree_cpu_seconds(root)
    return total


def render(result: HopResult) -> str:
    lines = [
        f"one step (a command and its reply{', each with a transaction' if result.db else ''}), "
        f"{result.in_flight} in flight: {result.steps_per_second} steps/s over {result.seconds} s",
        "CPU ms per step: "
        + ", ".join(f"{name} {ms:.3f}" for name, ms in result.cpu_ms_per_step.items())
        + f"; total {result.total_ms:.3f}",
        f"a saga's seven steps at this floor: {7 * result.total_ms:.1f} ms of CPU",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--db", action="store_true", help="one transaction per delivery on each side")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--role", choices=["drive", "echo"], default="drive", help=argparse.SUPPRESS)
    parser.add_argument("--commands", help=argparse.SUPPRESS)
    parser.add_argument("--replies", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "echo":
        uvloop.run(echo(args.commands, args.replies, args.in_flight, args.dsn))
        return
    result = uvloop.run(drive(args.in_flight, args.seconds, args.db))
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(asdict(result) | {"total_ms": result.total_ms}, indent=2) + "\n")


if __name__ == "__main__":
    main()
