"""What a load run prints, and the JSON document ``--json`` writes."""

import dataclasses
import datetime
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import profile
from bench.floor import Floor
from bench.profile import ProcessProfile
from bench.results import Ceiling, RunResults, SagaCost, worst_seconds
from bench.saturate import SaturationStep, best
from bench.usage import ProcessUsage, ServerUsage

MB = 1024 * 1024


@dataclass(frozen=True)
class Report:
    """Everything one run measured."""

    arguments: dict[str, Any]
    installation: dict[str, Any]
    """What ran: private or external, the vhost and the databases (no credentials)."""
    floor: Floor | None
    results: RunResults
    """The measured orders (in --saturate, every step's together)."""
    window_seconds: float
    """The measured window: CPU is counted over it."""
    per_process: list[ProcessUsage]
    servers: list[ServerUsage]
    cost: SagaCost
    ceiling: Ceiling | None
    saturation: list[SaturationStep] | None
    rss_series: dict[str, list[tuple[float, int]]]
    restarts: dict[str, int]
    profiles: list[ProcessProfile] | None = None
    """py-spy's view of each process over the measured window (--profile)."""
    profile_dir: Path | None = None

    @property
    def sagas_per_second(self) -> float:
        """In --saturate the highest rate sustained; else the run's completed sagas per second."""
        if self.saturation is not None:
            top = best(self.saturation)
            return top.achieved if top else 0.0
        return self.results.sagas_per_second

    @property
    def cpu_ms_per_saga(self) -> dict[str, float]:
        """CPU milliseconds per completed saga in the window: our processes, their PostgreSQL backends and the
        whole RabbitMQ server (its vhosts cannot be told apart); the load generator is left out."""
        if not self.per_process or not self.results.completed:
            return {}
        seconds = {u.name: u.cpu_seconds for u in self.per_process if u.name != "bench.load"}
        rabbitmq = next((s.cpu_seconds for s in self.servers if s.name == "rabbitmq"), None)
        if rabbitmq is not None:
            seconds["rabbitmq server"] = rabbitmq
        return {name: round(1000 * cpu / self.results.completed, 2) for name, cpu in seconds.items()}

    @property
    def cpu_ceiling(self) -> float | None:
        """Sagas per second this machine's CPUs allow at the measured CPU cost, if nothing else ran."""
        total = sum(self.cpu_ms_per_saga.values())
        return round((os.cpu_count() or 1) * 1000 / total, 2) if total else None

    @property
    def ratio(self) -> float | None:
        """Our sagas per second as a fraction of the ceiling the floor implies."""
        return None if self.ceiling is None else round(self.sagas_per_second / self.ceiling.sagas_per_second, 4)


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_average": os.getloadavg(),
    }


def as_json(report: Report) -> dict[str, Any]:
    return {
        "arguments": report.arguments,
        "machine": machine(),
        "installation": report.installation,
        "floor": report.floor.as_dict() if report.floor else None,
        "results": dataclasses.asdict(report.results),
        "window_seconds": report.window_seconds,
        "per_process": {u.name: dataclasses.asdict(u) for u in report.per_process},
        "restarts": report.restarts,
        "servers": {s.name: dataclasses.asdict(s) for s in report.servers},
        "cost": report.cost.as_dict(),
        "ceiling": dataclasses.asdict(report.ceiling) if report.ceiling else None,
        "cpu_ms_per_saga": report.cpu_ms_per_saga,
        "cpu_ceiling_sagas_per_second": report.cpu_ceiling,
        "sagas_per_second": report.sagas_per_second,
        "ratio": report.ratio,
        "saturation": None if report.saturation is None else [dataclasses.asdict(s) for s in report.saturation],
        "rss_series": report.rss_series,
        "profiles": None if report.profiles is None else [dataclasses.asdict(p) for p in report.profiles],
    }


