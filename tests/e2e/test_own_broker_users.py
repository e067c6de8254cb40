"""End to end with one RabbitMQ user per process (orderctl broker-users, contracts/permissions.py): every process
works with only its own permissions, and a reply notify's user forges (with the real command id) is dead-lettered
as forged by the orchestrator without touching the saga, which goes on to finish by its own retry."""

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import pytest
from harness import (
    Stack,
    create_databases,
    db,
    drop_databases,
    eventually,
    fresh_vhost,
    new_id,
    order_body,
    outcome_of,
    publish_raw,
    seed,
    settings_for,
    short_timeout_workflow,
    stack_children,
)

from contracts import permissions
from contracts.payment import PaymentProcessed
from orderctl.broker_users import Target, create_users, delete_users
from orderctl.client import OutcomeListener
from orderctl.sandbox import running
from plumbing.consumer import HEADER_DEATH_KIND, HEADER_DEATH_REASON
from plumbing.topology import REPLIES_EXCHANGE, dq_name, q_name

pytestmark = pytest.mark.e2e

#: Payment loses its first reply to a "-slow" order: the saga waits on ProcessPayment until its timeout.
SLOW_PAYMENT = [{"messageType": "ProcessPayment", "error": "NoReply", "times": 1, "correlationIdPattern": "-slow$"}]


def url_as(url: str, user: str, password: str | None = None) -> str:
    """``url`` logging in as ``user``; without a password the processes take it from AMQP_PASSWORD, as on
    Kubernetes."""
    parts = urlsplit(url)
    login = quote(user, safe="") + (f":{quote(password, safe='')}" if password is not None else "")
    return urlunsplit(parts._replace(netloc=f"{login}@{parts.hostname}:{parts.port or 5672}"))


@dataclass
class OwnUsers:
    stack: Stack
    notify_url: str  # notify's user, with its password: what an attacker in the notify pod holds


@pytest.fixture(scope="module")
async def own_users(servers: None, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[OwnUsers]:
    tmp = tmp_path_factory.mktemp("own-users")
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    secrets = {p: f"pw:{uuid.uuid4().hex}/@%" for p in permissions.PROCESSES}
    with fresh_vhost("orderflow-users") as admin_url:
        target = Target.of(admin_url)
        await create_users(target, secrets, prefix=prefix)
        settings = settings_for(admin_url, tmp=tmp)
        await create_databases(settings)
        env = {
            p: {"AMQP_URL": url_as(admin_url, permissions.user_name(p, prefix)), "AMQP_PASSWORD": secrets[p]}
            for p in permissions.PROCESSES
        }
        env["payment"]["FAULTS"] = json.dumps(SLOW_PAYMENT)
        env["orchestrator"]["WORKFLOW_FILE"] = str(short_timeout_workflow(tmp))
        try:
            async with running(settings, stack_children(settings, env), Path(tmp / "log")) as stack:
                notify = url_as(admin_url, permissions.user_name("notify", prefix), secrets["notify"])
                yield OwnUsers(stack, notify)
        finally:
            await drop_databases(settings)
            await delete_users(target, prefix=prefix)


@pytest.fixture
async def admin_channel(own_users: OwnUsers) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(own_users.stack.settings.amqp_url)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


async def test_an_order_completes_with_each_process_on_its_own_user(own_users: OwnUsers, admin_channel) -> None:
    stack = own_users.stack
    listener = OutcomeListener()
    await listener.start(admin_channel)
    sku = new_id("sku-")
    await seed(stack, {sku: (3, "4.00")})
    order_id = new_id()
    await publish_raw(admin_channel, json.dumps(order_body(order_id, [(sku, 1)])).encode())
    assert (await outcome_of(listener, order_id))["status"] == "CONFIRMED"


async def test_a_reply_forged_by_notify_is_dead_lettered_and_the_saga_goes_on(
    own_users: OwnUsers, admin_channel
) -> None:
    stack = own_users.stack
    listener = OutcomeListener()
    await listener.start(admin_channel)
    sku = new_id("sku-")
    await seed(stack, {sku: (3, "4.00")})
    order_id = new_id() + "-slow"
    await publish_raw(admin_channel, json.dumps(order_body(order_id, [(sku, 1)])).encode())

    async def payment_command() -> str | None:
        conn = await db(stack.settings, "orchestrator")
        try:
            return await conn.fetchval(
                "SELECT command_id FROM saga_history WHERE order_id = $1 AND state = 'ProcessPayment' "
                "AND command_id IS NOT NULL ORDER BY id LIMIT 1",
                order_id,
            )
        finally:
            await conn.close()

    # The attacker holds notify's credentials and, worst case, the command's id.
    command_id = await eventually(payment_command, timeout=30, what="ProcessPayment sent")
    # A well-formed reply: only its sender is wrong.
    forged = PaymentProcessed(paymentIntentId="pi_forged", status="succeeded", amount=Decimal("4.00"))
    connection = await aio_pika.connect(own_users.notify_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        replies = await channel.get_exchange(REPLIES_EXCHANGE, ensure=False)
        notify_user = permissions.amqp_user(own_users.notify_url)
        message = aio_pika.Message(
            forged.model_dump_json().encode(),
            type="PaymentProcessed",
            correlation_id=order_id,
            message_id=str(uuid.uuid4()),
            headers={"x-causation-id": command_id},
            user_id=notify_user,
        )
        await replies.publish(message, "orchestrator", mandatory=True)
    finally:
        await connection.close()

    dlq = await admin_channel.get_queue(dq_name(q_name("orchestrator", "replies")), ensure=False)

    async def dead_letter() -> aio_pika.abc.AbstractIncomingMessage | None:
        return await dlq.get(fail=False, no_ack=True)

    letter = await eventually(dead_letter, timeout=30, what="the forged reply dead-lettered")
    assert letter.message_id == message.message_id
    assert letter.headers[HEADER_DEATH_KIND] == "forged"
    reason = letter.headers[HEADER_DEATH_REASON]
    assert "PaymentProcessed" in reason and notify_user in reason and "payment" in reason

    # The saga never saw it: ProcessPayment times out, is retried, and payment's own reply confirms the order.
    assert (await outcome_of(listener, order_id))["status"] == "CONFIRMED"
    conn = await db(stack.settings, "orchestrator")
    try:
        events = [
            (r["event"], r["attempt"])
            for r in await conn.fetch(
                "SELECT event, attempt FROM saga_history WHERE order_id = $1 AND state = 'ProcessPayment' "
                "AND event IN ('TaskSucceeded', 'TaskTimedOut') ORDER BY id",
                order_id,
            )
        ]
    finally:
        await conn.close()
    assert events == [("TaskTimedOut", 1), ("TaskSucceeded", 2)]
