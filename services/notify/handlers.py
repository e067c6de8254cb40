"""The NotifyCustomer handler: each channel is claimed in its own committed row before sending.

A row is one order, one kind of message (its confirmation, or its cancellation notice) and one channel.

A redelivered or retried command finds the claim: a channel already sent, or
whose earlier send has an unknown outcome, is not sent again; only a channel
that failed is tried again.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from prometheus_client import Counter

from contracts.notify import ChannelResult, CustomerNotified, NotifyCustomer
from plumbing.consumer import MessageContext
from plumbing.errors import NamedError
from services.notify import email
from services.notify.sms import SmsProvider

NOTIFICATIONS = Counter(
    "orderflow_notifications_total",
    "Notification sends by channel and status (sent, failed, skipped).",
    ["channel", "status"],
)

# One row per channel: a new one is claimed, a failed one claimed again; one that is sent or 'sending' (an
# earlier send whose outcome is unknown) is not, and its status is read instead.
_CLAIM = """
WITH claimed AS (
    INSERT INTO notification (order_id, kind, channel, status)
    SELECT $1, $3, channel, 'sending' FROM unnest($2::text[]) AS channel
    ON CONFLICT (order_id, kind, channel) DO UPDATE SET status = 'sending', attempts = notification.attempts + 1,
        updated_at = now()
    WHERE notification.status = 'failed'
    RETURNING channel
)
SELECT channel, NULL AS status FROM claimed
UNION ALL
SELECT channel, status FROM notification
WHERE order_id = $1 AND kind = $3 AND channel = ANY($2::text[]) AND channel NOT IN (SELECT channel FROM claimed)
"""
_RECORD = """
UPDATE notification SET status = r.status, detail = r.detail, updated_at = now()
FROM unnest($2::text[], $3::text[], $4::text[]) AS r(channel, status, detail)
WHERE notification.order_id = $1 AND notification.kind = $5 AND notification.channel = r.channel
"""

Send = Callable[[NotifyCustomer], Awaitable[None]]


@dataclass
class NotifyHandlers:
    pool: asyncpg.Pool
    sms: SmsProvider
    smtp: dict[str, Any]
    sender: str

    async def notify_customer(self, ctx: MessageContext, command: NotifyCustomer) -> CustomerNotified:
        """Send every channel; if one failed, answer with its error (a throttle is retried by the definition)."""
        sends: dict[str, Send] = {"email": self._send_email}
        if command.customer.phone:
            sends["sms"] = self._send_sms
        # Claims and outcomes commit at once (autocommit), outside the delivery's transaction: all channels
        # are claimed in one statement, sent side by side, and their outcomes recorded in one statement.
        async with self.pool.acquire() as conn:
            claims = {
                row["channel"]: row["status"]
                for row in await conn.fetch(_CLAIM, command.orderId, list(sends), command.kind)
            }
            claimed = [channel for channel in sends if claims[channel] is None]  # the others' status is read
            finished = await asyncio.gather(
                *(self._send(command, channel, sends[channel]) for channel in claimed), return_exceptions=True
            )
            # A send that crashed is not recorded: its row stays 'sending', an unknown outcome not sent again.
            outcomes = dict(zip(claimed, finished, strict=True))
            recorded = [outcome[0] for outcome in outcomes.values() if not isinstance(outcome, BaseException)]
            if recorded:
                await conn.execute(
                    _RECORD,
                    command.orderId,
                    [r.channel for r in recorded],
                    [r.status for r in recorded],
                    [r.detail for r in recorded],
                    command.kind,
                )
        crashed = next((r for r in finished if isinstance(r, BaseException)), None)
        if crashed is not None:
            raise crashed
        results: list[ChannelResult] = []
        errors: list[NamedError] = []
        for channel in sends:
            outcome = outcomes.get(channel)
            if outcome is None:
                result = ChannelResult(channel=channel, status="skipped", detail=f"already {claims[channel]}")
            else:
                assert not isinstance(outcome, BaseException)
                result, error = outcome
                if error is not None:
                    errors.append(error)
            NOTIFICATIONS.labels(result.channel, result.status).inc()
            results.append(result)
        if errors:
            raise errors[0]
        return CustomerNotified(results=results)

    async def _send(self, command: NotifyCustomer, channel: str, send: Send) -> tuple[ChannelResult, NamedError | None]:
        try:
            await send(command)
        except NamedError as error:
            detail = f"{error.error_name}: {error.cause}"[:500]
            return ChannelResult(channel=channel, status="failed", detail=detail), error
        return ChannelResult(channel=channel, status="sent"), None

    async def _send_email(self, command: NotifyCustomer) -> None:
        await email.send(email.render(command, self.sender), **self.smtp)

    async def _send_sms(self, command: NotifyCustomer) -> None:
        assert command.customer.phone
        await self.sms.send(command.customer.phone, email.sms_text(command))
