"""The NotifyCustomer handler: each channel is claimed in its own committed row before sending.

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

_CLAIM = """
INSERT INTO notification (order_id, channel, status) VALUES ($1, $2, 'sending')
ON CONFLICT (order_id, channel) DO UPDATE SET status = 'sending', attempts = notification.attempts + 1,
    updated_at = now()
WHERE notification.status = 'failed'
RETURNING 1
"""


@dataclass
class NotifyHandlers:
    pool: asyncpg.Pool
    sms: SmsProvider
    smtp: dict[str, Any]
    sender: str

    async def notify_customer(self, ctx: MessageContext, command: NotifyCustomer) -> CustomerNotified:
        """Send every channel; if one failed, answer with its error (a throttle is retried by the definition)."""
        channels = [self._channel(command, "email", self._send_email)]
        if command.customer.phone:
            channels.append(self._channel(command, "sms", self._send_sms))
        # The channels are independent (each claims and records its own row on its own connection), so they
        # run side by side. Both finish, and record their outcome, before an unexpected error is raised.
        finished = await asyncio.gather(*channels, return_exceptions=True)
        crashed = next((f for f in finished if isinstance(f, BaseException)), None)
        if crashed is not None:
            raise crashed
        outcomes = [f for f in finished if not isinstance(f, BaseException)]
        for result, _ in outcomes:
            NOTIFICATIONS.labels(result.channel, result.status).inc()
        errors = [error for _, error in outcomes if error is not None]
        if errors:
            raise errors[0]
        return CustomerNotified(results=[result for result, _ in outcomes])

    async def _channel(
        self, command: NotifyCustomer, channel: str, send: Callable[[NotifyCustomer], Awaitable[None]]
    ) -> tuple[ChannelResult, NamedError | None]:
        # Claims commit at once (autocommit), outside the delivery's transaction.
        async with self.pool.acquire() as conn:
            claimed = await conn.fetchval(_CLAIM, command.orderId, channel)
            if not claimed:
                status = await conn.fetchval(
                    "SELECT status FROM notification WHERE order_id = $1 AND channel = $2", command.orderId, channel
                )
                return ChannelResult(channel=channel, status="skipped", detail=f"already {status}"), None
            try:
                await send(command)
            except NamedError as error:
                detail = f"{error.error_name}: {error.cause}"[:500]
                await self._record(conn, command.orderId, channel, "failed", detail)
                return ChannelResult(channel=channel, status="failed", detail=detail), error
            await self._record(conn, command.orderId, channel, "sent", "")
            return ChannelResult(channel=channel, status="sent"), None

    async def _record(self, conn: asyncpg.Connection, order_id: str, channel: str, status: str, detail: str) -> None:
        await conn.execute(
            "UPDATE notification SET status = $3, detail = $4, updated_at = now() WHERE order_id = $1 AND channel = $2",
            order_id,
            channel,
            status,
            detail,
        )

    async def _send_email(self, command: NotifyCustomer) -> None:
        await email.send(email.render(command, self.sender), **self.smtp)

    async def _send_sms(self, command: NotifyCustomer) -> None:
        assert command.customer.phone
        await self.sms.send(
            command.customer.phone,
            f"Order {command.orderId} confirmed: {command.amount:.2f} {command.currency.upper()}",
        )
