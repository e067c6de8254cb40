"""The broker's floor: persistent messages with publisher confirms through a quorum queue of its own, published
from one child OS process and consumed in another (``python -m bench.floor_broker --role publish|consume``),
the queue deleted afterwards. bench/floor.py runs it.
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
from typing import Any

import aio_pika
import aiormq

from bench.floor_window import DRAIN_SECONDS, WARMUP_SECONDS, FloorError, Window, measured_window

#: The consumer's prefetch; it acks every ACK_EVERY deliveries with one multiple=True ack.
PREFETCH = 100
ACK_EVERY = 50
#: Marks the publisher's last message: everything before it has been confirmed.
END_TYPE = "floor.end"
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class BrokerFloor:
    """Persistent messages, publisher confirms, a quorum queue; producer and consumer in separate OS processes."""

    messages: int
    """Every message of the run, warm-up included: each was confirmed and consumed exactly once."""
    seconds: float
    """Length of the measured window, which opens after the warm-up."""
    published_per_second: float
    """Confirms received in the window, per second."""
    consumed_per_second: float
    """Deliveries received in the window, per second (acked with multiple=True every ACK_EVERY deliveries)."""
    in_flight: int
    """Publisher confirm window used: at most this many messages published and not yet confirmed."""


def queue_name() -> str:
    return f"bench.floor.{uuid.uuid4().hex[:12]}"


# --- the broker: children ------------------------------------------------------------------------------------


def _say(**report: Any) -> None:
    print(json.dumps(report), flush=True)


async def _hear_window() -> Window:
    line = await asyncio.to_thread(sys.stdin.readline)
    if not line:
        raise FloorError("the parent went away before the run started")
    return Window(**json.loads(line))


async def publish(amqp_url: str, queue: str, *, in_flight: int, body_bytes: int) -> None:
    """Publish until the window closes, keeping up to ``in_flight`` messages unconfirmed: the best a client can
    do, where one confirm at a time would measure the round trip instead of the broker."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = channel.default_exchange
        _say(ready=True)
        window = await _hear_window()
        padding = bytes(body_bytes - 8)
        slots = asyncio.Semaphore(in_flight)
        pending: set[asyncio.Task] = set()
        failures: list[str] = []
        confirmed = in_window = 0

        def settled(task: asyncio.Task) -> None:
            nonlocal confirmed, in_window
            pending.discard(task)
            slots.release()
            if (failure := _failure(task)) is not None:
                failures.append(failure)
                return
            confirmed += 1
            in_window += window.holds(time.monotonic())

        published = 0
        async with asyncio.timeout(window.deadline - time.monotonic()):
            while time.monotonic() < window.end and not failures:
                await slots.acquire()
                body = published.to_bytes(8, "big") + padding
                message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
                task = asyncio.create_task(exchange.publish(message, queue))
                pending.add(task)
                task.add_done_callback(settled)
                published += 1
            await asyncio.gather(*pending, return_exceptions=True)
            if failures:
                raise FloorError(f"{len(failures)} publishes failed, first: {failures[0]}")
            end = aio_pika.Message(b"", type=END_TYPE, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await exchange.publish(end, queue)
        _say(published=published, confirmed=confirmed, in_window=in_window)


def _failure(task: asyncio.Task) -> str | None:
    """Why a publish was not confirmed, or None when the broker acked it."""
    if task.cancelled():
        return "cancelled"
    if (error := task.exception()) is not None:
        return repr(error)
    return None if isinstance(task.result(), aiormq.spec.Basic.Ack) else f"not acked: {task.result()!r}"


async def consume(amqp_url: str, queue: str) -> None:
    """Consume with manual acks until the publisher's end marker, checking every sequence number arrives once."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        source = await channel.get_queue(queue, ensure=True)
        async with source.iterator() as deliveries:
            _say(ready=True)
            window = await _hear_window()
            seen = bytearray()
            consumed = in_window = duplicates = unacked = 0
            async with asyncio.timeout(window.deadline - time.monotonic()):
                async for message in deliveries:
                    if message.type == END_TYPE:
                        await message.ack(multiple=True)
                        break
                    in_window += window.holds(time.monotonic())
                    seq = int.from_bytes(message.body[:8], "big")
                    if seq >= len(seen):
                        seen.extend(bytes(seq + 1 - len(seen)))
                    duplicates += seen[seq]
                    seen[seq] = 1
                    consumed += 1
                    unacked += 1
                    if unacked >= ACK_EVERY:
                        await message.ack(multiple=True)
                        unacked = 0
        _say(consumed=consumed, distinct=sum(seen), highest=len(seen) - 1, duplicates=duplicates, in_window=in_window)


# --- the broker: parent --------------------------------------------------------------------------------------


class _Child:
    """One ``python -m bench.floor_broker --role ...`` process, speaking JSON lines on its stdin and stdout."""

    def __init__(self, role: str, process: asyncio.subprocess.Process) -> None:
        self.role, self.process = role, process

    @classmethod
    async def start(cls, role: str, amqp_url: str, *args: str) -> "_Child":
        # The URL travels in the environment, not argv, where any user's ps would show its password.
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.floor_broker",
            "--role",
            role,
            *args,
            cwd=REPO_ROOT,
            env={**os.environ, "ORDERFLOW_AMQP_URL": amqp_url},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(role, process)

    async def hear(self) -> dict:
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if not line:
            raise FloorError(f"the {self.role} process exited with {await self.process.wait()} (its stderr is above)")
        return json.loads(line)

    def tell(self, window: Window) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(asdict(window)).encode() + b"\n")

    async def stop(self, *, grace: float) -> None:
        """Let a child that has reported close its connection cleanly; kill one that has not within ``grace``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), grace)
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()


