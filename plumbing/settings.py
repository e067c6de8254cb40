"""Settings every process shares, read from the environment.

The variable names are the ones the Kubernetes manifests set; the defaults work
against the local RabbitMQ and PostgreSQL of a development machine.
"""

from typing import Any, Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from plumbing import production, retention
from plumbing.faults import FaultRule


class ProcessSettings(BaseSettings):
    """Connection and runtime settings of one Orderflow process."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    amqp_url: str = Field("amqp://guest:guest@127.0.0.1:5672/", description="RabbitMQ URL, vhost included.")
    amqp_password: SecretStr | None = Field(
        None,
        description="RabbitMQ password, kept out of AMQP_URL: when set it is put into the URL percent-encoded, so "
        "any password works (the manifests take it from a Secret as it is).",
    )
    amqp_ca_file: str | None = Field(
        None,
        description="CA bundle that verifies the broker's certificate on amqps://: put into AMQP_URL as aiormq's "
        "cafile parameter (the URL may also carry it itself). Unset: the system's CAs.",
    )
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/postgres",
        description="This process's own PostgreSQL database; no process reads another's. TLS as asyncpg reads it: "
        "sslmode and sslrootcert in the URL, else PGSSLMODE and PGSSLROOTCERT.",
    )
    orderflow_environment: production.Environment = Field(
        "development",
        description="production: refuse to start while a development default is in force (plumbing/production.py).",
    )
    http_host: str = Field("127.0.0.1", description="Address of the metrics and health endpoint.")
    http_port: int = Field(8000, description="Port of /metrics, /healthz and /readyz.")
    prefetch: int = Field(16, ge=1, description="Unacknowledged deliveries per consumer.")
    batch_max: int = Field(
        32,
        ge=1,
        description="Most deliveries a consumer handles in one transaction, taken from those waiting: one waiting "
        "goes alone at once; under load a batch is what arrived while the previous ones were in hand (PREFETCH "
        "bounds it too). 1: every delivery its own transaction, as before batching (plumbing/middleware/batch.py).",
    )
    batch_units: int = Field(
        1,
        ge=1,
        description="Batches a consumer has in their transaction at once (with BATCH_MAX above 1). A batch's "
        "publishing, confirms and acknowledgement go on beside the next batch's transaction, so one is enough: "
        "under load the deliveries that arrive during a transaction make the next batch.",
    )
    max_message_bytes: int = Field(64 * 1024, ge=1024, description="Larger bodies are dead-lettered unread.")
    delivery_limit: int = Field(
        10,
        ge=1,
        description="Deliveries before the broker dead-letters a message that keeps failing. A consumer that dies "
        "with the message in hand counts too, so this stays well above what restarts cause.",
    )
    db_pool_size: int = Field(
        6, ge=2, description="Connections per process; PostgreSQL's max_connections bounds the sum over replicas."
    )
    log_level: str = "INFO"
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop",
        description="uvloop (libuv) runs the same asyncio code with less CPU per message; asyncio is "
        "the standard library's loop.",
    )
    drain_seconds: float = Field(20.0, description="Bound on graceful shutdown after SIGTERM.")
    outbox_max_attempts: int = Field(
        5,
        ge=1,
        description="Failed publishes in a row (the broker unreachable does not count) after which the relay "
        "parks an outbox row in outbox_parked instead of retrying it for ever.",
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        None, description="OpenTelemetry collector (OTLP/HTTP); tracing exports nothing when unset."
    )
    trace_file: str | None = Field(None, description="Write spans as JSON lines here (development, tests).")
    duplicate_publish: bool = Field(
        False,
        description="Fault injection: publish every outbox message twice, to prove the inbox. Never in production.",
    )
    faults: list[FaultRule] = Field(
        default_factory=list, description="Fault injection rules (JSON); empty in production."
    )
    inbox_retention_hours: float = Field(
        168,
        description="Hours an inbox row (a handled message id) is kept: a week, far above the longest redelivery "
        "window; below retention.RETENTION_FLOOR_HOURS (24) the process refuses to start.",
    )

    @model_validator(mode="before")
    @classmethod
    def _password_into_amqp_url(cls, data: Any) -> Any:
        """Before validation (the model is frozen): whatever reads amqp_url (the Broker) gets the full URL."""
        password = data.get("amqp_password") if isinstance(data, dict) else None
        if password:
            secret = password.get_secret_value() if isinstance(password, SecretStr) else str(password)
            url = data.get("amqp_url") or cls.model_fields["amqp_url"].default
            data = {**data, "amqp_url": amqp_url_with_password(url, secret)}
        ca_file = data.get("amqp_ca_file") if isinstance(data, dict) else None
        if ca_file:
            url = data.get("amqp_url") or cls.model_fields["amqp_url"].default
            data = {**data, "amqp_url": amqp_url_with_ca_file(url, str(ca_file))}
        return data

    @model_validator(mode="after")
    def _refuse_development_defaults_in_production(self) -> "ProcessSettings":
        """Before anything connects (settings come first in every main): RefusedInProduction ends the process."""
        if self.orderflow_environment == "production":
            production.refuse(production.process_values(self))
        return self

    @field_validator("inbox_retention_hours")
    @classmethod
    def _inbox_retention_covers_redelivery(cls, hours: float) -> float:
        return retention.check("INBOX_RETENTION_HOURS", hours)


def amqp_url_with_password(url: str, password: str) -> str:
    """``url`` with ``password`` as its password, percent-encoded: '@', '/', ':' or '%' in it stay the password's.

    The user name must be in the URL already (it comes from the broker's Secret as ``$(AMQP_USERNAME)``)."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    if not at or not user:
        raise ValueError("AMQP_PASSWORD is set but AMQP_URL names no user (amqp://USER@host:port/vhost)")
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{hostport}"))


def amqp_url_with_ca_file(url: str, ca_file: str) -> str:
    """``url`` with aiormq's ``cafile`` query parameter set to ``ca_file``: amqps:// verifies the broker with it."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "cafile"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("cafile", ca_file)], safe="/")))
