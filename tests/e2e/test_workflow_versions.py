"""Versioned definitions end to end: a changed definition is deployed (the orchestrator restarted on it) while
sagas wait at ProcessPayment for 3-D Secure; the waiting sagas finish on the version they started on, the new
ones run on the new version, and both versions are stored."""

import asyncio
import json
import os
import signal
from pathlib import Path

import aio_pika
import pytest
from faults_support import private_stack
from harness import (
    Stack,
    db,
    eventually,
    http_json,
    is_ready,
    new_id,
    order_body,
    order_view,
    orderctl,
    outcome_of,
    seed,
    waiting_intent,
)

from orchestrator import definition
from orchestrator.versions import version_of
from orderctl.client import OutcomeListener

pytestmark = pytest.mark.e2e


def write_definitions(tmp: Path) -> tuple[Path, Path]:
    """v1: the deployed definition with a long payment window (the customer takes their time); v2: the same
    with a Pass state added after NotifyCustomer, as a release that adds a step would."""
    v1 = definition.engine_document()
    v1["States"]["ProcessPayment"]["TimeoutSeconds"] = 300
    v2 = json.loads(json.dumps(v1))
    notify = v2["States"]["NotifyCustomer"]
    notify["Next"] = "RecordedForAudit"
    notify["Catch"][0]["Next"] = "RecordedForAudit"
    v2["States"]["RecordedForAudit"] = {"Type": "Pass", "Next": "OrderSuccess"}
    paths = tmp / "v1.json", tmp / "v2.json"
    for path, document in zip(paths, (v1, v2), strict=True):
        path.write_text(json.dumps(document))
    return paths


async def view(stack: Stack, order_id: str) -> dict:
    _, found = await asyncio.to_thread(order_view, stack, order_id)
    return found


def states_entered(saga: dict) -> set[str]:
    return {h["state"] for h in saga["history"] if h["state"]}


async def test_sagas_in_flight_finish_on_their_version_and_new_ones_start_on_the_new(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    v1, v2 = write_definitions(tmp_path)
    version_1 = version_of(definition.load(v1))
    version_2 = version_of(definition.load(v2))
    assert version_1 != version_2
    async with private_stack(tmp_path, {"orchestrator": {"WORKFLOW_FILE": str(v1)}}, request=request) as stack:
        connection = await aio_pika.connect(stack.settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            listener = OutcomeListener()
            await listener.start(channel)
            exchange = await channel.declare_exchange("orders", aio_pika.ExchangeType.TOPIC, durable=True)

            async def publish(order_id: str, pm: str) -> None:
                body = json.dumps(order_body(order_id, [(sku, 1)], pm)).encode()
                await exchange.publish(aio_pika.Message(body, content_type="application/json"), "order.requested")

            sku = new_id("sku-")
            await seed(stack, {sku: (10, "5.00")})
            waiting = [new_id(), new_id()]
            for order_id in waiting:
                await publish(order_id, "pm_card_authenticationRequired")
            intents = [await waiting_intent(stack, order_id) for order_id in waiting]
            for order_id in waiting:
                assert (await view(stack, order_id))["workflow"]["version"] == version_1

            # Deploy v2: the orchestrator restarts on it (the supervisor restarts what exits, with its env).
            orchestrator = stack.supervisor.by_name("orchestrator")
            assert orchestrator.process is not None
            restarts, old_pid = orchestrator.restarts, orchestrator.process.pid
            orchestrator.env["WORKFLOW_FILE"] = str(v2)
            os.killpg(old_pid, signal.SIGTERM)

            async def restarted() -> bool:
                return orchestrator.restarts > restarts and await asyncio.to_thread(
                    is_ready, stack.port("orchestrator")
                )

            await eventually(restarted, timeout=60, what="the orchestrator back on v2")

            fresh = new_id()
            await publish(fresh, "pm_card_visa")
            assert (await outcome_of(listener, fresh, timeout=60))["status"] == "CONFIRMED"
            new_saga = await view(stack, fresh)
            assert new_saga["workflow"]["version"] == version_2
            assert "RecordedForAudit" in states_entered(new_saga)

            for intent in intents:
                status, _ = await asyncio.to_thread(
                    http_json,
                    f"{stack.stripe_url}/_test/payment_intents/{intent}/authenticate",
                    method="POST",
                    body={"outcome": "succeed"},
                )
                assert status == 200
            for order_id in waiting:
                assert (await outcome_of(listener, order_id, timeout=60))["status"] == "CONFIRMED"
                old_saga = await view(stack, order_id)
                assert old_saga["workflow"]["version"] == version_1
                assert "NotifyCustomer" in states_entered(old_saga)
                assert "RecordedForAudit" not in states_entered(old_saga), "an old saga took the new rules"

        conn = await db(stack.settings, "orchestrator")
        try:
            stored = {r["version"] for r in await conn.fetch("SELECT version FROM workflow_definition")}
        finally:
            await conn.close()
        assert stored == {version_1, version_2}

        # What an operator sees: both versions with their sagas, one's JSON, and what changed.
        listed = await asyncio.to_thread(orderctl, stack.settings, "workflow", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        sagas = {v["version"]: v["sagas"] for v in json.loads(listed.stdout)}
        assert sagas == {version_1: 2, version_2: 1}
        shown = await asyncio.to_thread(orderctl, stack.settings, "workflow", "show", "order", version_1)
        assert shown.returncode == 0 and "RecordedForAudit" not in json.loads(shown.stdout)["States"]
        diff = await asyncio.to_thread(orderctl, stack.settings, "workflow", "diff", "order", version_1, version_2)
        assert diff.returncode == 0 and '+    "RecordedForAudit": {' in diff.stdout, diff.stdout
        missing = await asyncio.to_thread(orderctl, stack.settings, "workflow", "show", "order", "nosuchversion")
        assert missing.returncode == 1 and "no version 'nosuchversion'" in missing.stderr
