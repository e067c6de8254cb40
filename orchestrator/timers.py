"""Fire durable timers (step timeouts, retry waits, Parallel timeouts) when they fall due.

The loop sleeps until the earliest due time or until a transition announces a
new timer with NOTIFY, and at most HEARTBEAT_SECONDS, because each wake-up also
ticks the saga clock (orchestrator/saga_clock.py): while the broker is away (its
connection closed, or blocked by a memory or disk alarm: ``broker_up`` says which) the
loop fires nothing, and after an outage the clock pushes pending timers back
before any of them can fire. A timer is re-read under its saga's lock before it
fires, so with several replicas each timer fires once.

Timers are isolated from each other: one whose firing fails (the engine cannot
apply it to its saga) is retried with backoff, and after MAX_TIMER_FAILURES it
is parked (``parked_at``; ``orderflow_timers_parked``, alert OrderflowTimerParked)
instead of being first in line again at every wake-up while the timers due after
it wait. A lost database connection is not the timer's fault and is not counted.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import timedelta

import asyncpg

from orchestrator import metrics, saga_clock
from orchestrator.runner import TIMER_CHANNEL, Runner, lock_saga
from orchestrator.state import TimerFired
from plumbing.backoff import TIMER_LOOP_RESTART
from plumbing.errors import DB_CONNECTION, classify_transient

log = logging.getLogger(__name__)

_BATCH = 100
# Upper bound on one sleep: the saga clock's heartbeat.
_MAX_SLEEP = saga_clock.HEARTBEAT_SECONDS
#: Failed firings of one timer before it is parked; the waits between them double from FIRST_RETRY_SECONDS.
MAX_TIMER_FAILURES = 5
FIRST_RETRY_SECONDS = 1.0


class TimerLoop:
    def __init__(
        self, pool: asyncpg.Pool, runner: Runner, *, on_fired=None, broker_up: Callable[[], bool] = lambda: True
    ) -> None:
        self.pool = pool
        self.runner = runner
        self.on_fired = on_fired
        #: Whether this replica can use the broker now (connected and not blocked: Broker.available); the
        #: database it reaches if its queries succeed.
        self.broker_up = broker_up
        self._wake = asyncio.Event()

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def run(self) -> None:
        ticked = -float("inf")
        while True:
            listener: asyncpg.Connection | None = None
            try:
                listener = await self.pool.acquire()
                await listener.add_listener(TIMER_CHANNEL, self._on_notify)
                while True:
                    self._wake.clear()
                    if self.broker_up():
                        # One heartbeat per HEARTBEAT_SECONDS is enough, however often NOTIFY wakes the loop.
                        if time.monotonic() - ticked >= saga_clock.HEARTBEAT_SECONDS / 2:
                            async with self.pool.acquire() as conn:
                                await saga_clock.tick(conn)
                            ticked = time.monotonic()
                        await self.fire_due()
                    sleep = await self._seconds_to_next()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), sleep)
                    if listener.is_closed():
                        raise ConnectionError("timer listener connection lost")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("timer loop interrupted; restarting", exc_info=True)
                await asyncio.sleep(TIMER_LOOP_RESTART.delay(1))
            finally:
                if listener is not None:
                    with contextlib.suppress(Exception):
                        await listener.remove_listener(TIMER_CHANNEL, self._on_notify)
                    with contextlib.suppress(Exception):
                        await self.pool.release(listener)

    async def _seconds_to_next(self) -> float:
        due = await self.pool.fetchval("SELECT min(due_at) FROM saga_timer WHERE parked_at IS NULL")
        if due is None:
            return _MAX_SLEEP
        return max(0.0, min(_MAX_SLEEP, (due - self.runner.clock()).total_seconds()))

    async def fire_due(self) -> int:
        """Fire every timer due now; returns how many fired."""
        fired = 0
        while True:
            now = self.runner.clock()
            due = await self.pool.fetch(
                """SELECT order_id, lane, token FROM saga_timer WHERE due_at <= $1 AND parked_at IS NULL
                   ORDER BY due_at LIMIT $2""",
                now + timedelta(milliseconds=5),
                _BATCH,
            )
            if not due:
                return fired
            for row in due:
                if not self.broker_up():
                    return fired  # the clock stops with the broker; the next tick pushes these back
                if await self._fire_isolated(row["order_id"], row["lane"], row["token"]):
                    fired += 1
            if len(due) < _BATCH:
                return fired

    async def _fire_isolated(self, order_id: str, lane: str, token: str) -> bool:
        """Fire one timer; if that fails for a reason of its own, count it against the timer, not the loop."""
        try:
            return await self._fire(order_id, lane, token)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            transient = classify_transient(exc)
            if transient is not None and transient.error_name == DB_CONNECTION:
                raise  # the database is away: the loop restarts, the timer has done nothing wrong
            await self._failed(order_id, lane, token, exc)
            return False

    async def _failed(self, order_id: str, lane: str, token: str, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"[:1000]
        row = await self.pool.fetchrow(
            """UPDATE saga_timer SET failures = failures + 1, last_error = $4,
                   due_at = now() + make_interval(secs => $5 * power(2, least(failures, 6))),
                   parked_at = CASE WHEN failures + 1 >= $6 THEN now() END
               WHERE order_id = $1 AND lane = $2 AND token = $3
               RETURNING failures, parked_at""",
            order_id,
            lane,
            token,
            error,
            FIRST_RETRY_SECONDS,
            MAX_TIMER_FAILURES,
        )
        metrics.TIMER_FAILURES.inc()
        fields = {"orderId": order_id, "lane": lane, "token": token, "error": error}
        if row is not None and row["parked_at"] is not None:
            log.error("timer parked after repeated failures", extra={"fields": {**fields, "failures": row["failures"]}})
        else:
            log.warning("timer failed; retried with backoff", exc_info=exc, extra={"fields": fields})

    async def _fire(self, order_id: str, lane: str, token: str) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            # The saga's row lock first, as every transition takes it: a reply racing this timer then waits here,
            # not on the timer row this transaction is about to delete (which would deadlock).
            if await lock_saga(conn, order_id) is None:
                return False
            deleted = await conn.fetchval(
                "DELETE FROM saga_timer WHERE order_id = $1 AND lane = $2 AND token = $3 RETURNING 1",
                order_id,
                lane,
                token,
            )
            if not deleted:
                return False  # another replica fired it, or a transition replaced it
            await self.runner.apply(conn, order_id, TimerFired(lane=lane, token=token), causation_id=None)
        if self.on_fired is not None:
            self.on_fired()
        return True