# -- text ------------------------------------------------------------------------------------------
def render(report: Report) -> str:
    overall = results_text(report.results)
    sections = [_floor(report.floor), overall if report.saturation is None else "every step together:\n" + overall]
    if report.saturation is not None:
        sections.append(_saturation(report.saturation))
    sections += [
        _steps(report.results),
        _processes(report),
        _servers(report.servers),
        _cost(report),
        _ceiling(report),
    ]
    if report.profiles is not None and report.profile_dir is not None:
        sections.append(profile.render(report.profiles, report.profile_dir))
    return "\n\n".join(s for s in sections if s)


def _floor(floor: Floor | None) -> str:
    if floor is None:
        return "floor: not measured (--floor-seconds 0)"
    b, p = floor.broker, floor.postgres
    return (
        f"floor: broker {b.consumed_per_second:,.0f} consumed/s, {b.published_per_second:,.0f} published/s "
        f"(persistent, quorum queue, confirms); PostgreSQL {p.per_second:,.0f} commits/s ({p.connections} connections)"
    )


def results_text(r: RunResults) -> str:
    lines = [
        f"sagas: {r.sent} sent, {r.completed} completed in {r.seconds:.1f} s = {r.sagas_per_second:.2f} sagas/s"
        + (f"; {r.publish_failed} could not be published" if r.publish_failed else ""),
        f"latency publish -> outcome (s): p50 {r.latency.p50:.3f}  p95 {r.latency.p95:.3f}  "
        f"p99 {r.latency.p99:.3f}  max {r.latency.max:.3f}",
        "outcomes: " + ", ".join(f"{status} {n}" for status, n in r.by_status.items()),
        f"{'path':<14}{'expected':<20}{'sent':>6}  {'unfinished':>10}  {'mismatched':>10}  got",
    ]
    for p in r.by_path:
        got = ", ".join(f"{status} {n}" for status, n in p.by_status.items())
        lines.append(f"{p.path:<14}{p.expected:<20}{p.sent:>6}  {p.unfinished:>10}  {p.mismatched:>10}  {got}")
    worst = [w for w in worst_seconds(r.by_second) if w.max > 2 * r.latency.p50]
    if worst and len(r.by_second) > 5:
        lines.append(
            "slowest seconds (by send time, s from the first send: max latency): "
            + ", ".join(f"{w.second}: {w.max:.3f}" for w in worst)
        )
    if r.unfinished:
        lines.append(f"UNFINISHED: {r.unfinished} orders had no outcome by the deadline: {', '.join(r.unfinished_ids)}")
    for m in r.mismatches:
        lines.append(f"MISMATCH: {m.order_id} ({m.path}) ended {m.got}, expected {m.expected}")
    return "\n".join(lines)


def _saturation(steps: list[SaturationStep]) -> str:
    lines = [f"{'offered/s':>10} {'achieved/s':>11} {'sent':>7} {'p50 s':>7} {'p99 s':>7} {'max s':>7}  sustained"]
    lines += [
        f"{s.offered:>10.1f} {s.achieved:>11.2f} {s.sent:>7} {s.p50:>7.3f} {s.p99:>7.3f} {s.max:>7.3f}  "
        + ("yes" if s.sustained else f"no ({s.unfinished} unfinished, {s.mismatched} mismatched)")
        for s in steps
    ]
    top = best(steps)
    lines.append(
        f"highest rate sustained with p99 under the limit: {top.offered:.1f}/s offered, {top.achieved:.2f}/s achieved"
        if top
        else "no step was sustained"
    )
    return "\n".join(lines)


def _steps(r: RunResults) -> str:
    if not r.steps:
        return ""
    lines = [
        f"{'step (command sent -> reply applied)':<40}{'count':>7}{'p50 s':>8}{'p95 s':>8}{'p99 s':>8}{'max s':>8}"
    ]
    lines += [f"{s.step:<40}{s.count:>7}{s.p50:>8.3f}{s.p95:>8.3f}{s.p99:>8.3f}{s.max:>8.3f}" for s in r.steps]
    return "\n".join(lines)


