"""Where one saga's time goes, hop by hop: handling, waiting for the outbox relay, the broker.

    .venv/bin/python -m bench.timeline --count 40
    .venv/bin/python -m bench.timeline --count 100 --json timeline.json

The latency profile behind bench.load's end-to-end figure. On a private installation with tracing on (every
process writes its spans to a file, as TRACE_FILE does in development), it sends happy-path orders one at a
time, so nothing queues, and reads each saga's spans back: for every message on the saga's path, the time
its handler took (the `handle <type>` span: transaction, inbox, effects, outbox, commit), the time from that
span's end until the publish of what it wrote began (relay; 0 when the consumer's hand-over to the relay
started publishing before the span closed), and the time from that publish until the next handler started
(broker: routing, the quorum queue's append and the publisher confirm, delivery, decoding). It prints the
median of each, per hop and in total. Tracing itself costs time (every query is a span), so the figures run
above bench.load's; their proportions are what this is for.
Exit status: 0 when every order ended CONFIRMED and every saga's path was found in its spans.
"""

import argparse
import asyncio
import json
import statistics
import sys
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika

from bench import installation
from bench.cli import command_parser, main_of
from bench.loadgen import Driver, OrderFactory, OutcomeTap, Publisher
from orderctl.config import SERVICES

#: The happy path's messages in order, each with the process handling it.
PATH = [
    ("OrderRequested", "orchestrator"),
    ("CheckInventory", "inventory"),
    ("InventoryChecked", "orchestrator"),
    ("ReserveInventory", "inventory"),
    ("InventoryReserved", "orchestrator"),
    ("ProcessPayment", "payment"),
    ("PaymentProcessed", "orchestrator"),
    ("CreateOrderRecord", "orders"),
    ("OrderRecordCreated", "orchestrator"),
    ("NotifyCustomer", "notify"),
    ("CustomerNotified", "orchestrator"),
]
WARM_UP = 5


@dataclass
class Span:
    service: str
    kind: str
    name: str
    start: float
    end: float
    order_id: str | None
    trace_id: str


