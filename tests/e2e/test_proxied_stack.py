"""tests/proxies.py's stack: payment and notify really go through the fault proxies, so a fault armed there
reaches them. An order confirmed with an email and an SMS passes once through each proxy."""

import asyncio
import json
from pathlib import Path

import aio_pika
import pytest
from harness import eventually, new_id, order_body, outcome_of, publish_raw, seed
from proxies import proxied_stack

from devservers.smtp_sink import messages
from orderctl.client import OutcomeListener

pytestmark = pytest.mark.e2e


async def test_payment_and_notify_go_through_the_proxies(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    async with proxied_stack(tmp_path, request=request) as proxied:
        connection = await aio_pika.connect(proxied.stack.settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            listener = OutcomeListener()
            await listener.start(channel)
            sku = new_id("sku-")
            await seed(proxied.stack, {sku: (5, "2.50")})
            order_id = new_id()
            body = order_body(order_id, [(sku, 1)])
            body["customer"]["phone"] = "+15550001234"
            await publish_raw(channel, json.dumps(body).encode())
            assert (await outcome_of(listener, order_id))["status"] == "CONFIRMED"

        async def emailed() -> list:
            found = await asyncio.to_thread(messages, proxied.maildir)
            return [m for m in found if order_id in (m["Subject"] or "")]

        await eventually(emailed, timeout=10, what="the email")
        for name, proxy in proxied.proxies.items():
            assert proxy.stats.exchanges >= 1, f"nothing went through the {name} proxy"
