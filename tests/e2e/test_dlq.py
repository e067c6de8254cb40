"""`orderctl dlq` as an operator uses it: list and show dead letters with their reasons, replay them to
where they were first published (their orders then complete), purge them; the queue's order is kept. A replay
checks each dead letter against its saga first: a command whose saga ended, or a request whose saga exists,
stays where it is unless forced."""

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import aio_pika
import pytest
from harness import (
    Stack,
    db,
    eventually,
    fresh_vhost,
    new_id,
    order_body,
    outcome_of,
    publish_raw,
    seed,
    stock_of,
)

from contracts.asyncapi import consumer_queues
from plumbing.topology import DEAD_LETTER_EXCHANGE, declare_consumer_queue

pytestmark = pytest.mark.e2e

ORDER_REQUESTS = "orchestrator.order-requests"


async def dlq(amqp_url: str, *args: str, stack: Stack | None = None) -> subprocess.CompletedProcess:
    """Run ``orderctl dlq ARGS`` against the broker at ``amqp_url`` (and ``stack``'s orchestrator database, which
    a replay reads), as a separate process."""
    env = {**os.environ, "ORDERFLOW_AMQP_URL": amqp_url}
    if stack is not None:
        env["ORDERFLOW_ORCHESTRATOR_DATABASE_URL"] = stack.settings.orchestrator_database_url
    command = [sys.executable, "-m", "orderctl", "dlq", *args]
    return await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=60)


async def dead_letter(
    channel: aio_pika.abc.AbstractChannel, queue: str, body: bytes, message_id: str, headers: dict
) -> None:
    """Put a message into ``queue``'s dead-letter queue as a consumer or the broker would have."""
    exchange = await channel.get_exchange(DEAD_LETTER_EXCHANGE)
    message = aio_pika.Message(body=body, message_id=message_id, content_type="application/json", headers=headers)
    await exchange.publish(message, queue)


def counts_of(listing: str) -> dict[str, str]:
    """`dlq list`'s table as {dead-letter queue: count}."""
    return {line.split()[0]: line.split(None, 1)[1] for line in listing.splitlines()[1:]}


def consumer_dead_lettered(reason: str, exchange: str, routing_key: str) -> dict:
    kind = reason.split(":", 1)[0]
    return {
        "x-death-reason": reason,
        "x-death-kind": kind,
        "x-original-exchange": exchange,
        "x-original-routing-key": routing_key,
    }


def broker_dead_lettered(queue: str, exchange: str, routing_key: str) -> dict:
    death = {
        "count": 5,
        "reason": "delivery_limit",
        "queue": queue,
        "time": datetime.now(UTC),
        "exchange": exchange,
        "routing-keys": [routing_key],
    }
    return {"x-death": [death], "x-delivery-count": 5}


async def test_a_malformed_order_is_listed_shown_with_its_reason_and_purged(stack: Stack, channel) -> None:
    url = stack.settings.amqp_url
    order_id = new_id()
    message_id = f"bad-{order_id}"
    await publish_raw(channel, json.dumps(order_body(order_id, [("sku-x", 0)])).encode(), message_id=message_id)

    runs: list[subprocess.CompletedProcess] = []

    async def shown() -> str | None:
        runs.append(await dlq(url, "show", ORDER_REQUESTS, "--limit", "100000"))
        return runs[-1].stdout if message_id in runs[-1].stdout else None

    try:
        output = await eventually(shown, timeout=30, interval=0.5, what="the dead letter in `dlq show`")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last run: exit {runs[-1].returncode}, {runs[-1].stderr[-500:]}") from None
    entry = output[output.index(message_id) :].split("\n#", 1)[0]
    assert "kind    schema" in entry and "quantity" in entry and "orders / order.requested" in entry
    assert order_id in entry  # the body excerpt

    listed = await dlq(url, "list")
    assert listed.returncode == 0, listed.stderr
    counts = counts_of(listed.stdout)
    assert set(counts) == {f"{q}.dlq" for q in consumer_queues()}
    assert int(counts[f"{ORDER_REQUESTS}.dlq"]) >= 1

    refused = await dlq(url, "purge", ORDER_REQUESTS, "--message-id", message_id)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert message_id in (await dlq(url, "show", ORDER_REQUESTS, "--limit", "100000")).stdout
    purged = await dlq(url, "purge", ORDER_REQUESTS, "--message-id", message_id, "--yes")
    assert purged.returncode == 0 and "purged 1" in purged.stdout, purged.stderr
    assert message_id not in (await dlq(url, "show", ORDER_REQUESTS, "--limit", "100000")).stdout


