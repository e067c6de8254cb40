"""The orchestrator process: starts sagas, applies replies and timers, serves saga status on its API port."""

import asyncio
import functools

import asyncpg
from aio_pika.abc import AbstractIncomingMessage
from aiohttp import web
from pydantic import BaseModel, Field, field_validator, model_validator

from contracts import permissions
from contracts.orders import CancelOrder, OrderRejected, OrderRequested
from contracts.registry import MESSAGES
from orchestrator import api_oidc, cancellation, definition, rejection, saga_retention, stuck
from orchestrator.api import make_api_app
from orchestrator.batch import LockSagasInOrder
from orchestrator.metrics import SAGAS_FAILED_CRITICAL, SAGAS_IN_FLIGHT, TIMERS_PARKED
from orchestrator.runner import REPLY_KEY, Runner
from orchestrator.state import ErrorOut, ReplyReceived
from orchestrator.timers import TimerLoop
from plumbing import outbox
from plumbing.consumer import MessageContext, Route
from plumbing.envelope import Envelope
from plumbing.http import SCRAPE_HOOKS, Site
from plumbing.migrations import PLUMBING_MIGRATIONS, MigrationSet
from plumbing.process import Process, QueueSpec, run_process
from plumbing.replies import CommandFailed
from plumbing.settings import ProcessSettings
from plumbing.topology import (
    COMMANDS_EXCHANGE,
    EVENTS_EXCHANGE,
    REPLIES_EXCHANGE,
    declare_consumer_queue,
    q_name,
)

MIGRATIONS = [
    MigrationSet("plumbing", PLUMBING_MIGRATIONS),
    MigrationSet("orchestrator", definition.Path(__file__).parent / "migrations"),
]


class OrchestratorSettings(ProcessSettings):
    database_url: str = "postgresql://orderflow_orchestrator@127.0.0.1:5432/orderflow_orchestrator"
    http_port: int = 8000
    api_host: str = Field("127.0.0.1", description="Address of the API (order data, bearer tokens).")
    api_port: int = Field(
        8080, description="Port of the API (GET /orders/{orderId}); never the same as HTTP_PORT, which is open."
    )
    workflow_file: str = str(definition.DEFINITION_FILE)
    cancellation_workflow_file: str = Field(
        str(cancellation.DEFINITION_FILE), description="The cancellation workflow's definition (CancelOrder)."
    )
    stuck_margin_seconds: float = Field(
        stuck.DEFAULT_MARGIN_SECONDS,
        ge=0,
        description="A RUNNING saga quiet longer than its step's timeout plus this is stuck (orchestrator/stuck.py).",
    )
    saga_retention_days: float = Field(
        saga_retention.DEFAULT_DAYS,
        description="Finished sagas (not FAILED_CRITICAL, CANCELLATION_FAILED) older than this are purged with their "
        "history; at least saga_retention.SAGA_RETENTION_FLOOR_DAYS (7), or the process refuses to start.",
    )

    oidc_issuer: str = Field(
        "",
        description="An OIDC issuer (https://...) whose JWTs the API and console accept beside the ofl_ tokens; "
        "empty: no OIDC (orchestrator/api_oidc.py, docs/security.md).",
    )
    oidc_audience: str = Field("", description="The aud a JWT must carry; required with OIDC_ISSUER.")
    oidc_jwks_url: str = Field(
        "", description="The issuer's key set; empty: the jwks_uri of {issuer}/.well-known/openid-configuration."
    )
    oidc_role_claim: str = Field(
        api_oidc.DEFAULT_ROLE_CLAIM,
        description="The claim naming the role, a string or a list of strings (groups); dots reach into objects "
        "(realm_access.roles).",
    )
    oidc_operator_values: str = Field(
        "operator", description="Comma-separated values of the role claim that make an operator."
    )
    oidc_viewer_values: str = Field(
        "viewer", description="Comma-separated values of the role claim that make a viewer."
    )
    oidc_require_nbf: bool = Field(
        True, description="Refuse a JWT without nbf; false for an issuer whose tokens carry none."
    )
    oidc_leeway_seconds: float = Field(
        api_oidc.DEFAULT_LEEWAY_SECONDS, ge=0, le=120, description="Clock skew allowed on exp and nbf."
    )
    oidc_refresh_cooldown_seconds: float = Field(
        api_oidc.REFRESH_COOLDOWN_SECONDS,
        ge=0,
        description="Least time between two fetches of the key set that an unknown key id may force.",
    )

    @field_validator("saga_retention_days")
    @classmethod
    def _retention_covers_redelivery(cls, days: float) -> float:
        return saga_retention.check_days(days)

    @model_validator(mode="after")
    def _api_port_of_its_own(self) -> "OrchestratorSettings":
        # One port for both would put order data where metrics and health are served without credentials.
        if self.api_port == self.http_port:
            raise ValueError(f"API_PORT and HTTP_PORT are both {self.api_port}: the API needs a port of its own")
        return self

    @model_validator(mode="after")
    def _oidc_complete(self) -> "OrchestratorSettings":
        if not self.oidc_issuer:
            return self
        if not self.oidc_issuer.startswith(("https://", "http://")):
            raise ValueError(f"OIDC_ISSUER {self.oidc_issuer!r} is not an http(s) URL")
        if self.oidc_jwks_url and not self.oidc_jwks_url.startswith(("https://", "http://")):
            raise ValueError(f"OIDC_JWKS_URL {self.oidc_jwks_url!r} is not an http(s) URL")
        if not self.oidc_audience:
            raise ValueError("OIDC_ISSUER is set without OIDC_AUDIENCE: a JWT for any client of the issuer would do")
        if not api_oidc.split_values(self.oidc_operator_values) | api_oidc.split_values(self.oidc_viewer_values):
            raise ValueError("OIDC_OPERATOR_VALUES and OIDC_VIEWER_VALUES are both empty: no JWT could have a role")
        return self

    def oidc(self) -> api_oidc.OidcConfig | None:
        """The OIDC settings, or None when OIDC_ISSUER is empty."""
        if not self.oidc_issuer:
            return None
        return api_oidc.OidcConfig(
            issuer=self.oidc_issuer,
            audience=self.oidc_audience,
            jwks_url=self.oidc_jwks_url,
            role_claim=self.oidc_role_claim,
            operator_values=api_oidc.split_values(self.oidc_operator_values),
            viewer_values=api_oidc.split_values(self.oidc_viewer_values),
            require_nbf=self.oidc_require_nbf,
            leeway_seconds=self.oidc_leeway_seconds,
            refresh_cooldown_seconds=self.oidc_refresh_cooldown_seconds,
        )


