"""Parked sagas: N orders waiting at ProcessPayment for a 3-D Secure webhook, held only in database rows.

    .venv/bin/python -m bench.park --sagas 3000
    .venv/bin/python -m bench.park --sagas 100000 --release 20 --json park.json

GitHub issue 8: 100,000 sagas waiting (for example on payment webhooks) must not grow any process's memory.
On a private installation (bench/installation.py) whose workflow gives ProcessPayment --hold-seconds instead of
60 s, it publishes N orders paid with pm_card_threeDSecure2Required: the local Stripe server stops each
PaymentIntent in requires_action, the payment service remembers the command (pending_reply) and the saga waits
for a webhook that comes only when the customer authenticates. It keeps at most --in-flight orders published
but not yet parked, and at 0 %, 10 %, ... 100 % parked records each process's RSS, the rows of the tables
holding a parked saga and each database's size. With --release K it then authenticates K of them, spread over
the run, and waits for each to end CONFIRMED. Everything it built is removed at the end, on Ctrl-C and on error
too (--keep keeps the databases, the vhost and the logs).
Exit status: 0 when all N parked (and every released one ended CONFIRMED), 1 otherwise, 130 on Ctrl-C.
"""

import argparse
import asyncio
import json
import math
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import asyncpg
from tqdm import tqdm

from bench import installation
from bench.cli import command_parser, main_of
from bench.installation import Installation
from bench.load import sample_forever
from bench.loadgen import CUSTOMER, Flight, OutcomeTap, PlannedOrder, Publisher, catalog_product, settle
from bench.park_report import OURS, WARM_PERCENT, Milestone, ParkReport, Release, growth, render
from bench.results import summarize
from bench.usage import ProcessWatch
from contracts.base import OrderItem
from contracts.orders import OrderRequested
from orchestrator.definition import engine_document
from orchestrator.state import RUNNING
from orderctl.config import CtlSettings
from orderctl.sandbox import database_names, db, http_json

