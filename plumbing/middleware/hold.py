"""Hold a unit while its database is unreachable or full, rather than burn its deliveries' delivery limit.

A full server (too many connections, SQLSTATE 53300) is held like an unreachable one: requeued at once, a
delivery would burn its delivery limit in about two seconds and be dead-lettered while the database recovers.
A command's own handler never gets here with it: Replies answers it as a transient failure, which the
workflow's Retry table retries.

The unit is tried again after ``backoff.DATABASE_AWAY``, from its transaction on (a new span, a new claim),
until the database answers or the consumer stops (then it is requeued, and another replica or the next run
handles it).
"""

import asyncio
import logging
from collections.abc import Callable

from plumbing.backoff import DATABASE_AWAY, Backoff
from plumbing.errors import DB_CONNECTION, DB_TOO_MANY_CONNECTIONS, classify_transient
from plumbing.middleware.base import RAISE, RETRY, Middleware, Verdict
from plumbing.middleware.delivery import Unit

log = logging.getLogger(__name__)
#: The database cannot serve anyone now: the same delivery later will do.
HELD = frozenset({DB_CONNECTION, DB_TOO_MANY_CONNECTIONS})


class HoldWhileDatabaseAway(Middleware[Unit]):
    def __init__(self, *, stopping: Callable[[], bool], policy: Backoff = DATABASE_AWAY) -> None:
        self.stopping = stopping
        self.policy = policy

    async def on_error(self, unit: Unit, error: BaseException) -> Verdict:
        if not isinstance(error, Exception) or self.stopping():
            return RAISE
        transient = classify_transient(error)
        if transient is None or transient.error_name not in HELD:
            return RAISE
        log.warning("database unavailable; holding delivery", extra={"fields": {"error": str(error)}})
        unit.failures += 1
        await asyncio.sleep(self.policy.delay(unit.failures))
        return RETRY
