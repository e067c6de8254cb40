"""bench.park's report: milestones of RSS, rows and database sizes as sagas park, growth between them, and
the text and JSON it prints (bench/park.py measures)."""

import dataclasses
from dataclasses import dataclass
from typing import Any

from bench.report import machine
from bench.results import RunResults
from bench.usage import ProcessUsage
from orderctl.config import SERVICES

#: Our processes; the development stand-ins (stripe-server, smtp-sink, sms-server) are shown apart.
OURS = [s.name for s in SERVICES]
#: Growth is counted from here: by then the pools, caches and allocator arenas are warm.
WARM_PERCENT = 10
MB = 1024 * 1024


@dataclass(frozen=True)
class Milestone:
    percent: int
    parked: int
    seconds: float
    """Since the first order was published."""
    rss_bytes: dict[str, int]
    rows: dict[str, int]
    database_bytes: dict[str, int]


@dataclass(frozen=True)
class Release:
    results: RunResults
    """Latency counts from the authentication to the outcome event."""
    errors: list[str]
    still_parked: int


# -- the report ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Growth:
    name: str
    warm_bytes: int
    end_bytes: int
    percent: float | None
    bytes_per_saga: float | None
    """Over the sagas parked between the two milestones."""


def growth(before: dict[str, int], after: dict[str, int], sagas: int) -> list[Growth]:
    """Each name's growth between two milestones' readings, over the ``sagas`` parked in between."""
    return [
        Growth(
            name,
            before[name],
            after[name],
            round(100 * (after[name] - before[name]) / before[name], 2) if before[name] else None,
            round((after[name] - before[name]) / sagas, 1) if sagas > 0 else None,
        )
        for name in after
        if name in before
    ]


@dataclass(frozen=True)
class ParkReport:
    arguments: dict[str, Any]
    installation: dict[str, Any]
    sagas: int
    parked: int
    """Checked exactly at the end: the order ids of the waiting sagas and of payment's pending replies."""
    publish_failed: int
    ended_while_parking: dict[str, int]
    """Outcome events heard for orders that should have stayed parked."""
    seconds: float
    """First publish to the last parked saga seen."""
    stalled: bool
    milestones: list[Milestone]
    rss_growth: list[Growth]
    database_growth: list[Growth]
    per_process: list[ProcessUsage]
    """CPU over the parking, peak RSS and VmHWM (bench/usage.py)."""
    rss_series: dict[str, list[tuple[float, int]]]
    restarts: dict[str, int]
    release: Release | None

    @property
    def sagas_per_second(self) -> float:
        return round(self.parked / self.seconds, 2) if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        released = self.release is None or (
            self.release.results.by_status == {"CONFIRMED": self.release.results.sent} and not self.release.errors
        )
        return self.parked == self.sagas and released

    def as_json(self) -> dict[str, Any]:
        document = dataclasses.asdict(self)
        document.update(machine=machine(), sagas_per_second=self.sagas_per_second, ok=self.ok)
        document["per_process"] = {u["name"]: u for u in document["per_process"]}
        return document


def render(report: ParkReport) -> str:
    stand_ins = [name for name in report.milestones[0].rss_bytes if name not in OURS]
    sections = [
        _summary(report),
        "RSS MB of our processes as sagas park, and the databases' total size:\n"
        + _rss_table(report.milestones, OURS, databases=True),
        _growth_table(report, OURS, "our processes"),
        "development stand-ins, not part of Orderflow (the Stripe stand-in keeps every PaymentIntent in memory by "
        "design):\n" + _rss_table(report.milestones, stand_ins, databases=False),
        _growth_table(report, stand_ins, "stand-ins"),
        _database(report),
        _release(report.release, report.arguments["release"]),
    ]
    return "\n\n".join(s for s in sections if s)


