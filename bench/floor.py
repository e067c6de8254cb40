"""This machine's physical floor for the benchmark: the broker's own rate for persistent, confirmed messages
through a quorum queue, and PostgreSQL's rate of small committed transactions with synchronous_commit on.
No saga on this machine can beat these figures; bench/load.py reports its throughput against them.

    .venv/bin/python -m bench.floor --seconds 10 --json floor.json

The broker floor (bench/floor_broker.py) publishes from one child OS process and consumes in another through
a quorum queue of its own, deleted afterwards. The PostgreSQL floor (bench/floor_postgres.py) runs in a
scratch database, dropped afterwards. The two are measured one after the other, never together, so that
neither steals the other's CPU.
"""

import argparse
import asyncio
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.cli import command_parser
from bench.floor_broker import PREFETCH, BrokerFloor, measure_broker
from bench.floor_postgres import PostgresFloor, measure_postgres
from bench.floor_window import WARMUP_SECONDS


@dataclass(frozen=True)
class Floor:
    broker: BrokerFloor
    postgres: PostgresFloor

    def as_dict(self) -> dict:
        return asdict(self)


async def measure_floor(amqp_url: str, admin_dsn: str, *, seconds: float = 10.0) -> Floor:
    """Both floors with their default settings, the broker's first."""
    broker = await measure_broker(amqp_url, seconds=seconds)
    return Floor(broker=broker, postgres=await measure_postgres(admin_dsn, seconds=seconds))


# --- the command line ----------------------------------------------------------------------------------------


def render(floor: Floor, *, body_bytes: int) -> str:
    b, p = floor.broker, floor.postgres
    rows = [
        ("published", b.published_per_second, b.messages, f"persistent, quorum queue, confirm window {b.in_flight}"),
        ("consumed", b.consumed_per_second, b.messages, f"manual acks, prefetch {PREFETCH}, {body_bytes}-byte bodies"),
        ("committed", p.per_second, p.transactions, f"one-row INSERT, synchronous_commit=on, {p.connections} conns"),
    ]
    lines = [
        f"floor of this machine ({os.cpu_count()} CPUs): {b.seconds:g} s measured after {WARMUP_SECONDS:g} s warm-up",
        f"{'':<10} {'per second':>11} {'whole run':>10}  settings",
    ]
    lines += [f"{name:<10} {rate:>11,.0f} {count:>10,}  {settings}" for name, rate, count, settings in rows]
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = command_parser("python -m bench.floor", __doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measured window")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--amqp-url", help="default: ORDERFLOW_AMQP_URL, else the local broker")
    parser.add_argument("--admin-dsn", help="default: ORDERFLOW_ADMIN_DATABASE_URL, else the local postgres")
    parser.add_argument("--in-flight", type=int, default=64, help="publisher confirm window")
    parser.add_argument("--body-bytes", type=int, default=600)
    parser.add_argument("--connections", type=int, default=8, help="concurrent PostgreSQL connections")
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> None:
    # Imported here: it pulls in every service, which a plain import of this module has no need of.
    from orderctl.config import CtlSettings

    settings = CtlSettings()
    broker = await measure_broker(
        args.amqp_url or settings.amqp_url, seconds=args.seconds, in_flight=args.in_flight, body_bytes=args.body_bytes
    )
    postgres = await measure_postgres(
        args.admin_dsn or settings.admin_database_url, seconds=args.seconds, connections=args.connections
    )
    floor = Floor(broker=broker, postgres=postgres)
    print(render(floor, body_bytes=args.body_bytes))
    if args.json:
        args.json.write_text(json.dumps(floor.as_dict(), indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(_main(_parse(argv)))


if __name__ == "__main__":
    main()
