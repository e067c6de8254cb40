"""Stuck sagas: RUNNING sagas that have not moved for longer than their current step may legitimately wait.

Every transition of a saga (a command sent, a reply, a timeout, a retry scheduled, a branch moving inside a
Parallel) sets its row's ``updated_at``. So a RUNNING saga whose ``updated_at`` is older than the longest quiet
time of its current step, plus a margin, is one that nothing moves any more: its timer was lost or parked, the
timer loop is down, or the database holds it in a state the engine cannot apply. ``orderflow_sagas_stuck``
counts them by workflow and step (alert OrderflowSagaStuck, docs/runbook.md).

A step's quiet limit comes from the definition the saga runs on (orchestrator/versions.py): a Task's
TimeoutSeconds, or longer when its Reconcile or its longest retry wait is longer (a saga waiting out a retry
has not moved either); a Wait's Seconds; a Parallel or Map the longest limit of the states inside it, a
Parallel's own TimeoutSeconds when that is shorter; a state that passes at once (Choice, Pass, an end) none.
A Wait on a time from the input (SecondsPath, Timestamp, TimestampPath) has no limit known in advance: its
sagas are never counted.

Each pass is one query over the RUNNING sagas, which joins the limits of every version known to this process;
a saga on a version this process has not read yet is read from workflow_definition and counted from then on.
Every replica computes the same numbers: the alert takes their max, not their sum.
"""

import asyncio
import logging
from collections.abc import Callable

import asyncpg

from orchestrator import metrics
from orchestrator.definition import MapState, ParallelState, TaskState, WaitState, Workflow, inner_states
from orchestrator.runner import Runner

log = logging.getLogger(__name__)

#: How often the orchestrator counts stuck sagas; the alert waits minutes, so seconds late cost nothing.
INTERVAL_SECONDS = 30.0
#: The default margin over a step's quiet limit: transitions take milliseconds, a saga clock pause (broker or
#: database away) a few seconds to minutes, and the alert has its own ``for``.
DEFAULT_MARGIN_SECONDS = 120.0

# Sagas from before versions were recorded run on the current definition: their limits go under this version.
_CURRENT = ""

_COUNT = """
WITH running AS (
    SELECT coalesce(workflow_name, $6::text) AS workflow, coalesce(workflow_version, $7::text) AS version,
           coalesce(current_state, '') AS step, updated_at
    FROM saga WHERE status = 'RUNNING'
), limits AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[]) AS l(workflow, version, step, seconds)
)
SELECT r.workflow, r.step,
       count(*) FILTER (
           WHERE l.seconds IS NOT NULL AND r.updated_at < now() - make_interval(secs => l.seconds + $5)
       ) AS stuck,
       array_agg(DISTINCT r.version) FILTER (WHERE l.step IS NULL) AS unknown
FROM running r LEFT JOIN limits l ON (l.workflow, l.version, l.step) = (r.workflow, r.version, r.step)
GROUP BY r.workflow, r.step
"""


def quiet_limit(state: object) -> float | None:
    """The longest a saga may rest in ``state`` without a transition; None when no bound is known in advance."""
    if isinstance(state, TaskState):
        waits = [state.TimeoutSeconds]
        if state.Reconcile is not None:
            waits.append(state.Reconcile.TimeoutSeconds)
        for retrier in state.Retry:
            if retrier.MaxAttempts > 0:  # the last retry's wait is the longest (jitter only shortens it)
                delay = retrier.IntervalSeconds * retrier.BackoffRate ** (retrier.MaxAttempts - 1)
                waits.append(delay if retrier.MaxDelaySeconds is None else min(delay, retrier.MaxDelaySeconds))
        return max(waits)
    if isinstance(state, WaitState):
        return None if state.Seconds is None else float(state.Seconds)
    if isinstance(state, ParallelState | MapState):
        inside = [quiet_limit(s) for states in inner_states(state) for s in states.values()]
        longest = None if any(limit is None for limit in inside) else max(inside, default=0.0)
        timeout = state.TimeoutSeconds if isinstance(state, ParallelState) else None
        if timeout is None:
            return longest
        return timeout if longest is None else min(timeout, longest)
    return 0.0  # Choice, Pass, Succeed, Fail: a saga moves on (or ends) in the transition that enters them


