"""The shapes of what a run measured, and the arithmetic from raw flights and counters to them."""

import math
from collections import Counter
from dataclasses import dataclass, field

from bench.counters import StepLatency
from bench.floor import Floor
from bench.loadgen import EXPECTED_STATUS, Flight

#: Unfinished or mismatched order ids listed in full up to this many; the counts are always complete.
LISTED_IDS = 50


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) of already sorted ``values``."""
    if not values:
        return math.nan
    rank = (len(values) - 1) * q
    low, high = math.floor(rank), math.ceil(rank)
    return values[low] + (values[high] - values[low]) * (rank - low)


@dataclass(frozen=True)
class Latency:
    """Seconds from an order's send time to its outcome event at our listener."""

    count: int
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> "Latency":
        ordered = sorted(values)
        points = [round(percentile(ordered, q), 4) for q in (0.5, 0.95, 0.99)]
        return cls(len(ordered), *points, round(ordered[-1], 4) if ordered else math.nan)


@dataclass(frozen=True)
class PathResult:
    path: str
    expected: str
    sent: int
    by_status: dict[str, int]
    unfinished: int
    mismatched: int


@dataclass(frozen=True)
class Mismatch:
    order_id: str
    path: str
    expected: str
    got: str


@dataclass(frozen=True)
class SecondLatency:
    """The orders sent in one second of the run (``second`` counted from the first send) and their latency."""

    second: int
    sent: int
    p50: float
    p99: float
    max: float


def by_send_second(flights: list[Flight]) -> list[SecondLatency]:
    """Per-second latency by send time, so a burst shows as the seconds it hit rather than as a p99 alone."""
    first = min((f.sent_at for f in flights), default=0.0)
    seconds: dict[int, list[float]] = {}
    for f in flights:
        if f.latency is not None:
            seconds.setdefault(int(f.sent_at - first), []).append(f.latency)
    series = []
    for second in sorted(seconds):
        latency = Latency.of(seconds[second])
        series.append(SecondLatency(second, latency.count, latency.p50, latency.p99, latency.max))
    return series


def worst_seconds(series: list[SecondLatency], top: int = 5) -> list[SecondLatency]:
    """The seconds whose orders waited longest, slowest first."""
    return sorted(series, key=lambda s: s.max, reverse=True)[:top]


@dataclass(frozen=True)
class RunResults:
    sent: int
    completed: int
    publish_failed: int
    unfinished: int
    unfinished_ids: list[str]
    seconds: float
    """First send to last outcome received."""
    sagas_per_second: float
    """Completed sagas per second over ``seconds``."""
    latency: Latency
    by_status: dict[str, int]
    by_path: list[PathResult]
    mismatched: int
    mismatches: list[Mismatch]
    steps: list[StepLatency] = field(default_factory=list)
    by_second: list["SecondLatency"] = field(default_factory=list)
    """Latency of the orders sent in each second of the run: where a p99 comes from (a steady tail, or bursts)."""

    @property
    def ok(self) -> bool:
        return self.mismatched == 0 and self.unfinished == 0 and self.publish_failed == 0


def summarize(flights: list[Flight]) -> RunResults:
    """Outcomes by status and by path, latency, and throughput of one batch of orders."""
    finished = [f for f in flights if f.outcome is not None]
    unsent = [f for f in flights if f.publish_error is not None]
    unfinished = [f for f in flights if f.outcome is None and f.publish_error is None]
    mismatches = [
        Mismatch(f.order.order_id, f.order.path, f.order.expected, f.outcome.status)
        for f in finished
        if f.outcome is not None and f.outcome.status != f.order.expected
    ]
    first = min((f.sent_at for f in flights), default=0.0)
    last = max((f.outcome.received_at for f in finished if f.outcome), default=first)
    seconds = max(last - first, 1e-9)
    return RunResults(
        sent=len(flights),
        completed=len(finished),
        publish_failed=len(unsent),
        unfinished=len(unfinished),
        unfinished_ids=[f.order.order_id for f in unfinished][:LISTED_IDS],
        seconds=round(seconds, 3),
        sagas_per_second=round(len(finished) / seconds, 3) if finished else 0.0,
        latency=Latency.of([f.latency for f in finished if f.latency is not None]),
        by_status=dict(Counter(f.outcome.status for f in finished if f.outcome).most_common()),
        by_path=_by_path(flights),
        mismatched=len(mismatches),
        mismatches=mismatches[:LISTED_IDS],
        by_second=by_send_second(flights),
    )


