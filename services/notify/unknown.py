"""Notifications whose outcome is unknown: rows left 'sending' for longer than a send can take.

Each channel's row is claimed 'sending' before its send and given its outcome after (services/notify/handlers.py).
A row still 'sending' long after is a send whose answer was lost (EmailOutcomeUnknown: the server took the end of
DATA and never answered) or whose process died mid-send. The customer got that message at most once, and since a
'sending' claim is never sent again, nothing but an operator will change the row (docs/runbook.md,
OrderflowNotificationOutcomeUnknown).

``orderflow_notifications_unknown{channel}`` counts the rows 'sending' for longer than NOTIFY_UNKNOWN_AFTER_SECONDS
(a younger one may be a send in progress), read at each scrape: one query on a partial index holding only the rows
'sending' (migration 0003). Every notify replica reads the same table, so the alert takes their max, not their sum.
"""

import asyncio
from collections.abc import Callable

import asyncpg
from prometheus_client import Gauge

from plumbing.http import ScrapeHook

#: The channels the notification table allows (its CHECK constraint): each is exported, at 0 when none is unknown.
CHANNELS = ("email", "sms")
#: How long a send may take before its row counts as unknown: the SMTP pool's wait for a connection plus its
#: connection and command timeouts (10 s each by default) are far shorter.
DEFAULT_AFTER_SECONDS = 300.0
#: A scrape waits at most this long for the count; the gauge keeps its last value when it gives up.
QUERY_TIMEOUT_SECONDS = 2.0

NOTIFICATIONS_UNKNOWN = Gauge(
    "orderflow_notifications_unknown",
    "Notification rows left 'sending' longer than NOTIFY_UNKNOWN_AFTER_SECONDS: sent at most once, outcome unknown.",
    ["channel"],
)

_COUNT = """
SELECT channel, count(*) AS unknown FROM notification
WHERE status = 'sending' AND updated_at < now() - make_interval(secs => $1)
GROUP BY channel
"""


async def count(pool: asyncpg.Pool, *, after_seconds: float) -> dict[str, int]:
    """Rows 'sending' for longer than ``after_seconds``, by channel (every channel, 0 when none); the gauge is set
    to these numbers."""
    rows = await pool.fetch(_COUNT, after_seconds)
    counts = dict.fromkeys(CHANNELS, 0) | {row["channel"]: int(row["unknown"]) for row in rows}
    for channel, unknown in counts.items():
        NOTIFICATIONS_UNKNOWN.labels(channel).set(unknown)
    return counts


def scrape_hook(pool_of: Callable[[], asyncpg.Pool | None], *, after_seconds: float) -> ScrapeHook:
    """A hook for plumbing.http's SCRAPE_HOOKS: counts on the process's pool, once it has one."""

    async def refresh() -> None:
        pool = pool_of()
        if pool is not None:
            async with asyncio.timeout(QUERY_TIMEOUT_SECONDS):
                await count(pool, after_seconds=after_seconds)

    return refresh
