"""``--saturate``: offer an open-loop rate in steps, each a factor higher, until the installation no longer keeps
up: p99 latency reaches the limit, or fewer sagas per second complete than a fraction of the rate offered.

Each step waits for its own orders' outcomes before the next begins, so every step starts from empty queues
and its figures are its own.
"""

from collections.abc import Callable
from dataclasses import dataclass

from bench.loadgen import Driver, Flight, settle
from bench.results import RunResults, summarize


@dataclass(frozen=True)
class SaturationPlan:
    start_rate: float = 10.0
    factor: float = 1.5
    step_seconds: float = 20.0
    max_rate: float = 2000.0
    p99_limit: float = 1.0
    """A step whose p99 latency reaches this many seconds is not sustained."""
    achieved_fraction: float = 0.9
    """A step completing fewer than this fraction of the sagas per second offered is not sustained."""
    deadline: float = 120.0
    """Seconds to wait for a step's last outcomes once its sending ended."""


@dataclass(frozen=True)
class SaturationStep:
    offered: float
    achieved: float
    sent: int
    completed: int
    unfinished: int
    mismatched: int
    p50: float
    p99: float
    max: float
    sustained: bool


def step_of(offered: float, results: RunResults, plan: SaturationPlan) -> SaturationStep:
    sustained = (
        results.ok
        and results.latency.p99 < plan.p99_limit
        and results.sagas_per_second >= plan.achieved_fraction * offered
    )
    return SaturationStep(
        offered=round(offered, 2),
        achieved=results.sagas_per_second,
        sent=results.sent,
        completed=results.completed,
        unfinished=results.unfinished + results.publish_failed,
        mismatched=results.mismatched,
        p50=results.latency.p50,
        p99=results.latency.p99,
        max=results.latency.max,
        sustained=sustained,
    )


async def saturate(
    driver: Driver, plan: SaturationPlan, progress: Callable[[float], Callable[[], None]]
) -> tuple[list[SaturationStep], list[Flight]]:
    """Run the steps; ``progress(rate)`` opens a progress display for a step and returns its closer."""
    steps: list[SaturationStep] = []
    flights: list[Flight] = []
    rate = plan.start_rate
    while rate <= plan.max_rate:
        close = progress(rate)
        try:
            batch = await driver.open_loop(rate=rate, duration=plan.step_seconds, count=None)
            await settle(batch, plan.deadline)
        finally:
            close()
        flights += batch
        steps.append(step_of(rate, summarize(batch), plan))
        if not steps[-1].sustained:
            break
        rate *= plan.factor
    return steps, flights


def best(steps: list[SaturationStep]) -> SaturationStep | None:
    """The highest offered rate that was sustained."""
    return max((s for s in steps if s.sustained), key=lambda s: s.offered, default=None)