def quiet_limits(workflow: Workflow) -> dict[str, float | None]:
    """Each top-level state's quiet limit: a saga's current step is always one of them (the main lane's)."""
    return {name: quiet_limit(state) for name, state in workflow.States.items()}


class StuckSagas:
    """Counts stuck sagas into ``orderflow_sagas_stuck``; ``margin_seconds`` is STUCK_MARGIN_SECONDS."""

    def __init__(self, runner: Runner, *, margin_seconds: float = DEFAULT_MARGIN_SECONDS) -> None:
        self.runner = runner
        self.margin_seconds = margin_seconds
        # (workflow, version) -> {step: limit}; the current definitions under their version and under _CURRENT.
        self._limits: dict[tuple[str, str], dict[str, float | None]] = {}
        for name, versions in runner.workflows.items():
            limits = quiet_limits(versions.current)
            self._limits[(name, versions.version)] = limits
            self._limits[(name, _CURRENT)] = limits

    async def count(self, pool: asyncpg.Pool) -> dict[tuple[str, str], int]:
        """Stuck sagas by (workflow, step), every step of a running saga included (0 when none is stuck); the
        gauge is set to these numbers."""
        counts, unknown = await self._query(pool)
        if unknown and await self._learn(pool, unknown):
            counts, _ = await self._query(pool)
        metrics.SAGAS_STUCK.clear()
        for name, versions in self.runner.workflows.items():
            for step in versions.current.States:
                metrics.SAGAS_STUCK.labels(name, step).set(0)
        for (workflow, step), stuck in counts.items():
            metrics.SAGAS_STUCK.labels(workflow, step).set(stuck)
        return counts

    async def _query(self, pool: asyncpg.Pool) -> tuple[dict[tuple[str, str], int], set[tuple[str, str]]]:
        rows = [
            (workflow, version, step, None if limit is None else float(limit))
            for (workflow, version), limits in self._limits.items()
            for step, limit in limits.items()
        ]
        # An unbounded step joins with a NULL limit: known, never stuck. Infinity would not fit an interval.
        columns = [list(column) for column in zip(*rows, strict=True)] if rows else [[], [], [], []]
        found = await pool.fetch(_COUNT, *columns, self.margin_seconds, "order", _CURRENT)
        counts = {(r["workflow"], r["step"]): int(r["stuck"]) for r in found}
        unknown = {(r["workflow"], version) for r in found for version in (r["unknown"] or [])}
        return counts, unknown

    async def _learn(self, pool: asyncpg.Pool, unknown: set[tuple[str, str]]) -> bool:
        """Read the stored definitions of ``unknown`` versions; True when any was learnt."""
        learnt = False
        async with pool.acquire() as conn:
            for workflow, version in sorted(unknown):
                if (workflow, version) in self._limits:
                    continue  # known, but the saga's step is not one of its states: it is never counted
                try:
                    definition = await self.runner.workflow_of(conn, workflow, version)
                except LookupError:
                    log.warning(
                        "running sagas on a definition this orchestrator cannot read; not counted as stuck",
                        extra={"fields": {"workflow": workflow, "version": version}},
                    )
                    self._limits[(workflow, version)] = {}
                    continue
                self._limits[(workflow, version)] = quiet_limits(definition)
                learnt = True
        return learnt


async def run(
    pool_of: Callable[[], asyncpg.Pool], stuck: StuckSagas, *, interval_seconds: float = INTERVAL_SECONDS
) -> None:
    """Count stuck sagas now, then every ``interval_seconds``; a failed pass is retried at the next."""
    while True:
        try:
            await stuck.count(pool_of())
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            log.warning("counting stuck sagas failed; the next pass retries", exc_info=True)
        await asyncio.sleep(interval_seconds)