def _summary(r: ParkReport) -> str:
    lines = [
        f"parked {r.parked} of {r.sagas} in {r.seconds:.1f} s = {r.sagas_per_second:.2f} sagas/s "
        f"({r.arguments['in_flight']} in flight; ProcessPayment times out after {r.arguments['hold_seconds']} s)"
    ]
    if r.stalled:
        lines.append(f"STALLED: no progress for {r.arguments['deadline']:g} s")
    if r.publish_failed:
        lines.append(f"PUBLISH FAILED for {r.publish_failed} orders")
    if r.ended_while_parking:
        lines.append("ENDED while they should wait: " + ", ".join(f"{s} {n}" for s, n in r.ended_while_parking.items()))
    restarted = {name: n for name, n in r.restarts.items() if n}
    if restarted:
        lines.append("RESTARTED during the run: " + ", ".join(f"{name} x{n}" for name, n in restarted.items()))
    return "\n".join(lines)


def _rss_table(milestones: list[Milestone], names: list[str], *, databases: bool) -> str:
    header = f"{'parked':>8}{'%':>5}{'s':>8}" + "".join(f"{name:>14}" for name in names)
    lines = [header + (f"{'databases':>11}" if databases else "")]
    for m in milestones:
        rss = "".join(f"{m.rss_bytes.get(name, 0) / MB:>14.1f}" for name in names)
        size = f"{sum(m.database_bytes.values()) / MB:>11.1f}" if databases else ""
        lines.append(f"{m.parked:>8}{m.percent:>5}{m.seconds:>8.1f}{rss}{size}")
    return "\n".join(lines)


def _growth_table(report: ParkReport, names: list[str], what: str) -> str:
    warm, end = next((m for m in report.milestones if m.percent == WARM_PERCENT), None), report.milestones[-1]
    if warm is None:
        return f"growth of {what}: not measured (parking stopped before {WARM_PERCENT} %)"
    usage = {u.name: u for u in report.per_process}
    lines = [
        f"growth of {what} from {WARM_PERCENT} % (after warm-up) to {end.percent} %, over {end.parked - warm.parked}"
        " parked sagas:",
        f"{'process':<16}{'RSS MB at 10 %':>16}{'at end':>9}{'growth':>10}{'bytes/saga':>12}{'VmHWM MB':>10}"
        f"{'CPU ms/saga':>13}",
    ]
    for g in (g for g in report.rss_growth if g.name in names):
        hwm, cpu = usage[g.name].hwm_bytes, usage[g.name].cpu_seconds
        lines.append(
            f"{g.name:<16}{g.warm_bytes / MB:>16.1f}{g.end_bytes / MB:>9.1f}{_num(g.percent, ' %'):>10}"
            f"{_num(g.bytes_per_saga):>12}{(hwm or 0) / MB:>10.1f}{1000 * cpu / max(report.parked, 1):>13.2f}"
        )
    return "\n".join(lines)


def _database(report: ParkReport) -> str:
    end, parked = report.milestones[-1], max(report.milestones[-1].parked, 1)
    lines = [f"database rows at {end.percent} %:", f"{'table':<30}{'rows':>10}{'per parked saga':>17}"]
    lines += [f"{table:<30}{n:>10}{n / parked:>17.2f}" for table, n in end.rows.items()]
    lines.append(f"{'database':<16}{'MB at 0 %':>11}{'at end':>9}{'bytes/saga from 10 %':>22}")
    first = report.milestones[0].database_bytes
    for g in report.database_growth:
        lines.append(
            f"{g.name:<16}{first.get(g.name, 0) / MB:>11.1f}{g.end_bytes / MB:>9.1f}{_num(g.bytes_per_saga):>22}"
        )
    return "\n".join(lines)


def _release(released: Release | None, requested: int) -> str:
    if released is None:
        return "" if not requested else "release: skipped (nothing parked)"
    r = released.results
    lines = [
        f"released {r.sent} (3-D Secure authenticated in the Stripe stand-in): "
        + (", ".join(f"{s} {n}" for s, n in r.by_status.items()) or "no outcome")
        + (f", {r.unfinished} without an outcome" if r.unfinished else ""),
        f"authentication -> outcome (s): p50 {r.latency.p50:.3f}  max {r.latency.max:.3f}; "
        f"still parked afterwards: {released.still_parked}",
    ]
    lines += [f"AUTHENTICATION FAILED: {e}" for e in released.errors]
    return "\n".join(lines)


def _num(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:+,.1f}{unit}"
