"""Two revisions side by side: the effect of a change too small to see between runs made minutes apart.

    .venv/bin/python -m bench.compare HEAD~1 HEAD
    .venv/bin/python -m bench.compare main . --pairs 3 --in-flight 8 --count 700 --json compare.json

On a shared two-core machine the same code measures 10 to 20 % apart from one run to the next, minutes
apart (the cores' speed drifts with the host's load), which hides a change worth 3 %. So each round runs
``bench.load`` (closed loop, happy path, no floor) on a private installation of each revision at the same
time: both see the same machine. The revisions swap who starts first every round. The figure compared is
the CPU one saga costs in the revision's own processes and in its own PostgreSQL backends (milliseconds
per saga): it counts the work each revision does, whatever share of the cores it got; the RabbitMQ
server is shared by both runs and left out. Sagas/s and p50 are printed as well, but they depend on how
the two runs were scheduled against each other.

A revision is anything ``git worktree`` takes (a commit, a branch, a tag), checked out in a scratch
directory; ``.`` is this checkout as it is, uncommitted changes included. Both must have ``bench.load``.
Everything runs with this checkout's virtualenv. Exit status: 0 when every run completed every order.
"""

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.cli import command_parser, main_of

REPO = Path(__file__).resolve().parents[1]
#: The processes whose CPU is the revision's own; the RabbitMQ server and the development stand-ins are not.
OWN = ("orchestrator", "inventory", "payment", "orders", "notify", "postgres backends")


@dataclass
class Run:
    revision: str
    round: int
    exit_code: int
    sagas_per_second: float | None = None
    cpu_ms_per_saga: float | None = None
    p50_seconds: float | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = command_parser("python -m bench.compare", __doc__)
    parser.add_argument("base", help="the revision to compare against")
    parser.add_argument("changed", nargs="?", default=".", help="the revision with the change (default: .)")
    parser.add_argument("--pairs", type=int, default=2, help="rounds, each running both revisions at once")
    parser.add_argument("--in-flight", type=int, default=8, help="orders in flight per revision")
    parser.add_argument("--count", type=int, default=700, help="orders per run")
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory and the runs' reports")
    return parser.parse_args(argv)


def checkout(revision: str, into: Path) -> Path:
    """The directory holding ``revision``: this checkout for '.', otherwise a detached worktree."""
    if revision == ".":
        return REPO
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(into), revision],
        check=True,
        capture_output=True,
        text=True,
    )
    return into


def remove_checkout(path: Path) -> None:
    if path != REPO:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], capture_output=True)


async def run_load(revision: str, where: Path, round_: int, args: argparse.Namespace, tmp: Path) -> Run:
    report = tmp / f"round{round_}-{where.name}.json"
    log = tmp / f"round{round_}-{where.name}.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.load",
            "--in-flight",
            str(args.in_flight),
            "--count",
            str(args.count),
            "--floor-seconds",
            "0",
            "--json",
            str(report),
            cwd=where,  # the revision's code: `-m` puts the working directory first on the path
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        code = await process.wait()
    run = Run(revision, round_, code)
    if code == 0 and report.exists():
        figures = json.loads(report.read_text())
        run.sagas_per_second = figures["sagas_per_second"]
        run.cpu_ms_per_saga = round(sum(figures["cpu_ms_per_saga"].get(name, 0.0) for name in OWN), 2)
        run.p50_seconds = figures["results"]["latency"]["p50"]
    else:
        print(f"{revision} (round {round_}) failed with exit {code}; its output is in {log}", file=sys.stderr)
    return run


def render(runs: list[Run], base: str, changed: str) -> str:
    lines = [f"{'round':>5}  {'revision':<24} {'sagas/s':>8} {'p50 s':>7} {'CPU ms per saga (own)':>22}"]
    for run in runs:
        figures = (
            f"{run.sagas_per_second:8.2f} {run.p50_seconds:7.3f} {run.cpu_ms_per_saga:22.2f}"
            if run.cpu_ms_per_saga is not None
            else f"{'failed':>8}"
        )
        lines.append(f"{run.round:>5}  {run.revision:<24} {figures}")
    ratios = []
    for round_ in sorted({run.round for run in runs}):
        pair = {run.revision: run.cpu_ms_per_saga for run in runs if run.round == round_}
        if pair.get(base) and pair.get(changed):
            ratios.append(pair[changed] / pair[base])
    if ratios:
        change = 100 * (statistics.fmean(ratios) - 1)
        spread = ", ".join(f"{100 * (r - 1):+.1f} %" for r in ratios)
        lines.append(f"CPU per saga, {changed} against {base}: {change:+.1f} % (rounds: {spread})")
    return "\n".join(lines)


async def compare(args: argparse.Namespace, tmp: Path) -> int:
    if args.base == args.changed:
        print("give two different revisions", file=sys.stderr)
        return 2
    dirs: dict[str, Path] = {}
    try:
        for name, revision in (("base", args.base), ("changed", args.changed)):
            dirs[revision] = checkout(revision, tmp / name)
        runs: list[Run] = []
        for round_ in range(1, args.pairs + 1):
            order = [args.base, args.changed] if round_ % 2 else [args.changed, args.base]
            print(f"round {round_} of {args.pairs}: {' and '.join(order)} side by side ...", file=sys.stderr)
            runs += await asyncio.gather(*(run_load(rev, dirs[rev], round_, args, tmp) for rev in order))
    finally:
        for path in dirs.values():
            remove_checkout(path)
    print(render(runs, args.base, args.changed))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"arguments": vars(args) | {"json": str(args.json)}, "runs": [asdict(r) for r in runs]}, indent=2
            )
        )
    return 0 if all(run.exit_code == 0 for run in runs) else 1


def main() -> None:
    args = parse_args()
    main_of(lambda tmp: compare(args, tmp), prefix="orderflow-compare-", keep=args.keep)


if __name__ == "__main__":
    main()
