"""Sampling profiles of our processes during a load run, with py-spy (`bench.load --profile DIR`).

py-spy attaches from outside (ptrace), so the processes run unchanged. Each process gets one
``py-spy record --format raw`` (collapsed stacks) for the measured window; at its end the recorders are
interrupted, which makes py-spy write its file. The summary attributes samples two ways: by the
function on top of the stack (where the CPU goes), and by the first frame of our own code on the stack
(which of our code paths pays for it, library time included), and the function on top of the stack by the
layer it belongs to (the event loop, the PostgreSQL client, the AMQP client, ...): where the CPU of a message
goes, summed over every function of that layer.
"""

import asyncio
import contextlib
import shutil
import signal
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

#: Frames from these directories are ours; the rest is the standard library and third-party packages.
OWN_PACKAGES = ("plumbing/", "orchestrator/", "services/", "contracts/", "devservers/")
SAMPLE_RATE = 200
#: Layers, by where their code lives (the path of the function on top of the stack); the first match wins.
LAYERS = [
    ("event loop", ("asyncio/runners.py", "asyncio/events.py", "asyncio/base_events.py", "selector", "uvloop/")),
    ("PostgreSQL client", ("asyncpg/",)),
    ("AMQP client", ("aio_pika/", "aiormq/", "pamqp/", "asyncio/streams.py")),
    ("HTTP and SMTP clients", ("aiohttp/", "stripe/", "aiosmtplib/", "multidict/", "yarl/", "email/")),
    ("validation and JSON", ("pydantic", "json/")),
    ("metrics, logs, tracing", ("prometheus_client/", "logging/", "opentelemetry/")),
    ("ours", OWN_PACKAGES),
]


@dataclass
class ProcessProfile:
    name: str
    samples: int
    top_self: list[tuple[str, float]] = field(default_factory=list)
    """Functions by share of samples in which they were on top of the stack."""
    top_own: list[tuple[str, float]] = field(default_factory=list)
    """Our innermost function on the stack, by share of samples (time in libraries it calls included)."""
    by_layer: list[tuple[str, float]] = field(default_factory=list)
    """The function on top of the stack by its layer (``LAYERS``), by share of samples."""


def executable() -> str:
    """py-spy from PATH, or the one installed beside this interpreter (the venv's bin)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or str(beside)


class Profiler:
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self._recorders: dict[str, asyncio.subprocess.Process] = {}

    async def start(self, pids: dict[str, int]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in pids.items():
            self._recorders[name] = await asyncio.create_subprocess_exec(
                executable(),
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(SAMPLE_RATE),
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(self.out_dir / f"{name}.txt"),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )

    async def stop(self) -> list[ProcessProfile]:
        for recorder in self._recorders.values():
            with contextlib.suppress(ProcessLookupError):
                recorder.send_signal(signal.SIGINT)
        for recorder in self._recorders.values():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    await recorder.wait()
        return [summarize(name, self.out_dir / f"{name}.txt") for name in self._recorders]


def _function(frame: str) -> str:
    """'send (asyncpg/connection.py:123)' -> 'send (asyncpg/connection.py)': one entry per function."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0].rstrip(")")
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def _is_own(frame: str) -> bool:
    return any(f" ({package}" in frame or f"/{package}" in frame for package in OWN_PACKAGES)


def _layer(frame: str) -> str:
    where = frame.partition(" (")[2]
    return next((layer for layer, marks in LAYERS if any(mark in where for mark in marks)), "other")


def summarize(name: str, path: Path, top: int = 12) -> ProcessProfile:
    """Read py-spy's collapsed stacks ('frame;frame;frame count' per line) into shares of samples."""
    if not path.exists():
        return ProcessProfile(name, 0)
    self_time: Counter[str] = Counter()
    own_time: Counter[str] = Counter()
    layer_time: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        self_time[_function(frames[-1])] += count
        layer_time[_layer(frames[-1])] += count
        own = next((f for f in reversed(frames) if _is_own(f)), None)
        own_time[_function(own) if own else "(no frame of ours)"] += count
    if not total:
        return ProcessProfile(name, 0)

    def shares(counts: Counter[str]) -> list[tuple[str, float]]:
        return [(fn, round(100 * n / total, 1)) for fn, n in counts.most_common(top)]

    return ProcessProfile(name, total, shares(self_time), shares(own_time), shares(layer_time))


def render(profiles: list[ProcessProfile], out_dir: Path) -> str:
    lines = [f"profiles (py-spy, {SAMPLE_RATE} Hz; collapsed stacks in {out_dir}):"]
    for p in profiles:
        lines.append(f"  {p.name}: {p.samples} samples")
        lines.append("    on top of the stack:  " + "; ".join(f"{pct}% {fn}" for fn, pct in p.top_self[:6]))
        lines.append("    our innermost frame:  " + "; ".join(f"{pct}% {fn}" for fn, pct in p.top_own[:6]))
        lines.append("    by layer:             " + "; ".join(f"{pct}% {layer}" for layer, pct in p.by_layer))
    return "\n".join(lines)