@dataclass
class Hop:
    message: str
    service: str
    handle_ms: float
    relay_ms: float
    broker_ms: float | None
    """Until the next hop's handler started; None for the last hop (the outcome goes to the shop)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = command_parser("python -m bench.timeline", __doc__)
    parser.add_argument("--count", type=int, default=40, help="orders, sent one at a time")
    parser.add_argument("--json", type=Path, help="write every saga's hops here")
    parser.add_argument("--keep", action="store_true", help="keep the databases, vhost, logs and spans")
    return parser.parse_args(argv)


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def read_spans(path: Path) -> list[Span]:
    spans = []
    for line in path.read_text().splitlines():
        raw: dict[str, Any] = json.loads(line)
        kind = raw["kind"].removeprefix("SpanKind.")
        if kind == "CLIENT":  # the queries inside a handler: counted in its span
            continue
        spans.append(
            Span(
                service=raw["resource"]["attributes"]["service.name"].removeprefix("orderflow-"),
                kind=kind,
                name=raw["name"],
                start=_seconds(raw["start_time"]),
                end=_seconds(raw["end_time"]),
                order_id=(raw.get("attributes") or {}).get("orderflow.order_id"),
                trace_id=raw["context"]["trace_id"],
            )
        )
    return sorted(spans, key=lambda s: s.start)


def hops_of(order_id: str, spans: list[Span]) -> list[Hop] | None:
    """The saga's path through its spans; None when a hop is missing. The first publish a process made in the
    saga's trace after one of its handlers started is what that handler wrote."""
    handles = {s.name.removeprefix("handle "): s for s in spans if s.order_id == order_id and s.kind == "INTERNAL"}
    if any(message not in handles for message, _ in PATH):
        return None
    hops = []
    for i, (message, service) in enumerate(PATH):
        handled = handles[message]
        publish = next(
            (
                s
                for s in spans
                if s.kind == "PRODUCER"
                and s.service == service
                and s.trace_id == handled.trace_id
                and s.start >= handled.start
            ),
            None,
        )
        if publish is None:
            return None
        following = handles[PATH[i + 1][0]] if i + 1 < len(PATH) else None
        hops.append(
            Hop(
                message=message,
                service=service,
                handle_ms=1000 * (min(handled.end, publish.start) - handled.start),
                relay_ms=1000 * max(0.0, publish.start - handled.end),
                broker_ms=None if following is None else 1000 * (following.start - publish.start),
            )
        )
    return hops


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def render(sagas: list[list[Hop]]) -> str:
    lines = [f"{len(sagas)} sagas, one at a time; medians in ms (tracing on: every query is a span)", ""]
    lines.append(f"{'message':<20} {'process':<13} {'handle':>7} {'relay':>7} {'broker':>7}")
    totals = {"handle": 0.0, "relay": 0.0, "broker": 0.0}
    for i, (message, service) in enumerate(PATH):
        handle = median([s[i].handle_ms for s in sagas])
        relay = median([s[i].relay_ms for s in sagas])
        broker_values = [s[i].broker_ms for s in sagas if s[i].broker_ms is not None]
        broker = median(broker_values) if broker_values else None
        totals["handle"] += handle
        totals["relay"] += relay
        totals["broker"] += broker or 0.0
        shown = f"{broker:7.2f}" if broker is not None else f"{'-':>7}"
        lines.append(f"{message:<20} {service:<13} {handle:7.2f} {relay:7.2f} {shown}")
    whole = sum(totals.values())
    lines.append(f"{'sum':<34} {totals['handle']:7.2f} {totals['relay']:7.2f} {totals['broker']:7.2f}")
    lines.append(
        "shares: "
        + ", ".join(f"{name} {100 * value / whole:.0f} %" for name, value in totals.items())
        + f" of {whole:.1f} ms from OrderRequested handled to order.confirmed published"
    )
    return "\n".join(lines)


async def timeline(args: argparse.Namespace, tmp: Path) -> int:
    spans_file = tmp / "spans.jsonl"
    env = {spec.name: {"TRACE_FILE": str(spans_file)} for spec in SERVICES}
    async with installation.private(tmp=tmp, floor_seconds=0, keep=args.keep, extra_env=env) as inst:
        connection = await aio_pika.connect_robust(inst.settings.amqp_url)
        try:
            tap, publisher = OutcomeTap(), Publisher()
            await tap.start(await connection.channel())
            await publisher.start(await connection.channel())
            driver = Driver(tap, publisher, OrderFactory(uuid.uuid4().hex[:8], {"happy": 1}))
            print(f"sending {args.count + WARM_UP} orders one at a time ...", file=sys.stderr)
            flights = await driver.closed_loop(in_flight=1, duration=None, count=args.count + WARM_UP, deadline=30)
        finally:
            await connection.close()
        await asyncio.sleep(1.0)  # the processes export their spans every 200 ms; stopping flushes the rest
    confirmed = [f for f in flights if f.outcome is not None and f.outcome.status == "CONFIRMED"]
    measured = [f.order.order_id for f in flights[WARM_UP:]]
    spans = read_spans(spans_file)
    sagas = [hops for hops in (hops_of(order_id, spans) for order_id in measured) if hops is not None]
    print(render(sagas) if sagas else "no saga's path was found in the spans")
    if args.json:
        args.json.write_text(json.dumps({"sagas": [[asdict(h) for h in s] for s in sagas]}, indent=2))
    return 0 if len(confirmed) == len(flights) and len(sagas) == len(measured) else 1


def main() -> None:
    args = parse_args()
    main_of(lambda tmp: timeline(args, tmp), prefix="orderflow-timeline-", keep=args.keep)


if __name__ == "__main__":
    main()
