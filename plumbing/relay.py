"""The outbox relay: gets every committed outbox row of one database to the broker.

Rows a consumer collected come to ``publish_committed`` right after their commit: published at once with
confirms, deleted soon after in batches. Everything else goes by sweeps: woken by a nudge from a writer of
this process, by the NOTIFY of a writer in another, or every few seconds, a sweep deletes a batch of rows
nobody holds as it reads them, publishes them in id order with pipelined publisher confirms, and commits the
deletion once the broker confirmed them all. Rows are locked with SKIP LOCKED, so relays of several replicas
share the work without publishing a row twice. A row whose publish fails does not hold up its batch: in the
same transaction it goes back to the outbox, delayed, or, if it can never be published, to ``outbox_parked``
(plumbing/parking.py).
"""

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

from plumbing import metrics, parking, tracing
from plumbing.backoff import RELAY_RESTART
from plumbing.broker import Broker
from plumbing.envelope import Envelope
from plumbing.outbox import NOTIFY_CHANNEL, Pending
from plumbing.parking import Parking, Setback

log = logging.getLogger(__name__)

_BATCH = 200
# A missed NOTIFY (connection lost between commit and LISTEN) is caught up within this.
_SAFETY_WAKE_SECONDS = 5.0
#: Rows published after their commit are deleted this long after the first of them was confirmed: one
#: DELETE, and one commit, for every row confirmed meanwhile, instead of one per message.
_TIDY_SECONDS = 0.1
_END_OF_TIME = datetime.max.replace(tzinfo=UTC)


class NotTried(Exception):
    """A row a sequential batch did not publish, because a row before it failed: no failure of its own."""


class BrokerAway(Exception):
    """The sweep's publishes failed because the broker is away; the rows stay, uncounted, for the next sweep."""