def _by_path(flights: list[Flight]) -> list[PathResult]:
    rows = []
    for path, expected in EXPECTED_STATUS.items():
        mine = [f for f in flights if f.order.path == path]
        if not mine:
            continue
        statuses = Counter(f.outcome.status for f in mine if f.outcome)
        rows.append(
            PathResult(
                path=path,
                expected=expected,
                sent=len(mine),
                by_status=dict(statuses),
                unfinished=sum(1 for f in mine if f.outcome is None),
                mismatched=sum(n for status, n in statuses.items() if status != expected),
            )
        )
    return rows


# -- cost and ceiling ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SagaCost:
    """What the sagas cost the broker and the database: counted from before the warm-up to the end of the run,
    over every saga of the run (warm-up included), because PostgreSQL's counts are only complete once the
    processes stopped (bench/counters.py)."""

    sagas: int
    deliveries: int
    """Deliveries handled by every process (orderflow_messages_handled_total deltas)."""
    deliveries_by_process: dict[str, int]
    listener_events: int
    """Outcome events our own listener received: the client's share of the broker's work."""
    transactions: int
    """Committed transactions over the installation's databases, idle background commits excluded."""
    transactions_by_process: dict[str, int]
    """The same by database, named after the process that owns it."""
    transactions_exact: bool
    """False for --external, whose processes keep running: their idle connections may hold back some counts."""
    idle_transactions_per_second: float
    """The processes' own commits while idle (saga clock heartbeat, outbox relays' wake-ups)."""
    units_by_process: dict[str, int] = field(default_factory=dict)
    """Units of work (one transaction each) of the processes that batch (BATCH_MAX above 1)."""

    def deliveries_per_unit(self) -> dict[str, float]:
        """The mean batch of each process that batches: its deliveries over its units."""
        return {
            name: _per(self.deliveries_by_process.get(name, 0), units)
            for name, units in self.units_by_process.items()
            if units
        }

    @property
    def deliveries_per_saga(self) -> float:
        return _per(self.deliveries, self.sagas)

    @property
    def listener_events_per_saga(self) -> float:
        return _per(self.listener_events, self.sagas)

    @property
    def transactions_per_saga(self) -> float:
        return _per(self.transactions, self.sagas)

    def as_dict(self) -> dict:
        return {
            **self.__dict__,
            "deliveries_per_saga": self.deliveries_per_saga,
            "listener_events_per_saga": self.listener_events_per_saga,
            "transactions_per_saga": self.transactions_per_saga,
        }


def _per(amount: int, sagas: int) -> float:
    return round(amount / sagas, 3) if sagas else math.nan


@dataclass(frozen=True)
class Ceiling:
    """The most sagas per second this machine's floor allows, given what one saga was counted to cost."""

    broker_sagas_per_second: float
    """Broker floor's consumed/s over deliveries per saga (the processes' and our listener's)."""
    postgres_sagas_per_second: float
    """PostgreSQL floor's commits/s over transactions per saga."""
    sagas_per_second: float
    bound_by: str


def ceiling_of(floor: Floor | None, cost: SagaCost) -> Ceiling | None:
    """min(broker consumed/s / deliveries per saga, PostgreSQL commits/s / transactions per saga)."""
    if floor is None or not cost.sagas or not cost.transactions:
        return None
    broker = floor.broker.consumed_per_second / (cost.deliveries_per_saga + cost.listener_events_per_saga)
    postgres = floor.postgres.per_second / cost.transactions_per_saga
    bound_by = "postgres" if postgres < broker else "broker"
    return Ceiling(round(broker, 2), round(postgres, 2), round(min(broker, postgres), 2), bound_by)
