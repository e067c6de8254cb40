"""CPU and memory of the processes under load, and CPU of the RabbitMQ and PostgreSQL servers, read with psutil.

CPU is user + system seconds over the measured window (after warm-up). Memory is RSS sampled every interval
over the whole run, with the kernel's own peak (VmHWM) beside it: a sample can miss a short spike, VmHWM
cannot, but VmHWM counts from the process's start, warm-up included.
"""

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil


@dataclass(frozen=True)
class ProcessUsage:
    name: str
    pids: list[int]
    """Every pid the row counted: one for a process that never restarted."""
    cpu_seconds: float
    """User + system CPU spent in the measured window."""
    peak_rss_bytes: int | None
    """Largest sampled RSS (summed over the row's live pids), whole run; None when memory is not sampled."""
    hwm_bytes: int | None
    """The kernel's VmHWM (peak RSS since the process started) at the end; the largest over the row's pids."""
    rss_at_warmup_end: int | None
    rss_at_end: int | None
    rss_growth_pct: float | None
    """RSS growth from the end of the warm-up to the end of the run: for a flatness check over long runs."""


@dataclass
class _Row:
    """One reported row: a process (a new pid after a restart) or a set of PostgreSQL backends."""

    name: str
    memory: bool
    cpu_base: dict[int, float] = field(default_factory=dict)
    cpu_last: dict[int, float] = field(default_factory=dict)
    counted: set[int] = field(default_factory=set)
    hwm: dict[int, int] = field(default_factory=dict)
    series: list[tuple[float, int]] = field(default_factory=list)
    rss_at_warmup_end: int | None = None


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def vm_hwm_bytes(pid: int) -> int | None:
    """Peak resident set size of a live process, from /proc (Linux only)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


class ProcessWatch:
    """Samples rows of processes; ``sample`` is given each row's current pids (they change on a restart)."""

    def __init__(self, memory_rows: Sequence[str], cpu_only_rows: Sequence[str] = ()) -> None:
        self.rows = {name: _Row(name, True) for name in memory_rows}
        self.rows.update({name: _Row(name, False) for name in cpu_only_rows})
        self.started_at = time.monotonic()
        self.window_open = False

    def sample(self, pids: dict[str, list[int]]) -> None:
        now = time.monotonic() - self.started_at
        for name, row in self.rows.items():
            rss = 0
            for pid in pids.get(name, []):
                with contextlib.suppress(psutil.Error):
                    process = psutil.Process(pid)
                    row.cpu_last[pid] = cpu_seconds(process)
                    if self.window_open:
                        row.counted.add(pid)  # born after the window opened: its base stays 0
                    if row.memory:
                        rss += process.memory_info().rss
                        row.hwm[pid] = vm_hwm_bytes(pid) or row.hwm.get(pid, 0)
            if row.memory:
                row.series.append((round(now, 2), rss))

    def open_window(self, pids: dict[str, list[int]]) -> None:
        """Start counting CPU (the end of the warm-up): every live pid's CPU so far is the base."""
        self.sample(pids)
        for name, row in self.rows.items():
            live = [p for p in pids.get(name, []) if p in row.cpu_last]
            row.cpu_base = {p: row.cpu_last[p] for p in live}
            row.counted = set(live)
            row.rss_at_warmup_end = row.series[-1][1] if row.series else None
        self.window_open = True

    def finish(self, pids: dict[str, list[int]]) -> list[ProcessUsage]:
        self.sample(pids)
        return [self._usage(row) for row in self.rows.values()]

    def series(self) -> dict[str, list[tuple[float, int]]]:
        return {name: row.series for name, row in self.rows.items() if row.memory}

    @staticmethod
    def _usage(row: _Row) -> ProcessUsage:
        cpu = sum(row.cpu_last[p] - row.cpu_base.get(p, 0.0) for p in row.counted)
        end = row.series[-1][1] if row.series else None
        start = row.rss_at_warmup_end
        growth = None if not (row.memory and start and end) else round(100.0 * (end - start) / start, 2)
        return ProcessUsage(
            name=row.name,
            pids=sorted(row.counted),
            cpu_seconds=round(cpu, 3),
            peak_rss_bytes=max((rss for _, rss in row.series), default=None) if row.memory else None,
            hwm_bytes=max(row.hwm.values(), default=None) if row.memory else None,
            rss_at_warmup_end=start,
            rss_at_end=end if row.memory else None,
            rss_growth_pct=growth,
        )


# -- the servers -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerUsage:
    name: str
    pids: list[int]
    """The server's root processes (beam.smp; the postmaster)."""
    cpu_seconds: float | None
    """CPU of the whole process tree in the window; None when the server restarted meanwhile or was not found."""
    note: str = ""


def server_roots() -> dict[str, list[psutil.Process]]:
    """RabbitMQ's beam.smp and PostgreSQL's postmaster (a ``postgres`` whose parent is not one) on this machine."""
    roots: dict[str, list[psutil.Process]] = {"rabbitmq": [], "postgresql": []}
    for process in psutil.process_iter(["name", "ppid"]):
        with contextlib.suppress(psutil.Error):
            name = process.info["name"]
            if name == "beam.smp":
                roots["rabbitmq"].append(process)
            elif name == "postgres" and psutil.Process(process.info["ppid"]).name() != "postgres":
                roots["postgresql"].append(process)
    return roots


def tree_cpu_seconds(root: psutil.Process) -> float:
    """CPU of a process tree so far, including children that already exited: a PostgreSQL backend that ends is
    reaped by the postmaster, and its time moves into the postmaster's children_user/children_system."""
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = process.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


class ServerWatch:
    """CPU of each server's process tree between ``start`` and ``finish``. Server-wide: on a shared machine it
    includes other users' load on the same servers."""

    def __init__(self) -> None:
        self.base: dict[str, dict[int, float]] = {}

    def start(self) -> None:
        self.base = {name: self._read(roots) for name, roots in server_roots().items()}

    def finish(self) -> list[ServerUsage]:
        now = {name: self._read(roots) for name, roots in server_roots().items()}
        return [self._usage(name, self.base.get(name, {}), now.get(name, {})) for name in now]

    @staticmethod
    def _read(roots: list[psutil.Process]) -> dict[int, float]:
        readings: dict[int, float] = {}
        for root in roots:
            with contextlib.suppress(psutil.Error):
                readings[root.pid] = tree_cpu_seconds(root)
        return readings

    @staticmethod
    def _usage(name: str, before: dict[int, float], after: dict[int, float]) -> ServerUsage:
        if not before or not after:
            return ServerUsage(name, sorted(after), None, "not found on this machine")
        if set(before) != set(after):
            return ServerUsage(name, sorted(after), None, "restarted during the run")
        return ServerUsage(name, sorted(after), round(sum(after[p] - before[p] for p in after), 3))
