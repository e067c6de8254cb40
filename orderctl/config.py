"""What orderctl needs to know of a deployment: every process's database, the broker, the ports.

Environment variables use the ORDERFLOW_ prefix, e.g. ORDERFLOW_INVENTORY_DATABASE_URL.
"""

from dataclasses import dataclass
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.main import MIGRATIONS as ORCHESTRATOR_MIGRATIONS
from plumbing import production
from plumbing.db import with_password
from plumbing.migrations import MigrationSet
from services.inventory.main import MIGRATIONS as INVENTORY_MIGRATIONS
from services.notify.main import MIGRATIONS as NOTIFY_MIGRATIONS
from services.orders.main import MIGRATIONS as ORDERS_MIGRATIONS
from services.payment.main import MIGRATIONS as PAYMENT_MIGRATIONS


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    migrations: list[MigrationSet]
    port_offset: int


#: The Stripe events the local Stripe server sends payment's webhook endpoint: the ones payment acts on
#: (services/payment/webhooks.py HANDLED; a test keeps the two and the manifests equal).
STRIPE_WEBHOOK_EVENTS = ("payment_intent.canceled", "payment_intent.payment_failed", "payment_intent.succeeded")

SERVICES: list[ServiceSpec] = [
    ServiceSpec("orchestrator", "orchestrator", ORCHESTRATOR_MIGRATIONS, 0),
    ServiceSpec("inventory", "services.inventory", INVENTORY_MIGRATIONS, 1),
    ServiceSpec("payment", "services.payment", PAYMENT_MIGRATIONS, 2),
    ServiceSpec("orders", "services.orders", ORDERS_MIGRATIONS, 3),
    ServiceSpec("notify", "services.notify", NOTIFY_MIGRATIONS, 4),
]


def _local(name: str) -> str:
    return f"postgresql://orderflow_{name}@127.0.0.1:5432/orderflow_{name}"


class CtlSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORDERFLOW_", extra="ignore", populate_by_name=True)

    admin_database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    orchestrator_database_url: str = _local("orchestrator")
    inventory_database_url: str = _local("inventory")
    payment_database_url: str = _local("payment")
    orders_database_url: str = _local("orders")
    notify_database_url: str = _local("notify")
    # Each role's password on its own (a Kubernetes Secret's value as it is): `orderctl migrate` creates the role
    # with it and connects with it, percent-encoded into the role's URL, so any password works.
    orchestrator_database_password: SecretStr | None = None
    inventory_database_password: SecretStr | None = None
    payment_database_password: SecretStr | None = None
    orders_database_password: SecretStr | None = None
    notify_database_password: SecretStr | None = None
    base_http_port: int = 8000
    #: The orchestrator's API (bearer tokens), apart from its metrics and health on base_http_port.
    orchestrator_api_port: int = 8080
    # The orchestrator's API (docs/api.md): with a URL, `orderctl list`, `status`, `history` and `redrive` go
    # through it with this token (no database URL needed); without one they read the databases directly.
    api_url: str | None = Field(None, description="ORDERFLOW_API_URL, e.g. http://127.0.0.1:8080 (or --api-url).")
    api_token: SecretStr | None = Field(None, description="ORDERFLOW_API_TOKEN: a viewer or operator token.")
    stripe_port: int = 12111
    smtp_port: int = 8025
    sms_port: int = 8026
    maildir: Path = Path("var/maildir")
    stripe_webhook_secret: str = "whsec_orderflow_local"
    # The payment provider `orderctl check` reconciles with: the payment process's own names. Neither set: not read.
    stripe_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("STRIPE_API_KEY", "ORDERFLOW_STRIPE_API_KEY"),
        description="A key that may read PaymentIntents and Refunds (a restricted read-only key will do).",
    )
    stripe_api_base: str | None = Field(
        None,
        validation_alias=AliasChoices("STRIPE_API_BASE", "ORDERFLOW_STRIPE_API_BASE"),
        description="A Stripe-compatible server (the local one: http://127.0.0.1:12111); empty for api.stripe.com.",
    )

    environment: production.Environment = Field(
        "development",
        description="ORDERFLOW_ENVIRONMENT, as the processes read it: production refuses development defaults.",
    )

    def refuse_development_defaults(self, *, only: str | None = None) -> None:
        """In production, end ``orderctl migrate`` before it connects if a database URL it would use (the admin's,
        and each migrated process's) lacks sslmode=verify-full: RefusedInProduction, one line, exit 1."""
        if self.environment != "production":
            return
        services = [s.name for s in SERVICES if only in (None, s.name)]
        production.refuse(
            (
                f"ORDERFLOW_{name.upper()}_DATABASE_URL",
                getattr(self, f"{name}_database_url"),
                production.database_without_verify_full,
            )
            for name in ["admin", *services]
        )

    def database_url(self, service: str) -> str:
        url = getattr(self, f"{service}_database_url")
        password: SecretStr | None = getattr(self, f"{service}_database_password", None)
        return with_password(url, password.get_secret_value()) if password is not None else url

    def http_port(self, service: str) -> int:
        spec = next(s for s in SERVICES if s.name == service)
        return self.base_http_port + spec.port_offset
