"""The payment process."""

from pathlib import Path

import asyncpg
from aiohttp import web
from pydantic import Field, SecretStr

from contracts.payment import ProcessPayment, RefundPayment
from plumbing.commands import command_route
from plumbing.process import Process, command_process, run_process, service_migrations
from plumbing.settings import ProcessSettings
from services.payment.handlers import PaymentHandlers
from services.payment.stripe_gateway import StripeGateway
from services.payment.webhooks import webhook_route

SERVICE = "payment"
MIGRATIONS = service_migrations(SERVICE, Path(__file__).parent / "migrations")


class PaymentSettings(ProcessSettings):
    database_url: str = "postgresql://orderflow_payment@127.0.0.1:5432/orderflow_payment"
    http_port: int = 8002
    stripe_api_key: SecretStr = Field(
        SecretStr("sk_test_orderflow_local"), description="From a Kubernetes Secret; never logged."
    )
    stripe_api_base: str | None = Field(
        "http://127.0.0.1:12111", description="Stripe-compatible server; empty for api.stripe.com."
    )
    stripe_webhook_secret: SecretStr = Field(
        SecretStr("whsec_orderflow_local"), description="Signing secret of the webhook endpoint; a Secret."
    )


def build(settings: PaymentSettings) -> Process:
    gateway = StripeGateway(
        api_key=settings.stripe_api_key.get_secret_value(), api_base=settings.stripe_api_base or None
    )
    handlers = PaymentHandlers(gateway)
    process = command_process(
        SERVICE,
        settings,
        {
            "ProcessPayment": command_route(ProcessPayment, handlers.process_payment),
            "RefundPayment": command_route(RefundPayment, handlers.refund_payment),
        },
    )

    def routes(app: web.Application) -> None:
        def pool() -> asyncpg.Pool:
            assert process.pool is not None, "webhook before start"
            return process.pool

        def nudge() -> None:
            if process.relay is not None:
                process.relay.nudge()

        webhook_route(app, pool=pool, secret=settings.stripe_webhook_secret.get_secret_value(), on_committed=nudge)

    process.routes = routes
    return process


def main() -> None:
    run_process(build(PaymentSettings()))


if __name__ == "__main__":
    main()
