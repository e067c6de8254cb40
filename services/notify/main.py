"""The notify process."""

import asyncio
from pathlib import Path

from pydantic import Field, SecretStr

from contracts.notify import NotifyCustomer
from plumbing.commands import command_route
from plumbing.process import Process, command_process, service_migrations
from plumbing.settings import ProcessSettings
from services.notify.handlers import NotifyHandlers
from services.notify.sms import LoggingSmsProvider

SERVICE = "notify"
MIGRATIONS = service_migrations(SERVICE, Path(__file__).parent / "migrations")


class NotifySettings(ProcessSettings):
    database_url: str = "postgresql://orderflow_notify@127.0.0.1:5432/orderflow_notify"
    http_port: int = 8004
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_tls: bool = False
    smtp_timeout_seconds: float = 10.0
    mail_from: str = Field("orders@orderflow.local", description="Sender of confirmation emails.")


def build(settings: NotifySettings) -> Process:
    process = command_process(SERVICE, settings, {})
    smtp = {
        "host": settings.smtp_host,
        "port": settings.smtp_port,
        "username": settings.smtp_username,
        "password": settings.smtp_password.get_secret_value() if settings.smtp_password else None,
        "start_tls": settings.smtp_starttls,
        "use_tls": settings.smtp_tls,
        "timeout": settings.smtp_timeout_seconds,
    }

    async def wire(proc: Process) -> None:
        assert proc.pool is not None
        handlers = NotifyHandlers(pool=proc.pool, sms=LoggingSmsProvider(), smtp=smtp, sender=settings.mail_from)
        proc.queues[0].routes["NotifyCustomer"] = command_route(NotifyCustomer, handlers.notify_customer)

    process.on_start = wire
    return process


def main() -> None:
    asyncio.run(build(NotifySettings()).run())


if __name__ == "__main__":
    main()