class OutboxRelay:
    """Publishes the outbox of one database: the rows its process hands over right after their commit, and,
    in sweeps, every row nobody holds."""

    def __init__(
        self, pool: asyncpg.Pool, broker: Broker, *, service: str, duplicate: bool = False, max_attempts: int = 5
    ) -> None:
        self.pool = pool
        self.broker = broker
        self.service = service
        self.copies = 2 if duplicate else 1
        #: Failed publishes in a row (outages not counted) after which a row is parked.
        self.max_attempts = max_attempts
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._published: list[str] = []  # confirmed, their rows not yet deleted
        self._tidy = asyncio.Event()
        self._started_at: datetime | None = None

    async def mark_started(self) -> None:
        """Note the database's time before this process writes anything: the first sweep then takes the rows
        held before it, which no live writer of this process will publish."""
        self._started_at = await self.pool.fetchval("SELECT now()")
        metrics.OUTBOX_PARKED_ROWS.labels(self.service).set(await parking.parked_count(self.pool))

    def nudge(self) -> None:
        """Sweep soon: a transaction that did not collect its rows committed some."""
        self._wake.set()

    async def publish_committed(self, messages: Sequence[Pending]) -> None:
        """Publish rows their writer collected and committed, in their order, and wait for the confirms; the
        rows are deleted soon after. If the broker refuses them, they stay, and a sweep publishes them after
        the hold: the failure is logged, not raised, since the writer's transaction is committed."""
        results = await self._publish(messages)
        confirmed = [m.envelope.messageId for m, failure in zip(messages, results, strict=True) if failure is None]
        failure = next((f for f in results if f is not None), None)
        if failure is not None:
            log.warning(
                "publishing after commit failed; the relay sweeps the rows after the hold",
                exc_info=(type(failure), failure, failure.__traceback__),
                extra={"fields": {"failed": len(messages) - len(confirmed)}},
            )
        if confirmed:
            metrics.OUTBOX_PUBLISHED.labels(self.service, "after_commit").inc(len(confirmed))
            self._published.extend(confirmed)
            self._tidy.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._sweep_loop())
            tasks.create_task(self._tidy_loop())

    async def _sweep_loop(self) -> None:
        # The first sweep also takes rows held since before this process started: a crashed run's are
        # published at once instead of after their hold (a live replica's are published twice, and absorbed).
        held_before = self._started_at
        failures = 0
        while True:
            try:
                await self._listen()
                while True:
                    # Clear before reading: a commit nudging while this batch is out sets it again, so no row
                    # waits for the safety wake, and a batch that was not full needs no second, empty read.
                    self._wake.clear()
                    taken = await self.publish_pending(held_before=held_before)
                    failures = 0
                    if taken == _BATCH:
                        continue
                    held_before = None
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), _SAFETY_WAKE_SECONDS)
                    await self._check_listener()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("outbox relay interrupted; retrying", exc_info=True)
                await self._close_listener()
                failures += 1
                await asyncio.sleep(RELAY_RESTART.delay(failures))

    async def _tidy_loop(self) -> None:
        """Delete the rows published after their commit, gathered over ``_TIDY_SECONDS`` into one statement."""
        failures = 0
        while True:
            await self._tidy.wait()
            if len(self._published) < _BATCH:
                await asyncio.sleep(_TIDY_SECONDS)
            try:
                await self.tidy()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("deleting published outbox rows failed; retrying", exc_info=True)
                failures += 1
                await asyncio.sleep(RELAY_RESTART.delay(failures))
                self._tidy.set()

    async def tidy(self) -> None:
        """Delete the rows confirmed so far (autocommit: a row deleted twice, or never, only costs a copy)."""
        self._tidy.clear()
        done, self._published = self._published, []
        if not done:
            return
        try:
            await self.pool.execute("DELETE FROM outbox WHERE message_id = ANY($1::text[])", done)
        except BaseException:
            self._published[:0] = done
            raise

    async def publish_pending(self, *, held_before: datetime | None = None) -> int:
        """Publish one batch of rows nobody holds, and of rows written before ``held_before`` even if held (not
        those waiting to be tried again after a failure); returns how many it took (published, put back or
        parked). Raises ``BrokerAway`` when the broker was away: the rows stay, uncounted, and the caller waits
        before the next sweep."""
        async with self.pool.acquire() as conn, conn.transaction():
            # The batch is deleted as it is read, and the deletion commits once the broker answered every row:
            # the rows stay locked meanwhile (other relays skip them). A row that failed goes back to the outbox,
            # or to outbox_parked, in this same transaction, so it holds up neither its batch nor the next.
            rows = await conn.fetch(
                f"""DELETE FROM outbox WHERE id IN (
                       SELECT id FROM outbox
                       WHERE held_until IS NULL OR held_until < now() OR (created_at < $2 AND attempts = 0)
                       ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
                   {parking.RETURNING}""",
                _BATCH,
                held_before,
            )
            if not rows:
                await self.observe_backlog(conn)
                return 0
            rows.sort(key=lambda row: row["id"])  # RETURNING keeps no order; the outbox's order is the ids'
            results = await self._publish_rows(rows)
            setbacks, parkings, away = self._sort_failures(rows, results)
            await parking.put_back(conn, setbacks)
            parked = await parking.park(conn, parkings) if parkings else None
        metrics.OUTBOX_PUBLISHED.labels(self.service, "sweep").inc(sum(result is None for result in results))
        if parked is not None:
            metrics.OUTBOX_PARKED.labels(self.service).inc(len(parkings))
            metrics.OUTBOX_PARKED_ROWS.labels(self.service).set(parked)
            for p in parkings:
                log.error(
                    "outbox row parked: it cannot be published",
                    extra={"fields": {"id": p.row["id"], "messageId": p.row["message_id"], "reason": p.reason}},
                )
        if away is not None:
            raise BrokerAway(f"{len(setbacks)} outbox row(s) not published: {parking.describe(away)}") from away
        if any(s.counted for s in setbacks):
            log.warning("outbox rows failed to publish; retried later", extra={"fields": {"rows": len(setbacks)}})
        elif setbacks:
            self._wake.set()  # rows a sequential batch did not reach: at once, not after the safety wake
        # The backlog gauges are read when the outbox is found empty and at every scrape, not per batch.
        return len(rows)

    async def _publish_rows(self, rows: Sequence[asyncpg.Record]) -> list[BaseException | None]:
        """Publish a batch's rows; returns each one's failure, or None. A row whose envelope cannot be read fails
        alone. A batch holding a row that failed before is published one row at a time: when the broker closes
        the channel, every publish in flight fails with the same error, and only this pins it on its row."""
        results: list[BaseException | None] = [None] * len(rows)
        readable: list[tuple[int, Pending]] = []
        for i, row in enumerate(rows):
            try:
                envelope = Envelope.model_validate(row["envelope"])
            except Exception as exc:
                results[i] = parking.Unreadable(f"the row's envelope: {parking.describe(exc)}")
                continue
            readable.append((i, Pending(row["exchange"], row["routing_key"], envelope, row["body"])))
        sequential = any(row["attempts"] for row in rows)
        outcomes = await self._publish([pending for _, pending in readable], sequential=sequential)
        for (i, _), outcome in zip(readable, outcomes, strict=True):
            results[i] = outcome
        return results

    def _sort_failures(
        self, rows: Sequence[asyncpg.Record], results: Sequence[BaseException | None]
    ) -> tuple[list[Setback], list[Parking], BaseException | None]:
        """The failed rows that go back to the outbox (counted or not), those parked, and an outage if one was
        seen."""
        verdicts = [
            None if r is None else "not_tried" if isinstance(r, NotTried) else parking.classify(r) for r in results
        ]
        # A refusal is pinned on a row only when it is the batch's only one (a sequential batch stops at its first).
        pinned = verdicts.count("refused") == 1
        setbacks: list[Setback] = []
        parkings: list[Parking] = []
        away: BaseException | None = None
        for row, result, verdict in zip(rows, results, verdicts, strict=True):
            if result is None:
                continue
            if verdict in ("outage", "not_tried"):
                away = result if verdict == "outage" else away
                setbacks.append(Setback(row, counted=False))
            elif verdict == "unpublishable" or (verdict == "refused" and pinned):
                parkings.append(Parking(row, f"{verdict}: {parking.describe(result)}"))
            elif row["attempts"] + 1 >= self.max_attempts:
                parkings.append(Parking(row, parking.exhausted_reason(row, result)))
            else:
                setbacks.append(Setback(row, counted=True))
        return setbacks, parkings, away

    async def _publish(self, messages: Sequence[Pending], *, sequential: bool = False) -> list[BaseException | None]:
        """Publish in order and wait for the confirms; returns each message's failure (of any of its copies), or
        None. ``sequential`` waits for each confirm before the next publish and stops at the first failure other
        than a message's own encoding (the rest are ``NotTried``)."""
        if sequential:
            results: list[BaseException | None] = []
            for pending in messages:
                last = results[-1] if results else None
                if last is not None and parking.classify(last) != "unpublishable":
                    results.append(NotTried())
                    continue
                results.append(_first_failure(await asyncio.gather(*self._send(pending), return_exceptions=True)))
            return results
        # Confirms are pipelined: every message is published before the first confirm is awaited (the channel
        # keeps their order). A message that failed is published again later: the inboxes absorb the copies.
        sent = [self._send(pending) for pending in messages]
        outcomes = await asyncio.gather(*(f for copies in sent for f in copies), return_exceptions=True)
        return [_first_failure(outcomes[n * self.copies : (n + 1) * self.copies]) for n in range(len(messages))]

    def _send(self, pending: Pending) -> list[asyncio.Future[None]]:
        """Start publishing every copy of one message."""
        futures = []
        with tracing.restored(pending.envelope.trace):
            for _ in range(self.copies):
                try:
                    message = pending.envelope.to_amqp(pending.body)
                except Exception as exc:  # a property aio-pika cannot take: the message's own fault
                    failed = asyncio.get_running_loop().create_future()
                    failed.set_exception(parking.Unreadable(f"building the message: {parking.describe(exc)}"))
                    futures.append(failed)
                    continue
                futures.append(
                    asyncio.ensure_future(self.broker.publish(pending.exchange, pending.routing_key, message))
                )
        return futures

    async def flush(self) -> None:
        """At shutdown, once the consumers stopped: delete the rows published after their commit, then publish
        every row left, held ones included (a row still held is this process's own, or a copy the inboxes
        absorb)."""
        await self.tidy()
        while await self.publish_pending(held_before=_END_OF_TIME):
            pass

    async def observe_backlog(self, conn: asyncpg.Connection) -> None:
        count, age, parked = await conn.fetchrow(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0), "
            "(SELECT count(*) FROM outbox_parked) FROM outbox"
        )
        metrics.OUTBOX_BACKLOG.labels(self.service).set(count)
        metrics.OUTBOX_AGE.labels(self.service).set(float(age))
        # Read here too: orderctl drops and retries parked rows from another process.
        metrics.OUTBOX_PARKED_ROWS.labels(self.service).set(parked)

    async def _listen(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        conn = await self.pool.acquire()
        await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        self._listener = conn

    async def _check_listener(self) -> None:
        if self._listener is None or self._listener.is_closed():
            await self._close_listener()
            await self._listen()

    async def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.remove_listener(NOTIFY_CHANNEL, self._on_notify)
            with contextlib.suppress(Exception):
                await self.pool.release(self._listener)
            self._listener = None

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def close(self) -> None:
        await self._close_listener()


def _first_failure(outcomes: Sequence[object]) -> BaseException | None:
    return next((o for o in outcomes if isinstance(o, BaseException)), None)