def _processes(report: Report) -> str:
    if not report.per_process:
        return "per-process CPU and memory: skipped (--external)"
    sagas = max(report.results.completed, 1)
    window = max(report.window_seconds, 1e-9)
    lines = [
        f"{'process (CPU over the window)':<30}{'CPU s':>8}{'% core':>8}{'ms/saga':>9}"
        f"{'peak RSS MB':>13}{'VmHWM MB':>10}{'RSS growth':>12}{'handled':>9}"
    ]
    for u in sorted(report.per_process, key=lambda u: -u.cpu_seconds):
        handled = report.cost.deliveries_by_process.get(u.name)
        lines.append(
            f"{u.name:<30}{u.cpu_seconds:>8.2f}{100 * u.cpu_seconds / window:>8.1f}{1000 * u.cpu_seconds / sagas:>9.2f}"
            f"{_mb(u.peak_rss_bytes):>13}{_mb(u.hwm_bytes):>10}{_pct(u.rss_growth_pct):>12}"
            f"{'' if handled is None else handled:>9}"
        )
    restarted = {name: n for name, n in report.restarts.items() if n}
    if restarted:
        lines.append("RESTARTED during the run: " + ", ".join(f"{name} x{n}" for name, n in restarted.items()))
    return "\n".join(lines)


def _servers(servers: list[ServerUsage]) -> str:
    parts = [
        f"{s.name} {s.cpu_seconds:.2f} s" if s.cpu_seconds is not None else f"{s.name} unknown ({s.note})"
        for s in servers
    ]
    return "server CPU over the window (whole servers, other users' load included): " + ", ".join(parts)


def _cost(report: Report) -> str:
    c = report.cost
    lines = [
        f"cost of one saga, counted over {c.sagas} sagas (warm-up included):",
        f"  AMQP deliveries    {c.deliveries_per_saga:6.2f} to our processes"
        f" ({_shares(c.deliveries_by_process, c.sagas)}) + {c.listener_events_per_saga:.2f} outcome events to our"
        " listener",
        f"  PostgreSQL commits {c.transactions_per_saga:6.2f} ({_shares(c.transactions_by_process, c.sagas)});"
        f" the idle installation's own {c.idle_transactions_per_second}/s excluded"
        + ("" if c.transactions_exact else "; approximate: external processes may hold counts back"),
    ]
    if batches := c.deliveries_per_unit():
        sizes = ", ".join(f"{name} {size:.2f}" for name, size in batches.items())
        lines.append(f"  batches            deliveries per transaction, where batching is on: {sizes}")
    cpu = report.cpu_ms_per_saga
    if cpu:
        shares = ", ".join(f"{name} {ms:.1f}" for name, ms in sorted(cpu.items(), key=lambda kv: -kv[1]))
        lines.append(
            f"  CPU ms             {sum(cpu.values()):6.1f} ({shares}): on {os.cpu_count()} CPUs at most"
            f" {report.cpu_ceiling:.1f} sagas/s"
        )
    return "\n".join(lines)


def _shares(counts: dict[str, int], sagas: int) -> str:
    return ", ".join(f"{name} {n / sagas:.2f}" for name, n in counts.items()) if sagas else ""


def _ceiling(report: Report) -> str:
    c = report.ceiling
    if c is None:
        return "ceiling: unknown (no floor measured)"
    postgres = f"{c.postgres_sagas_per_second:,.1f}"
    return (
        f"ceiling the floor implies: min(broker {c.broker_sagas_per_second:,.1f}, PostgreSQL {postgres}) = "
        f"{c.sagas_per_second:,.1f} sagas/s ({c.bound_by}-bound); ours {report.sagas_per_second:.2f} sagas/s = "
        f"{100 * (report.ratio or 0):.1f} % of it"
    )


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / MB:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f} %"
