"""The outbox relay: gets every committed outbox row of one database to the broker.

Rows a consumer collected come to ``publish_committed`` right after their commit: published at once with
confirms, deleted soon after in batches. Everything else goes by sweeps: woken by a nudge from a writer of
this process, by the NOTIFY of a writer in another, or every few seconds, a sweep deletes a batch of rows
nobody holds as it reads them, publishes them in id order with pipelined publisher confirms, and commits the
deletion once the broker confirmed them all. Rows are locked with SKIP LOCKED, so relays of several replicas
share the work without publishing a row twice.
"""

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

from plumbing import metrics, tracing
from plumbing.broker import Broker
from plumbing.envelope import Envelope
from plumbing.outbox import NOTIFY_CHANNEL, Pending

log = logging.getLogger(__name__)

_BATCH = 200
# A missed NOTIFY (connection lost between commit and LISTEN) is caught up within this.
_SAFETY_WAKE_SECONDS = 5.0
#: Rows published after their commit are deleted this long after the first of them was confirmed: one
#: DELETE, and one commit, for every row confirmed meanwhile, instead of one per message.
_TIDY_SECONDS = 0.1
_END_OF_TIME = datetime.max.replace(tzinfo=UTC)


class OutboxRelay:
    """Publishes the outbox of one database: the rows its process hands over right after their commit, and,
    in sweeps, every row nobody holds."""

    def __init__(self, pool: asyncpg.Pool, broker: Broker, *, service: str, duplicate: bool = False) -> None:
        self.pool = pool
        self.broker = broker
        self.service = service
        self.copies = 2 if duplicate else 1
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._published: list[str] = []  # confirmed, their rows not yet deleted
        self._tidy = asyncio.Event()
        self._started_at: datetime | None = None

    async def mark_started(self) -> None:
        """Note the database's time before this process writes anything: the first sweep then takes the rows
        held before it, which no live writer of this process will publish."""
        self._started_at = await self.pool.fetchval("SELECT now()")

    def nudge(self) -> None:
        """Sweep soon: a transaction that did not collect its rows committed some."""
        self._wake.set()

    async def publish_committed(self, messages: Sequence[Pending]) -> None:
        """Publish rows their writer collected and committed, in their order, and wait for the confirms; the
        rows are deleted soon after. If the broker refuses them, they stay, and a sweep publishes them after
        the hold: the failure is logged, not raised, since the writer's transaction is committed."""
        try:
            await self._publish(messages)
        except Exception:
            log.warning("publishing after commit failed; the relay sweeps the rows after the hold", exc_info=True)
            return
        metrics.OUTBOX_PUBLISHED.labels(self.service, "after_commit").inc(len(messages))
        self._published.extend(m.envelope.messageId for m in messages)
        self._tidy.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._sweep_loop())
            tasks.create_task(self._tidy_loop())

    async def _sweep_loop(self) -> None:
        # The first sweep also takes rows held since before this process started: a crashed run's are
        # published at once instead of after their hold (a live replica's are published twice, and absorbed).
        held_before = self._started_at
        while True:
            try:
                await self._listen()
                while True:
                    # Clear before reading: a commit nudging while this batch is out sets it again, so no row
                    # waits for the safety wake, and a batch that was not full needs no second, empty read.
                    self._wake.clear()
                    if await self.publish_pending(held_before=held_before) == _BATCH:
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
                await asyncio.sleep(1.0)

    async def _tidy_loop(self) -> None:
        """Delete the rows published after their commit, gathered over ``_TIDY_SECONDS`` into one statement."""
        while True:
            await self._tidy.wait()
            if len(self._published) < _BATCH:
                await asyncio.sleep(_TIDY_SECONDS)
            try:
                await self.tidy()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("deleting published outbox rows failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)
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
        """Publish one batch of rows nobody holds, and of rows written before ``held_before`` even if held;
        returns how many."""
        async with self.pool.acquire() as conn, conn.transaction():
            # The batch is deleted as it is read, and the deletion commits only once the broker confirmed every
            # row: the rows stay locked meanwhile (other relays skip them), and a failure rolls the deletion back.
            rows = await conn.fetch(
                """DELETE FROM outbox WHERE id IN (
                       SELECT id FROM outbox WHERE held_until IS NULL OR held_until < now() OR created_at < $2
                       ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
                   RETURNING id, exchange, routing_key, envelope, body""",
                _BATCH,
                held_before,
            )
            if not rows:
                await self.observe_backlog(conn)
                return 0
            rows.sort(key=lambda row: row["id"])  # RETURNING keeps no order; the outbox's order is the ids'
            await self._publish(
                [
                    Pending(row["exchange"], row["routing_key"], Envelope.model_validate(row["envelope"]), row["body"])
                    for row in rows
                ]
            )
        metrics.OUTBOX_PUBLISHED.labels(self.service, "sweep").inc(len(rows))
        # The backlog gauges are read when the outbox is found empty and at every scrape, not per batch.
        return len(rows)

    async def _publish(self, messages: Sequence[Pending]) -> None:
        """Publish in order and wait for every confirm; raises the first failure."""
        # Confirms are pipelined: every message is published before the first confirm is awaited (the channel
        # keeps their order). If one fails, the caller's rows stay and are published again: the inboxes absorb
        # the copies that had been confirmed.
        confirms = []
        for pending in messages:
            with tracing.restored(pending.envelope.trace):
                for _ in range(self.copies):
                    message = pending.envelope.to_amqp(pending.body)
                    confirms.append(
                        asyncio.ensure_future(self.broker.publish(pending.exchange, pending.routing_key, message))
                    )
        results = await asyncio.gather(*confirms, return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed

    async def flush(self) -> None:
        """At shutdown, once the consumers stopped: delete the rows published after their commit, then publish
        every row left, held ones included (a row still held is this process's own, or a copy the inboxes
        absorb)."""
        await self.tidy()
        while await self.publish_pending(held_before=_END_OF_TIME):
            pass

    async def observe_backlog(self, conn: asyncpg.Connection) -> None:
        count, age = await conn.fetchrow(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM outbox"
        )
        metrics.OUTBOX_BACKLOG.labels(self.service).set(count)
        metrics.OUTBOX_AGE.labels(self.service).set(float(age))

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
