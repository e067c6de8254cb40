"""The notify process."""

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Literal

from aiohttp import web
from pydantic import Field, SecretStr

from contracts.notify import NotifyCustomer
from plumbing.commands import command_route
from plumbing.db import create_pool
from plumbing.http import SCRAPE_HOOKS
from plumbing.process import Process, command_process, run_process, service_migrations
from plumbing.settings import ProcessSettings
from services.notify import unknown
from services.notify.handlers import NotifyHandlers
from services.notify.sms import LoggingSmsProvider, SmsProvider, TwilioSmsProvider
from services.notify.smtp_pool import SmtpPool, SmtpServer

SERVICE = "notify"
MIGRATIONS = service_migrations(SERVICE, Path(__file__).parent / "migrations")


class NotifySettings(ProcessSettings):
    database_url: str = "postgresql://orderflow_notify@127.0.0.1:5432/orderflow_notify"
    http_port: int = 8004
    batch_max: int = Field(
        1,
        ge=1,
        description="Deliveries per transaction: 1, since its handler waits on the SMTP server and the SMS "
        "provider; in one batch those waits would come one after another instead of side by side "
        "(docs/benchmarks.md, batching).",
    )
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_tls: bool = False
    smtp_timeout_seconds: float = 10.0
    smtp_pool_size: int = Field(
        4,
        ge=1,
        description="Persistent SMTP connections, each opened when first needed and reused for later messages; "
        "a send waits for a free one.",
    )
    smtp_local_hostname: str | None = Field(None, description="Name sent in EHLO; this host's FQDN when unset.")
    mail_from: str = Field("orders@orderflow.local", description="Sender of confirmation emails.")
    sms_provider: Literal["log", "twilio"] = Field("log", description="log: write SMS to the log (development).")
    twilio_base_url: str = "https://api.twilio.com"
    twilio_account_sid: str = ""
    twilio_auth_token: SecretStr = SecretStr("")
    sms_from: str = Field("+15005550006", description="Sender number of confirmation SMS.")
    sms_timeout_seconds: float = 10.0
    notify_unknown_after_seconds: float = Field(
        unknown.DEFAULT_AFTER_SECONDS,
        gt=0,
        description="A channel's row left 'sending' longer than this counts in orderflow_notifications_unknown "
        "(alert OrderflowNotificationOutcomeUnknown); a younger one may be a send in progress.",
    )


def sms_provider(settings: NotifySettings) -> SmsProvider:
    if settings.sms_provider == "twilio":
        return TwilioSmsProvider(
            base_url=settings.twilio_base_url,
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token.get_secret_value(),
            sender=settings.sms_from,
            timeout=settings.sms_timeout_seconds,
        )
    return LoggingSmsProvider()


async def smtp_server(settings: NotifySettings) -> SmtpServer:
    """The SMTP server's settings, the EHLO name and TLS context worked out once per process, not per connection."""
    return SmtpServer(
        host=settings.smtp_host,
        port=settings.smtp_port,
        username=settings.smtp_username,
        password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
        start_tls=settings.smtp_starttls,
        use_tls=settings.smtp_tls,
        timeout=settings.smtp_timeout_seconds,
        local_hostname=settings.smtp_local_hostname or await asyncio.to_thread(socket.getfqdn),
        tls_context=ssl.create_default_context() if settings.smtp_starttls or settings.smtp_tls else None,
    )


def build(settings: NotifySettings) -> Process:
    process = command_process(SERVICE, settings, {})

    async def wire(proc: Process) -> None:
        # Claims commit on their own connections while each delivery holds one for its transaction: a pool
        # of their own, or PREFETCH deliveries could take every connection and wait on each other for ever.
        claims = await create_pool(settings.database_url, size=settings.prefetch + 1)
        proc.cleanup.append(claims.close)
        smtp = SmtpPool(await smtp_server(settings), size=settings.smtp_pool_size)
        proc.cleanup.append(smtp.close)
        sms = sms_provider(settings)
        proc.cleanup.append(sms.close)
        handlers = NotifyHandlers(pool=claims, sms=sms, smtp={"pool": smtp}, sender=settings.mail_from)
        proc.queues[0].routes["NotifyCustomer"] = command_route(NotifyCustomer, handlers.notify_customer)

    def routes(app: web.Application) -> None:
        # Notifications left 'sending': counted at each scrape on the process's pool, which start() creates.
        hook = unknown.scrape_hook(lambda: process.pool, after_seconds=settings.notify_unknown_after_seconds)
        app[SCRAPE_HOOKS].append(hook)

    process.on_start = wire
    process.routes = routes
    return process


def main() -> None:
    run_process(build(NotifySettings()))


if __name__ == "__main__":
    main()