def build(settings: OrchestratorSettings) -> Process:
    workflow = definition.load(definition.Path(settings.workflow_file))
    cancel_workflow = definition.load(definition.Path(settings.cancellation_workflow_file))
    runner = Runner(workflow, others={cancellation.CANCELLATION_WORKFLOW: cancel_workflow})
    process = Process(name="orchestrator", settings=settings)

    async def on_request(ctx: MessageContext, order: OrderRequested) -> None:
        await runner.start(ctx.conn, order.model_dump(mode="json"), causation_id=ctx.envelope.messageId)

    async def on_cancel(ctx: MessageContext, request: CancelOrder) -> None:
        await cancellation.start(runner, ctx.conn, request, causation_id=ctx.envelope.messageId)

    async def on_rejected_cancel(conn: asyncpg.Connection, message: AbstractIncomingMessage, reason: str) -> None:
        order_id, correlation_id = rejection.ids_of(message.body)
        await cancellation.refuse(
            conn, order_id, "InvalidRequest", reason, message.message_id, correlation=correlation_id
        )

    async def on_reply(ctx: MessageContext, reply: BaseModel) -> None:
        if not ctx.envelope.causationId:
            return
        if isinstance(reply, CommandFailed):
            event = ReplyReceived(
                commandId=ctx.envelope.causationId, ok=False, error=ErrorOut(Error=reply.Error, Cause=reply.Cause)
            )
        else:
            event = ReplyReceived(commandId=ctx.envelope.causationId, ok=True, result=reply.model_dump(mode="json"))
        await runner.apply(ctx.conn, ctx.envelope.correlationId, event, causation_id=ctx.envelope.messageId)

    async def on_rejected_request(conn: asyncpg.Connection, message: AbstractIncomingMessage, reason: str) -> None:
        # An invalid orderId may be unusable as a correlation id: the rejection must still be publishable.
        order_id, correlation_id = rejection.ids_of(message.body)
        envelope = Envelope(type="OrderRejected", correlationId=correlation_id, causationId=message.message_id)
        await outbox.enqueue(
            conn,
            exchange=EVENTS_EXCHANGE,
            routing_key="order.rejected",
            envelope=envelope,
            payload=OrderRejected(orderId=order_id, reasons=[reason]),
        )

    async def declare_command_queues(proc: Process) -> None:
        # Commands are mandatory: declare every queue the workflow sends to, so none is unroutable.
        assert proc.broker is not None
        channel = await proc.broker.channel(prefetch=1)
        services = sorted({s.split(".", 1)[0] for w in (workflow, cancel_workflow) for s in _resources(w)})
        for service in services:
            await declare_consumer_queue(
                channel,
                q_name(service, "commands"),
                [(COMMANDS_EXCHANGE, f"{service}.#")],
                delivery_limit=settings.delivery_limit,
            )
        await channel.close()

    def routes(app: web.Application) -> None:
        async def count_in_flight() -> None:
            if process.pool is not None:
                async with asyncio.timeout(2):
                    counts = dict(
                        await process.pool.fetch(
                            "SELECT status, count(*) FROM saga WHERE status IN ('RUNNING', 'FAILED_CRITICAL') "
                            "GROUP BY status"
                        )
                    )
                SAGAS_IN_FLIGHT.set(counts.get("RUNNING", 0))
                SAGAS_FAILED_CRITICAL.set(counts.get("FAILED_CRITICAL", 0))
                TIMERS_PARKED.set(
                    await process.pool.fetchval("SELECT count(*) FROM saga_timer WHERE parked_at IS NOT NULL")
                )

        app[SCRAPE_HOOKS].append(count_in_flight)

    async def timer_loop() -> None:
        assert process.pool is not None and process.relay is not None
        broker = process.broker
        # A blocked broker (memory or disk alarm) counts as away: no command could leave, so no timer fires.
        loop = TimerLoop(
            process.pool, runner, on_fired=process.relay.nudge, broker_up=lambda: bool(broker and broker.available)
        )
        await loop.run()

    # A reply must come from the service that may send its type (the AMQP user-id, which the broker checked).
    sender_check = functools.partial(
        permissions.sender_refusal, own_user=permissions.amqp_user(settings.amqp_url), own_process=process.name
    )
    reply_routes = {
        spec.model.__name__: Route(spec.model, on_reply, sender_check=sender_check)
        for spec in MESSAGES
        if spec.kind == "reply"
    }
    process.queues = [
        QueueSpec(
            queue=q_name("orchestrator", "order-requests"),
            bindings=[(EVENTS_EXCHANGE, "order.requested")],
            routes={"OrderRequested": Route(OrderRequested, on_request)},
            default_type="OrderRequested",
            on_reject=on_rejected_request,
        ),
        QueueSpec(
            queue=q_name("orchestrator", "cancel-requests"),
            bindings=[(EVENTS_EXCHANGE, "order.cancel.requested")],
            routes={"CancelOrder": Route(CancelOrder, on_cancel)},
            default_type="CancelOrder",
            on_reject=on_rejected_cancel,
        ),
        QueueSpec(
            queue=q_name("orchestrator", "replies"),
            bindings=[(REPLIES_EXCHANGE, REPLY_KEY)],
            routes=reply_routes,
            in_transaction=[LockSagasInOrder()],  # a batch of replies locks its sagas in order, at once
        ),
    ]
    process.on_start = declare_command_queues
    process.routes = routes

    def nudge_relay() -> None:
        if process.relay is not None:
            process.relay.nudge()

    oidc_config = settings.oidc()
    oidc = api_oidc.OidcVerifier(oidc_config) if oidc_config is not None else None
    api = functools.partial(make_api_app, lambda: process.pool, runner, nudge=nudge_relay, oidc=oidc)
    process.sites = [Site("api", api, settings.api_host, settings.api_port)]

    async def count_stuck() -> None:
        await stuck.run(lambda: process.pool, stuck.StuckSagas(runner, margin_seconds=settings.stuck_margin_seconds))

    async def purge_finished() -> None:
        await saga_retention.run(lambda: process.pool, days=settings.saga_retention_days)

    process.background = [timer_loop, count_stuck, purge_finished]
    return process


def _resources(workflow: definition.Workflow) -> list[str]:
    """Every Task's resource at any depth: a service called only inside a Map still gets its queue declared."""
    return [s.Resource for _, s in definition.all_states(workflow.States) if isinstance(s, definition.TaskState)]


def main() -> None:
    run_process(build(OrchestratorSettings()))


if __name__ == "__main__":
    main()