def verify_broker_run(published: dict, consumed: dict) -> int:
    """The number of messages of the run, once every one published was confirmed and consumed exactly once."""
    count = published["published"]
    if published["confirmed"] != count:
        raise FloorError(f"{count} messages published, {published['confirmed']} confirmed")
    if (consumed["consumed"], consumed["distinct"], consumed["duplicates"]) != (count, count, 0):
        raise FloorError(f"{count} messages published, consumed: {consumed}")
    if consumed["highest"] != count - 1:
        raise FloorError(f"sequence numbers reached {consumed['highest']} for {count} messages")
    return count


async def _run_children(amqp_url: str, queue: str, *, seconds: float, in_flight: int, body_bytes: int) -> BrokerFloor:
    children: list[_Child] = []
    reported = False
    try:
        async with asyncio.timeout(60 + WARMUP_SECONDS + seconds + DRAIN_SECONDS):
            # The consumer is up first, so the queue never holds a backlog the publisher did not cause.
            consumer = await _Child.start("consume", amqp_url, "--queue", queue)
            children.append(consumer)
            await consumer.hear()
            publisher = await _Child.start(
                "publish", amqp_url, "--queue", queue, "--in-flight", str(in_flight), "--body-bytes", str(body_bytes)
            )
            children.append(publisher)
            await publisher.hear()
            window = measured_window(seconds)
            for child in children:
                child.tell(window)
            published = await publisher.hear()
            consumed = await consumer.hear()
            reported = True
    finally:
        for child in children:
            await child.stop(grace=5.0 if reported else 0.0)
    return BrokerFloor(
        messages=verify_broker_run(published, consumed),
        seconds=seconds,
        published_per_second=published["in_window"] / seconds,
        consumed_per_second=consumed["in_window"] / seconds,
        in_flight=in_flight,
    )


async def measure_broker(
    amqp_url: str, *, seconds: float = 10.0, in_flight: int = 64, body_bytes: int = 600
) -> BrokerFloor:
    """Publish persistent messages with publisher confirms through a durable quorum queue from one process while
    another consumes them with manual acks (prefetch PREFETCH, acks batched with multiple=True)."""
    if seconds <= 0 or in_flight < 1 or body_bytes < 8:
        raise ValueError("seconds must be positive, in_flight at least 1, body_bytes at least 8 (the sequence number)")
    name = queue_name()
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
    try:
        return await _run_children(amqp_url, name, seconds=seconds, in_flight=in_flight, body_bytes=body_bytes)
    finally:
        # A fresh connection: the broker may have dropped the first one mid-run.
        async with await aio_pika.connect(amqp_url) as connection:
            channel = await connection.channel()
            await channel.queue_delete(name)


# --- the children's command line -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """A child of ``measure_broker``: the URL comes in the environment, the window on stdin."""
    parser = argparse.ArgumentParser(prog="python -m bench.floor_broker", description=__doc__)
    parser.add_argument("--role", choices=["publish", "consume"], required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--body-bytes", type=int, default=600)
    args = parser.parse_args(argv)
    amqp_url = os.environ["ORDERFLOW_AMQP_URL"]
    if args.role == "publish":
        asyncio.run(publish(amqp_url, args.queue, in_flight=args.in_flight, body_bytes=args.body_bytes))
    else:
        asyncio.run(consume(amqp_url, args.queue))


if __name__ == "__main__":
    main()