#: The local Stripe server leaves a PaymentIntent with this test card in requires_action (devservers/stripe_server).
THREE_DS_PAYMENT_METHOD = "pm_card_threeDSecure2Required"
STEP = "ProcessPayment"
#: Once authenticated, a parked order is the happy path: bench.results then expects it CONFIRMED.
PATH = "happy"
MILESTONES = tuple(range(0, 101, 10))
#: The tables a parked saga's rows live in, by the process owning the database (from the migrations).
TABLES = {
    "orchestrator": ["saga", "saga_history", "saga_timer", "inbox", "outbox"],
    "payment": ["payment", "pending_reply", "inbox", "outbox"],
    "inventory": ["reservation", "reservation_line", "inbox", "outbox"],
}
#: The inventory sweeper would release a parked order's reservation after its default hour: keep it past the hold.
RESERVATION_MARGIN_SECONDS = 600


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = command_parser("python -m bench.park", __doc__)
    parser.add_argument("--sagas", type=int, required=True, help="orders to park")
    parser.add_argument("--in-flight", type=int, help="orders published but not parked yet (default 64, at most N/10)")
    parser.add_argument("--hold-seconds", type=int, default=7200, help="ProcessPayment's timeout: above the run")
    parser.add_argument("--release", type=int, nargs="?", const=10, default=0, help="authenticate this many after")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds without progress before giving up")
    parser.add_argument("--poll-seconds", type=float, default=0.5, help="how often the parked count is read")
    parser.add_argument("--sample-seconds", type=float, default=1.0, help="RSS sampling interval between milestones")
    parser.add_argument("--json", type=Path, help="write every figure, the arguments and the machine here")
    parser.add_argument("--keep", action="store_true", help="keep the databases, vhost and logs (not the processes)")
    args = parser.parse_args(argv)
    if args.sagas <= 0 or (args.in_flight is not None and args.in_flight <= 0) or args.release < 0:
        parser.error("--sagas and --in-flight must be positive, --release not negative")
    # A tenth of N at most, so that each 10 % milestone is read at a moment of its own even in a small run.
    args.in_flight = args.in_flight or max(1, min(64, args.sagas // 10))
    args.release = min(args.release, args.sagas)
    return args


# -- the installation ------------------------------------------------------------------------------
def parking_env(tmp: Path, hold_seconds: int) -> dict[str, dict[str, str]]:
    """The workflow is data: workflow.json in the engine's form, only ProcessPayment's TimeoutSeconds changed."""
    document = engine_document()
    document["States"][STEP]["TimeoutSeconds"] = hold_seconds
    workflow = tmp / "workflow.json"
    workflow.write_text(json.dumps(document, indent=2))
    return {
        "orchestrator": {"WORKFLOW_FILE": str(workflow)},
        "inventory": {"RESERVATION_MAX_AGE_SECONDS": str(hold_seconds + RESERVATION_MARGIN_SECONDS)},
    }


def parked_order(prefix: str, n: int) -> PlannedOrder:
    # Spread over the bench catalog's products (each with ample stock) so reservations do not queue on one row.
    items = [OrderItem(productId=catalog_product(n), quantity=1)]
    request = OrderRequested(
        orderId=f"{prefix}{n:07d}", customer=CUSTOMER, items=items, paymentMethodId=THREE_DS_PAYMENT_METHOD
    )
    return PlannedOrder(request.orderId, PATH, request.model_dump_json().encode())


class Databases:
    """Admin connections to the databases a parked saga lives in (benchmarks read every database; services never
    do). Every saga of the private installation is one of ours."""

    def __init__(self, settings: CtlSettings, conns: dict[str, asyncpg.Connection]) -> None:
        self.conns = conns
        self.names = dict(zip(OURS, database_names(settings), strict=True))

    @classmethod
    async def open(cls, settings: CtlSettings) -> "Databases":
        return cls(settings, {name: await db(settings, name) for name in TABLES})

    async def close(self) -> None:
        for conn in self.conns.values():
            await conn.close()

    async def pending_replies(self) -> int:
        """The cheap progress count: the payment service answers ProcessPayment later, so the saga waits."""
        return await self.conns["payment"].fetchval("SELECT count(*) FROM pending_reply")

    async def parked(self) -> int:
        """Sagas RUNNING at ProcessPayment whose command payment holds. The two sets live in two databases; with
        no webhook and no timeout, pending_reply's orders are a subset of the waiting sagas, so the smaller count
        is their intersection (``parked_ids`` checks it exactly)."""
        query = "SELECT count(*) FROM saga WHERE status = $1 AND current_state = $2"
        waiting = await self.conns["orchestrator"].fetchval(query, RUNNING, STEP)
        return min(waiting, await self.pending_replies())

    async def parked_ids(self) -> set[str]:
        query = "SELECT order_id FROM saga WHERE status = $1 AND current_state = $2"
        waiting = {r["order_id"] for r in await self.conns["orchestrator"].fetch(query, RUNNING, STEP)}
        pending = {r["order_id"] for r in await self.conns["payment"].fetch("SELECT order_id FROM pending_reply")}
        return waiting & pending

    async def intents(self, order_ids: list[str]) -> dict[str, str]:
        query = "SELECT order_id, payment_intent_id FROM pending_reply WHERE order_id = ANY($1::text[])"
        return {r["order_id"]: r["payment_intent_id"] for r in await self.conns["payment"].fetch(query, order_ids)}

    async def rows(self) -> dict[str, int]:
        # Exact counts, not the statistics' estimates: taken only at the eleven milestones.
        return {
            f"{process}.{table}": await conn.fetchval(f"SELECT count(*) FROM {table}")  # our own table names, not input
            for process, conn in self.conns.items()
            for table in TABLES[process]
        }

    async def sizes(self) -> dict[str, int]:
        query = "SELECT datname, pg_database_size(datname) AS bytes FROM pg_database WHERE datname = ANY($1::text[])"
        found = {
            r["datname"]: r["bytes"] for r in await self.conns["orchestrator"].fetch(query, list(self.names.values()))
        }
        return {process: found.get(name, 0) for process, name in self.names.items()}


# -- parking ---------------------------------------------------------------------------------------
@dataclass
class Recorder:
    inst: Installation
    admin: asyncpg.Connection
    watch: ProcessWatch
    dbs: Databases
    started: float | None = None
    """time.monotonic() of the first publish; None before it (the 0 % milestone)."""

    async def milestone(self, percent: int) -> Milestone:
        self.watch.sample(await self.inst.pids(self.admin))
        rss = {name: series[-1][1] for name, series in self.watch.series().items() if series}
        parked, rows, sizes = await self.dbs.parked(), await self.dbs.rows(), await self.dbs.sizes()
        seconds = 0.0 if self.started is None else round(time.monotonic() - self.started, 2)
        return Milestone(percent, parked, seconds, rss, rows, sizes)


@dataclass(frozen=True)
class Parking:
    flights: list[Flight]
    milestones: list[Milestone]
    seconds: float
    stalled: bool


async def park(args: argparse.Namespace, recorder: Recorder, tap: OutcomeTap, publisher: Publisher) -> Parking:
    """Publish until N are parked, keeping at most --in-flight ahead of the parked count (a closed loop, so the
    installation's pace sets ours); give up after --deadline seconds without progress."""
    n, prefix = args.sagas, f"ORDER#park-{uuid.uuid4().hex[:6]}-"
    marks = [(p, math.ceil(n * p / 100)) for p in MILESTONES[1:]]
    milestones, flights, parked, stalled = [await recorder.milestone(0)], list[Flight](), 0, False
    bar = tqdm(total=n, desc="parked", unit="saga", file=sys.stderr, dynamic_ncols=True, leave=False)
    recorder.started = started = progressed = time.monotonic()
    try:
        while parked < n:
            due = range(len(flights), min(n, parked + args.in_flight))
            batch = [tap.expect(parked_order(prefix, i), time.monotonic()) for i in due]
            flights += batch
            await asyncio.gather(*(publisher.publish(f) for f in batch))
            await asyncio.sleep(args.poll_seconds)
            now = await recorder.dbs.pending_replies()
            if now > parked:
                bar.update(now - parked)
                parked, progressed = now, time.monotonic()
            elif time.monotonic() - progressed > args.deadline:
                stalled = True
                break
            while marks and parked >= marks[0][1]:
                milestones.append(await recorder.milestone(marks.pop(0)[0]))
    finally:
        bar.close()
    return Parking(flights, milestones, round(progressed - started, 3), stalled)


# -- release ---------------------------------------------------------------------------------------
def spread(orders: list[PlannedOrder], k: int) -> list[PlannedOrder]:
    """``k`` orders evenly over the run, the first (parked longest) and the last included."""
    k = min(k, len(orders))
    if k <= 1:
        return orders[:k]
    return [orders[round(i * (len(orders) - 1) / (k - 1))] for i in range(k)]


async def release(
    args: argparse.Namespace, inst: Installation, dbs: Databases, tap: OutcomeTap, orders: list[PlannedOrder]
) -> Release:
    """Authenticate a sample as their customers would (the Stripe stand-in's 3-D Secure test route); its webhook
    then resumes each saga."""
    assert inst.stack is not None
    sample = spread(orders, args.release)
    intents = await dbs.intents([o.order_id for o in sample])
    flights, errors = [], []
    for order in sample:
        flight = tap.expect(order, time.monotonic())  # a fresh future: the outcome is awaited from here
        flights.append(flight)
        url = f"{inst.stack.stripe_url}/_test/payment_intents/{intents.get(order.order_id)}/authenticate"
        status, body = await asyncio.to_thread(http_json, url, method="POST", body={"outcome": "succeed"})
        if status != 200:
            errors.append(f"{order.order_id}: HTTP {status} {body}")
            flight.done.cancel()  # counted as unfinished
    await settle(flights, args.deadline)
    return Release(summarize(flights), errors, await dbs.parked())


async def measure(args: argparse.Namespace, inst: Installation) -> ParkReport:
    settings = inst.settings
    connection = await aio_pika.connect_robust(settings.amqp_url)
    admin = await asyncpg.connect(settings.admin_database_url)
    dbs = await Databases.open(settings)
    watch = ProcessWatch(inst.process_names())
    sampler = asyncio.create_task(sample_forever(watch, inst, admin, args.sample_seconds))
    try:
        tap, publisher = OutcomeTap(), Publisher()
        await tap.start(await connection.channel())
        await publisher.start(await connection.channel())
        watch.open_window(await inst.pids(admin))
        parking = await park(args, Recorder(inst, admin, watch, dbs), tap, publisher)
        per_process = watch.finish(await inst.pids(admin))
        orders = [f.order for f in parking.flights]
        parked = len(await dbs.parked_ids() & {o.order_id for o in orders})
        ended = Counter(f.outcome.status for f in parking.flights if f.outcome is not None)
        released = await release(args, inst, dbs, tap, orders) if args.release and parked else None
    finally:
        sampler.cancel()
        await dbs.close()
        await admin.close()
        await connection.close()
    warm = next((m for m in parking.milestones if m.percent == WARM_PERCENT), parking.milestones[0])
    end = parking.milestones[-1]
    return ParkReport(
        arguments={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        installation=inst.describe(),
        sagas=args.sagas,
        parked=parked,
        publish_failed=sum(1 for f in parking.flights if f.publish_error is not None),
        ended_while_parking=dict(ended),
        seconds=parking.seconds,
        stalled=parking.stalled,
        milestones=parking.milestones,
        rss_growth=growth(warm.rss_bytes, end.rss_bytes, end.parked - warm.parked),
        database_growth=growth(warm.database_bytes, end.database_bytes, end.parked - warm.parked),
        per_process=per_process,
        rss_series=watch.series(),
        restarts=inst.restarts(),
        release=released,
    )


# -- text ------------------------------------------------------------------------------------------
# -- main ------------------------------------------------------------------------------------------
async def run(args: argparse.Namespace, tmp: Path) -> int:
    env = parking_env(tmp, args.hold_seconds)
    async with installation.private(tmp=tmp, floor_seconds=0, keep=args.keep, extra_env=env) as inst:
        report = await measure(args, inst)
    # Printed after the teardown, so the report is the last thing on the terminal.
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(report.as_json(), indent=2, default=str) + "\n")
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    main_of(lambda tmp: run(args, tmp), prefix="orderflow-park-", keep=args.keep)


if __name__ == "__main__":
    main()
