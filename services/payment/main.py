"""The payment process."""

import functools
from decimal import Decimal
from pathlib import Path

import asyncpg
from aiohttp import web
from pydantic import Field, SecretStr, field_validator

from contracts.payment import ProcessPayment, RefundPayment, ScreenOrder
from plumbing import retention
from plumbing.commands import command_route
from plumbing.process import Process, command_process, run_process, service_migrations
from plumbing.settings import ProcessSettings
from services.payment import fraud
from services.payment.handlers import PaymentHandlers
from services.payment.stripe_gateway import StripeGateway
from services.payment.webhooks import webhook_route

SERVICE = "payment"
#: Stripe retries an undelivered webhook for up to three days: an event id forgotten sooner could apply twice.
STRIPE_WEBHOOK_RETRY_HOURS = 72.0
#: The guide's idempotency cache lasts 7 days: a fraud decision is kept at least that long.
FRAUD_SCREENING_FLOOR_DAYS = 7.0
MIGRATIONS = service_migrations(SERVICE, Path(__file__).parent / "migrations")


class PaymentSettings(ProcessSettings):
    database_url: str = "postgresql://orderflow_payment@127.0.0.1:5432/orderflow_payment"
    http_port: int = 8002
    batch_max: int = Field(
        1,
        ge=1,
        description="Deliveries per transaction: 1, since its handlers wait on Stripe; in one batch those waits "
        "would come one after another instead of side by side (docs/benchmarks.md, batching).",
    )
    stripe_api_key: SecretStr = Field(
        SecretStr("sk_test_orderflow_local"), description="From a Kubernetes Secret; never logged."
    )
    stripe_api_base: str | None = Field(
        "http://127.0.0.1:12111", description="Stripe-compatible server; empty for api.stripe.com."
    )
    stripe_webhook_secret: SecretStr = Field(
        SecretStr("whsec_orderflow_local"), description="Signing secret of the webhook endpoint; a Secret."
    )
    webhook_event_retention_hours: float = Field(
        720,
        description="Hours an applied webhook event id is kept: 30 days, far above Stripe's 3 days of retries; "
        "below those 72 h the process refuses to start.",
    )
    fraud_screening_retention_days: float = Field(
        90,
        description="Days a fraud screen's decision is kept (the record of why an order was refused), as long as "
        "the orchestrator keeps a finished saga (SAGA_RETENTION_DAYS); at least 7, the guide's idempotency window "
        "within which a screening asked again must meet its first decision.",
    )

    fraud_amount_ceiling: Decimal = Field(
        Decimal("10000"),
        gt=0,
        description="ScreenOrder refuses an order above this amount (major units of its currency; inclusive).",
    )
    fraud_max_units: int = Field(50, ge=1, description="ScreenOrder refuses an order of more units, over all lines.")
    fraud_blocked_email_domains: list[str] = Field(
        default_factory=list,
        description="ScreenOrder refuses a customer whose email is at one of these domains or below one (JSON list, "
        'e.g. ["fraud.example.com"]).',
    )

    def fraud_rules(self) -> fraud.FraudRules:
        return fraud.FraudRules(
            amount_ceiling=self.fraud_amount_ceiling,
            max_units=self.fraud_max_units,
            blocked_email_domains=tuple(d.strip().lower() for d in self.fraud_blocked_email_domains if d.strip()),
        )

    @field_validator("fraud_screening_retention_days")
    @classmethod
    def _covers_idempotency_window(cls, days: float) -> float:
        if days < FRAUD_SCREENING_FLOOR_DAYS:
            raise retention.RetentionTooShort(
                f"FRAUD_SCREENING_RETENTION_DAYS={days:g} is shorter than {FRAUD_SCREENING_FLOOR_DAYS:g} days, the "
                "idempotency window: a screening asked again after its decision is purged would be decided afresh"
            )
        return days

    @field_validator("webhook_event_retention_hours")
    @classmethod
    def _covers_stripe_retries(cls, hours: float) -> float:
        return retention.check(
            "WEBHOOK_EVENT_RETENTION_HOURS",
            hours,
            floor_hours=STRIPE_WEBHOOK_RETRY_HOURS,
            why="Stripe's webhook retries (up to 3 days)",
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
            "ScreenOrder": command_route(
                ScreenOrder, functools.partial(fraud.screen_order, rules=settings.fraud_rules())
            ),
        },
    )

    def routes(app: web.Application) -> None:
        def pool() -> asyncpg.Pool:
            assert process.pool is not None, "webhook before start"
            return process.pool

        def nudge() -> None:
            if process.relay is not None:
                process.relay.nudge()

        webhook_route(
            app,
            pool=pool,
            gateway=gateway,
            secret=settings.stripe_webhook_secret.get_secret_value(),
            on_committed=nudge,
        )

    process.routes = routes
    process.retention_rules.append(
        retention.Rule(table="webhook_event", column="received_at", hours=settings.webhook_event_retention_hours)
    )
    process.retention_rules.append(
        retention.Rule(table="fraud_screening", column="created_at", hours=settings.fraud_screening_retention_days * 24)
    )
    return process


def main() -> None:
    run_process(build(PaymentSettings()))


if __name__ == "__main__":
    main()
