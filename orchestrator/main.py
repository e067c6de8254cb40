"""The orchestrator process: starts sagas, applies replies and timers, serves saga status."""

import asyncio
from typing import Any

import asyncpg
from aio_pika.abc import AbstractIncomingMessage
from aiohttp import web
from pydantic import BaseModel

from contracts.orders import OrderRejected, OrderRequested
from contracts.registry import MESSAGES
from orchestrator import definition, rejection
from orchestrator.metrics import SAGAS_FAILED_CRITICAL, SAGAS_IN_FLIGHT, TIMERS_PARKED
from orchestrator.runner import REPLY_KEY, Runner
from orchestrator.state import ErrorOut, ReplyReceived
from orchestrator.status import saga_view
from orchestrator.timers import TimerLoop
from plumbing import outbox
from plumbing.consumer import MessageContext, Route
from plumbing.envelope import Envelope
from plumbing.http import SCRAPE_HOOKS
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
    workflow_file: str = str(definition.DEFINITION_FILE)


def build(settings: OrchestratorSettings) -> Process:
    workflow = definition.load(definition.Path(settings.workflow_file))
    runner = Runner(workflow)
    process = Process(name="orchestrator", settings=settings)

    async def on_request(ctx: MessageContext, order: OrderRequested) -> None:
        await runner.start(ctx.conn, order.model_dump(mode="json"), causation_id=ctx.envelope.messageId)

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
        services = sorted({s.split(".", 1)[0] for s in _resources(workflow)})
        for service in services:
            await declare_consumer_queue(
                channel,
                q_name(service, "commands"),
                [(COMMANDS_EXCHANGE, f"{service}.#")],
                delivery_limit=settings.delivery_limit,
            )
        await channel.close()

    def routes(app: web.Application) -> None:
        async def get_order(request: web.Request) -> web.Response:
            assert process.pool is not None
            async with process.pool.acquire() as conn:
                view = await saga_view(conn, request.match_info["order_id"])
            if view is None:
                return web.json_response({"error": "order not found"}, status=404)
            return web.json_response(view)

        app.router.add_get("/orders/{order_id}", get_order)

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

    reply_routes = {spec.model.__name__: Route(spec.model, on_reply) for spec in MESSAGES if spec.kind == "reply"}
    process.queues = [
        QueueSpec(
            queue=q_name("orchestrator", "order-requests"),
            bindings=[(EVENTS_EXCHANGE, "order.requested")],
            routes={"OrderRequested": Route(OrderRequested, on_request)},
            default_type="OrderRequested",
            on_reject=on_rejected_request,
        ),
        QueueSpec(
            queue=q_name("orchestrator", "replies"),
            bindings=[(REPLIES_EXCHANGE, REPLY_KEY)],
            routes=reply_routes,
        ),
    ]
    process.on_start = declare_command_queues
    process.routes = routes
    process.background = [timer_loop]
    return process


def _resources(workflow: definition.Workflow) -> list[str]:
    found: list[str] = []

    def walk(states: dict[str, Any]) -> None:
        for state in states.values():
            if isinstance(state, definition.TaskState):
                found.append(state.Resource)
            elif isinstance(state, definition.ParallelState):
                for branch in state.Branches:
                    walk(branch.States)

    walk(workflow.States)
    return found


def main() -> None:
    run_process(build(OrchestratorSettings()))


if __name__ == "__main__":
    main()
