"""The payment process."""

import asyncio
from pathlib import Path

from pydantic import Field, SecretStr

from contracts.payment import ProcessPayment, RefundPayment
from plumbing.commands import command_route
from plumbing.process import Process, command_process, service_migrations
from plumbing.settings import ProcessSettings
from services.payment.handlers import PaymentHandlers
from services.payment.stripe_gateway import StripeGateway

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


def build(settings: PaymentSettings) -> Process:
    gateway = StripeGateway(
        api_key=settings.stripe_api_key.get_secret_value(), api_base=settings.stripe_api_base or None
    )
    handlers = PaymentHandlers(gateway)
    return command_process(
        SERVICE,
        settings,
        {
            "ProcessPayment": command_route(ProcessPayment, handlers.process_payment),
            "RefundPayment": command_route(RefundPayment, handlers.refund_payment),
        },
    )


def main() -> None:
    asyncio.run(build(PaymentSettings()).run())


if __name__ == "__main__":
    main()