async def test_replayed_dead_letters_complete_their_orders_and_a_second_replay_is_deduplicated(
    stack: Stack, channel, listener
) -> None:
    url = stack.settings.amqp_url
    sku = new_id("sku-")
    await seed(stack, {sku: (5, "2.50")})
    by_consumer, by_broker = new_id(), new_id()
    letters = {
        # Dead-lettered by our consumer (say, during a bug since fixed): the original route in x-original-*.
        f"dl-{by_consumer}": (
            by_consumer,
            consumer_dead_lettered("bad_envelope: simulated", "orders", "order.requested"),
        ),
        # Dead-lettered by the broker after its delivery limit: the original route in x-death.
        f"dl-{by_broker}": (by_broker, broker_dead_lettered(ORDER_REQUESTS, "orders", "order.requested")),
    }
    for message_id, (order_id, headers) in letters.items():
        body = json.dumps(order_body(order_id, [(sku, 1)])).encode()
        await dead_letter(channel, ORDER_REQUESTS, body, message_id, headers)

    shown = await dlq(url, "show", ORDER_REQUESTS, "--limit", "100000")
    assert all(m in shown.stdout for m in letters), shown.stdout
    broker_entry = shown.stdout[shown.stdout.index(f"dl-{by_broker}") :].split("\n#", 1)[0]
    assert "kind    delivery_limit" in broker_entry and "orders / order.requested" in broker_entry

    ids = [arg for m in letters for arg in ("--message-id", m)]
    replayed = await dlq(url, "replay", ORDER_REQUESTS, *ids, stack=stack)  # no saga yet for either order
    assert replayed.returncode == 0, replayed.stderr
    assert all(f"replayed {m} to orders order.requested" in replayed.stdout for m in letters)
    for order_id, _ in letters.values():
        assert (await outcome_of(listener, order_id))["status"] == "CONFIRMED"
    after = await dlq(url, "show", ORDER_REQUESTS, "--limit", "100000")
    assert not any(m in after.stdout for m in letters)

    # The same request dead-lettered again: its saga exists, so the check holds it back, in the queue.
    message_id, (order_id, headers) = next(iter(letters.items()))
    await dead_letter(
        channel, ORDER_REQUESTS, json.dumps(order_body(order_id, [(sku, 1)])).encode(), message_id, headers
    )
    held = await dlq(url, "replay", ORDER_REQUESTS, "--message-id", message_id, stack=stack)
    assert held.returncode == 0, held.stderr
    assert f"skipped {message_id}: a saga exists for {order_id} (status CONFIRMED)" in held.stdout, held.stdout
    assert message_id in (await dlq(url, "show", ORDER_REQUESTS, "--limit", "100000")).stdout
    # Forced, it keeps its message id: the orchestrator's inbox absorbs it.
    assert (await dlq(url, "replay", ORDER_REQUESTS, "--message-id", message_id, "--force")).returncode == 0

    async def handled_once() -> bool:
        conn = await db(stack.settings, "orchestrator")
        try:
            seen = await conn.fetchval("SELECT count(*) FROM inbox WHERE message_id = $1", message_id)
            started = await conn.fetchval(
                "SELECT count(*) FROM saga_history WHERE order_id = $1 AND event = 'ExecutionStarted'", order_id
            )
        finally:
            await conn.close()
        return seen == 1 and started == 1

    assert await eventually(handled_once, timeout=10, what="one inbox row and one saga start")
    assert message_id not in (await dlq(url, "show", ORDER_REQUESTS, "--limit", "100000")).stdout
    assert (await dlq(url, "replay", ORDER_REQUESTS, "--message-id", "no-such-id", stack=stack)).returncode == 1


