"""Load generator: drive order sagas through a whole installation and report throughput, latency, and cost.

    .venv/bin/python -m bench.load --duration 30 --rate 20
    .venv/bin/python -m bench.load --count 500 --in-flight 8 --mix happy=90,declined=4,nostock=3,record_error=3
    .venv/bin/python -m bench.load --saturate --step-seconds 20 --json saturate.json

In one run: measure the machine's floor (bench/floor.py) unless --floor-seconds 0; build a private installation
(fresh vhost, five fresh databases, every process and the development servers under orderctl's supervisor)
or use a running one (--external); warm up; publish OrderRequested at a fixed rate (open loop) or with a
fixed number in flight (closed loop) and wait for every outcome; print sagas/s, latency, per-step latency,
outcomes by path, each process's CPU and memory, the servers' CPU, what one saga costs in AMQP deliveries
and PostgreSQL transactions, and the ceiling the floor implies. Everything it built is removed at the end,
on Ctrl-C and on error too (--keep keeps the databases, the vhost and the logs; the processes always stop).
Exit status: 0 when every order ended as its path expects, 1 otherwise, 130 on Ctrl-C.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import asyncpg
from tqdm import tqdm

from bench import installation
from bench.cli import command_parser, main_of
from bench.counters import (
    UNITS,
    CommitReading,
    agreed,
    commits_between,
    handled_by_process,
    idle_commits,
    step_latencies,
    xact_commits,
)
from bench.installation import BACKENDS, Installation
from bench.loadgen import Driver, Flight, OrderFactory, OutcomeTap, Publisher, parse_mix, settle
from bench.profile import Profiler
from bench.report import Report, as_json, render, results_text
from bench.results import RunResults, SagaCost, ceiling_of, summarize
from bench.saturate import SaturationPlan, SaturationStep, saturate
from bench.usage import ProcessWatch, ServerWatch

#: Orders in flight during the warm-up, which fills connection pools and caches before anything is counted.
WARMUP_IN_FLIGHT = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = command_parser("python -m bench.load", __doc__)
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--rate", type=float, help="open loop: orders per second, on a fixed schedule (default 10)")
    how.add_argument("--in-flight", type=int, help="closed loop: this many orders in flight at all times")
    how.add_argument("--saturate", action="store_true", help="step the rate up until the installation falls behind")
    parser.add_argument("--duration", type=float, help="seconds of sending (default 30 unless --count)")
    parser.add_argument("--count", type=int, help="orders to send (with --duration: whichever ends first)")
    parser.add_argument("--mix", default="happy=100", help="weights by path: happy, declined, nostock, record_error")
    parser.add_argument("--floor-seconds", type=float, default=10.0, help="each floor measurement; 0 skips it")
    parser.add_argument("--warmup", type=int, default=20, help="orders sent (and waited for) before measuring")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds to wait for outcomes after sending")
    parser.add_argument("--json", type=Path, help="write every figure, the arguments and the machine here")
    parser.add_argument("--external", action="store_true", help="use the installation the ORDERFLOW_* env names")
    parser.add_argument("--keep", action="store_true", help="keep the databases, vhost and logs (not the processes)")
    parser.add_argument("--profile", type=Path, help="record each process with py-spy into this directory")
    parser.add_argument("--sample-seconds", type=float, default=1.0, help="CPU/RSS sampling interval")
    sat = parser.add_argument_group("--saturate")
    sat.add_argument("--start-rate", type=float, default=10.0)
    sat.add_argument("--factor", type=float, default=1.5, help="rate multiplier from one step to the next")
    sat.add_argument("--step-seconds", type=float, default=20.0)
    sat.add_argument("--max-rate", type=float, default=2000.0)
    sat.add_argument("--p99-limit", type=float, default=1.0, help="seconds; a step at or above it is not sustained")
    args = parser.parse_args(argv)
    try:
        args.weights = parse_mix(args.mix)
    except ValueError as exc:
        parser.error(str(exc))
    if not args.saturate and args.in_flight is None and args.rate is None:
        args.rate = 10.0
    if args.duration is None and args.count is None:
        args.duration = 30.0
    if (args.rate is not None and args.rate <= 0) or (args.in_flight is not None and args.in_flight <= 0):
        parser.error("--rate and --in-flight must be positive")
    return args


# -- the run ---------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def chosen_installation(args: argparse.Namespace, tmp: Path) -> AsyncIterator[Installation]:
    if args.external:
        async with installation.external(floor_seconds=args.floor_seconds) as inst:
            yield inst
    else:
        async with installation.private(tmp=tmp, floor_seconds=args.floor_seconds, keep=args.keep) as inst:
            yield inst


def progress(tap: OutcomeTap, total: int | None, desc: str) -> Callable[[], None]:
    """A tqdm bar on stderr counting outcomes; returns its closer."""
    bar = tqdm(total=total, desc=desc, unit="saga", file=sys.stderr, dynamic_ncols=True, leave=False)
    tap.on_outcome = lambda: bar.update(1)

    def close() -> None:
        tap.on_outcome = lambda: None
        bar.close()

    return close


async def sample_forever(watch: ProcessWatch, inst: Installation, admin: asyncpg.Connection, interval: float) -> None:
    while True:
        watch.sample(await inst.pids(admin))
        await asyncio.sleep(interval)


async def warm_up(driver: Driver, args: argparse.Namespace) -> RunResults:
    """Send the warm-up orders and wait for them; if any went wrong, say so (the caller then stops)."""
    flights: list[Flight] = []
    if args.warmup > 0:
        close = progress(driver.tap, args.warmup, "warm-up")
        try:
            flights = await driver.closed_loop(
                in_flight=min(WARMUP_IN_FLIGHT, args.warmup), duration=None, count=args.warmup, deadline=args.deadline
            )
            await settle(flights, args.deadline)
        finally:
            close()
    results = summarize(flights)
    if not results.ok:
        print("the warm-up went wrong, so nothing is measured:\n" + results_text(results), file=sys.stderr)
    return results


async def drive(driver: Driver, args: argparse.Namespace) -> tuple[list[Flight], list[SaturationStep] | None]:
    """The measured orders: a saturation series, or one open- or closed-loop run."""
    if args.saturate:
        plan = SaturationPlan(
            start_rate=args.start_rate,
            factor=args.factor,
            step_seconds=args.step_seconds,
            max_rate=args.max_rate,
            p99_limit=args.p99_limit,
            deadline=args.deadline,
        )
        steps, flights = await saturate(
            driver, plan, lambda rate: progress(driver.tap, round(rate * plan.step_seconds), f"{rate:.1f}/s")
        )
        return flights, steps
    expected = args.count
    if args.rate is not None and args.duration is not None:
        expected = min(expected or 10**9, round(args.rate * args.duration))
    close = progress(driver.tap, expected, "sagas")
    try:
        if args.rate is not None:
            flights = await driver.open_loop(rate=args.rate, duration=args.duration, count=args.count)
        else:
            flights = await driver.closed_loop(
                in_flight=args.in_flight, duration=args.duration, count=args.count, deadline=args.deadline
            )
        await settle(flights, args.deadline)
    finally:
        close()
    return flights, None


@dataclass
class Counts:
    """Counter readings taken before the warm-up and at the end."""

    commits: CommitReading
    handled: dict[str, float]
    events: int
    units: dict[str, float]


async def final_commits(inst: Installation) -> tuple[dict[str, int], float, bool]:
    """(reading, when the idle commits stopped, exact): exact when our processes could be stopped first."""
    if inst.stack is None:
        await asyncio.sleep(2.0)  # the external processes keep running: the best reading is an early one
        return await xact_commits(inst.settings), time.monotonic(), False
    await inst.stop_processes()
    stopped = time.monotonic()
    return await agreed(lambda: xact_commits(inst.settings)), stopped, True


async def measure(args: argparse.Namespace, inst: Installation, run_id: str) -> Report | None:
    """Warm up, open the window, drive the orders, close the window, count; None if the warm-up failed."""
    settings = inst.settings
    connection = await aio_pika.connect_robust(settings.amqp_url)
    admin = await asyncpg.connect(settings.admin_database_url)
    watch = ProcessWatch(["bench.load", *inst.process_names()], [BACKENDS] if inst.stack else [])
    sampler = asyncio.create_task(sample_forever(watch, inst, admin, args.sample_seconds)) if inst.stack else None
    try:
        tap, publisher = OutcomeTap(), Publisher()
        await tap.start(await connection.channel())
        await publisher.start(await connection.channel())
        print("reading the idle installation's own commit rate ...", file=sys.stderr)
        before = Counts(
            await idle_commits(settings),
            await handled_by_process(settings),
            tap.events,
            await handled_by_process(settings, UNITS),
        )
        warm = await warm_up(Driver(tap, publisher, OrderFactory(run_id, args.weights, "w")), args)
        if not warm.ok:
            return None
        servers = ServerWatch()
        watch.open_window(await inst.pids(admin))
        servers.start()
        profiler = Profiler(args.profile) if args.profile and inst.stack else None
        if profiler is not None:
            supervised = (await inst.pids(None)).items()
            await profiler.start({name: pids[0] for name, pids in supervised if pids and name != "bench.load"})
        opened = time.monotonic()

        flights, steps = await drive(Driver(tap, publisher, OrderFactory(run_id, args.weights)), args)

        closed = time.monotonic()
        profiles = await profiler.stop() if profiler is not None else None
        per_process = watch.finish(await inst.pids(admin)) if inst.stack else []
        server_usage = servers.finish()
        handled_after = await agreed(lambda: handled_by_process(settings))
        units_after = await handled_by_process(settings, UNITS)
        events = tap.events
        commits, commits_at, exact = await final_commits(inst)
        steps_latency = await step_latencies(settings, [f.order.order_id for f in flights])
    finally:
        if sampler is not None:
            sampler.cancel()
        await admin.close()
        await connection.close()
    results = dataclasses.replace(summarize(flights), steps=steps_latency)
    transactions = commits_between(before.commits, commits, commits_at)
    cost = SagaCost(
        sagas=warm.completed + results.completed,
        deliveries=round(sum(handled_after.values()) - sum(before.handled.values())),
        deliveries_by_process={k: round(v - before.handled.get(k, 0)) for k, v in handled_after.items()},
        units_by_process={k: round(v - before.units.get(k, 0)) for k, v in units_after.items()},
        listener_events=events - before.events,
        transactions=sum(transactions.values()),
        transactions_by_process=transactions,
        transactions_exact=exact,
        idle_transactions_per_second=round(sum(before.commits.idle_per_second.values()), 2),
    )
    return Report(
        arguments={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        installation=inst.describe(),
        floor=inst.floor,
        results=results,
        window_seconds=round(closed - opened, 3),
        per_process=per_process,
        servers=server_usage,
        cost=cost,
        ceiling=ceiling_of(inst.floor, cost),
        saturation=steps,
        rss_series=watch.series() if inst.stack else {},
        restarts=inst.restarts(),
        profiles=profiles,
        profile_dir=args.profile,
    )


def exit_code(report: Report) -> int:
    """1 when an order ended otherwise than its path expects; in a plain run also when one never ended (in
    --saturate, the step that falls behind may leave orders unfinished: that is what it measures)."""
    results = report.results
    if results.mismatched:
        return 1
    if report.saturation is None and not results.ok:
        return 1
    return 0


async def run(args: argparse.Namespace, tmp: Path, run_id: str) -> int:
    async with chosen_installation(args, tmp) as inst:
        report = await measure(args, inst, run_id)
        if report is None:
            return 1
        print(render(report))
        if args.json:
            args.json.write_text(json.dumps(as_json(report), indent=2, default=str) + "\n")
        return exit_code(report)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_id = uuid.uuid4().hex[:6]
    main_of(lambda tmp: run(args, tmp, run_id), prefix=f"orderflow-bench-{run_id}-", keep=args.keep)


if __name__ == "__main__":
    main()