async def test_show_keeps_the_order_replay_strips_death_headers_purge_empties(servers: None) -> None:
    """In a vhost of its own (no process consumes it), so every count and position is exact."""
    queue = "payment.commands"
    with fresh_vhost() as url:
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            for name, bindings in consumer_queues().items():
                await declare_consumer_queue(channel, name, bindings, delivery_limit=5)
            ids = [f"m{i}-{uuid.uuid4().hex[:6]}" for i in range(5)]
            for i, message_id in enumerate(ids):
                headers = consumer_dead_lettered(f"schema: case {i}", "orderflow.commands", "payment.ProcessPayment")
                headers["x-attempt"] = 2
                await dead_letter(channel, queue, b'{"orderId": "ORDER#1"}', message_id, headers)

            listed = counts_of((await dlq(url, "list")).stdout)
            assert listed == {f"{q}.dlq": "5" if q == queue else "0" for q in consumer_queues()}
            for _ in range(2):  # showing twice: same messages, same order, nothing removed
                shown = await dlq(url, "show", queue, "--limit", "3")
                assert shown.returncode == 0, shown.stderr
                assert f"{queue}.dlq: 5 dead letter(s), showing 3" in shown.stdout
                positions = [shown.stdout.index(m) for m in ids[:3]]
                assert positions == sorted(positions) and ids[3] not in shown.stdout
                assert "reason  schema: case 0" in shown.stdout

            purged = await dlq(url, "purge", f"{queue}.dlq", "--message-id", ids[2], "--yes")
            assert "purged 1" in purged.stdout, purged.stderr
            remaining = [ids[0], ids[1], ids[3], ids[4]]
            shown = await dlq(url, "show", queue)
            assert [shown.stdout.index(m) for m in remaining] == sorted(shown.stdout.index(m) for m in remaining)

            # Forced: these commands belong to no saga (no orchestrator runs in this vhost).
            replayed = await dlq(url, "replay", queue, "--message-id", ids[0], "--force")
            assert f"replayed {ids[0]} to orderflow.commands payment.ProcessPayment" in replayed.stdout
            target = await channel.get_queue(queue, ensure=False)
            copy = await target.get(no_ack=True, timeout=5)
            assert copy.message_id == ids[0] and copy.body == b'{"orderId": "ORDER#1"}'
            headers = copy.headers or {}
            assert headers.get("x-attempt") == 2 and headers.get("x-replayed-from") == f"{queue}.dlq"
            assert not {"x-death-reason", "x-death-kind", "x-original-exchange", "x-death"} & set(headers)

            refused = await dlq(url, "purge", queue)
            assert refused.returncode == 2
            emptied = await dlq(url, "purge", queue, "--yes")
            assert "purged 3" in emptied.stdout, emptied.stderr
            assert "0 dead letter(s)" in (await dlq(url, "show", queue)).stdout
            missing = await dlq(url, "show", "nope.commands")
            assert missing.returncode == 1 and "no queue named 'nope.commands.dlq'" in missing.stderr
        finally:
            await connection.close()


async def test_a_dead_lettered_command_whose_saga_ended_is_not_republished(stack: Stack, channel, listener) -> None:
    url = stack.settings.amqp_url
    sku = new_id("sku-")
    await seed(stack, {sku: (5, "1.50")})
    order_id = new_id()
    await publish_raw(channel, json.dumps(order_body(order_id, [(sku, 1)])).encode())
    assert (await outcome_of(listener, order_id))["status"] == "CONFIRMED"
    conn = await db(stack.settings, "orchestrator")
    try:
        command_id = await conn.fetchval(
            """SELECT command_id FROM saga_history
               WHERE order_id = $1 AND event = 'TaskScheduled' AND state = 'ReserveInventory'""",
            order_id,
        )
    finally:
        await conn.close()
    # The reservation command as a consumer would have dead-lettered it, found days after the saga ended.
    body = json.dumps({"orderId": order_id, "items": [{"productId": sku, "quantity": 1}], "idempotencyId": order_id})
    headers = consumer_dead_lettered("bad_envelope: simulated", "orderflow.commands", "inventory.ReserveInventory")
    exchange = await channel.get_exchange(DEAD_LETTER_EXCHANGE)
    await exchange.publish(
        aio_pika.Message(
            body=body.encode(),
            message_id=command_id,
            correlation_id=order_id,
            type="ReserveInventory",
            reply_to="orchestrator",
            content_type="application/json",
            headers=headers,
        ),
        "inventory.commands",
    )

    async def duplicates() -> int:
        """How often the inventory's inbox has seen the command again: a republished copy counts one."""
        conn = await db(stack.settings, "inventory")
        try:
            return await conn.fetchval(
                "SELECT duplicates FROM inbox WHERE consumer = 'inventory' AND message_id = $1", command_id
            )
        finally:
            await conn.close()

    held = await dlq(url, "replay", "inventory.commands", "--message-id", command_id, stack=stack)
    assert held.returncode == 0, held.stderr
    assert "replayed" not in held.stdout
    assert (
        f"skipped {command_id}: saga finished with status CONFIRMED; left in inventory.commands.dlq" in held.stdout
    ), held.stdout
    assert command_id in (await dlq(url, "show", "inventory.commands", "--limit", "100000")).stdout
    assert await duplicates() == 0

    dropped = await dlq(url, "replay", "inventory.commands", "--message-id", command_id, "--drop-skipped", stack=stack)
    assert f"skipped {command_id}: saga finished with status CONFIRMED; dropped" in dropped.stdout, dropped.stdout
    assert command_id not in (await dlq(url, "show", "inventory.commands", "--limit", "100000")).stdout
    assert await duplicates() == 0
    assert await stock_of(stack, sku) == 4  # one order's unit, reserved once
