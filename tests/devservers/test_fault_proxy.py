"""The fault proxy between real clients and the real dev servers: the stripe SDK against the Stripe server,
aiosmtplib against the SMTP sink, aiohttp against the SMS server. Each test asserts what the client saw and
what the upstream holds afterwards: a lost answer leaves the effect in place, a reset before the request leaves
none, a held answer arrives after the upstream acted."""

import asyncio
import base64
import json
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
import stripe
from aiohttp import web
from harness import eventually, free_port

from devservers import sms_server, smtp_sink
from devservers.fault_proxy import Fault, FaultProxy
from devservers.stripe_server import RunningServer, run_stripe_server

pytestmark = pytest.mark.integration

CREATE_INTENT = b"POST /v1/payment_intents "
END_OF_DATA = b"\r\n.\r\n"


@pytest.fixture
async def sim() -> AsyncIterator[RunningServer]:
    async with run_stripe_server() as server:
        yield server


@pytest.fixture
async def stripe_proxy(sim: RunningServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", 0, sim.host, sim.port) as proxy:
        yield proxy


@pytest.fixture
async def client(stripe_proxy: FaultProxy) -> AsyncIterator[stripe.StripeClient]:
    """The SDK as the payment service builds it: aiohttp, keep-alive, no SDK retries."""
    http = stripe.AIOHTTPClient()
    yield stripe.StripeClient(
        "sk_test_orderflow",
        base_addresses={"api": f"http://127.0.0.1:{stripe_proxy.port}"},
        http_client=http,
        max_network_retries=0,
    )
    await http.close_async()  # type: ignore[no-untyped-call]


async def charge(client: stripe.StripeClient, order_id: str, key: str | None = None) -> Any:
    return await client.v1.payment_intents.create_async(
        {
            "amount": 1250,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
            "confirm": True,
            "metadata": {"orderId": order_id},
        },
        {"idempotency_key": key or f"{order_id}-payment"},
    )


async def intents_of(sim: RunningServer, order_id: str) -> list[dict[str, Any]]:
    """The order's PaymentIntents as the server's /_test/state shows them (asked directly, not via the proxy)."""
    async with aiohttp.ClientSession() as session, session.get(f"{sim.url}/_test/state") as response:
        state = await response.json()
    return [i for i in state["payment_intents"] if (i.get("metadata") or {}).get("orderId") == order_id]


# -- Stripe ---------------------------------------------------------------------------------------
async def test_drop_answer_loses_the_answer_of_a_charge_that_happened(
    sim: RunningServer, stripe_proxy: FaultProxy, client: stripe.StripeClient
) -> None:
    stripe_proxy.add(Fault("drop_answer", match=CREATE_INTENT))
    with pytest.raises(stripe.APIConnectionError):
        await charge(client, "ORDER#lost")
    [intent] = await intents_of(sim, "ORDER#lost")
    assert intent["status"] == "succeeded"
    assert stripe_proxy.stats.drop_answer == 1
    # The fault was for one exchange: asking again with the same key gets the same intent, not a second charge.
    again = await charge(client, "ORDER#lost")
    assert again.id == intent["id"] and len(await intents_of(sim, "ORDER#lost")) == 1


async def test_reset_before_creates_nothing(
    sim: RunningServer, stripe_proxy: FaultProxy, client: stripe.StripeClient
) -> None:
    stripe_proxy.add(Fault("reset_before", match=CREATE_INTENT))
    with pytest.raises(stripe.APIConnectionError):
        await charge(client, "ORDER#never")
    assert stripe_proxy.stats.reset_before == 1
    assert await intents_of(sim, "ORDER#never") == []
    assert (await charge(client, "ORDER#never")).status == "succeeded"


async def test_delay_holds_an_answer_the_server_already_gave(
    sim: RunningServer, stripe_proxy: FaultProxy, client: stripe.StripeClient
) -> None:
    stripe_proxy.add(Fault("delay", delay_seconds=1.5, match=CREATE_INTENT))
    started = time.monotonic()
    pending = asyncio.create_task(charge(client, "ORDER#held"))
    [intent] = await eventually(lambda: intents_of(sim, "ORDER#held"), timeout=10, what="the intent at the server")
    assert not pending.done(), "the answer arrived while the proxy should have held it"
    assert (await pending).id == intent["id"]
    assert time.monotonic() - started >= 1.5
    assert stripe_proxy.stats.delay == 1


async def test_times_counts_matching_exchanges_only(
    sim: RunningServer, stripe_proxy: FaultProxy, client: stripe.StripeClient
) -> None:
    stripe_proxy.add(Fault("drop_answer", times=2, match=CREATE_INTENT))
    for _ in range(2):
        with pytest.raises(stripe.APIConnectionError):
            await charge(client, "ORDER#twice")
    [intent] = await intents_of(sim, "ORDER#twice")
    # A request the fault does not match passes and leaves it armed; then the fault is spent.
    assert (await client.v1.payment_intents.retrieve_async(intent["id"])).id == intent["id"]
    assert stripe_proxy.stats.drop_answer == 2 and stripe_proxy.faults == []
    assert (await charge(client, "ORDER#twice")).id == intent["id"]

    stripe_proxy.add(Fault("reset_before", times=None, match=CREATE_INTENT))
    for n in range(3):
        with pytest.raises(stripe.APIConnectionError):
            await charge(client, f"ORDER#always{n}")
    assert stripe_proxy.stats.reset_before == 3 and len(stripe_proxy.faults) == 1
    stripe_proxy.clear()
    assert (await charge(client, "ORDER#always0")).status == "succeeded"


async def test_each_exchange_of_a_kept_alive_connection_is_judged_on_its_own(
    sim: RunningServer, stripe_proxy: FaultProxy, client: stripe.StripeClient
) -> None:
    stripe_proxy.add(Fault("drop_answer", match=b"/cancel "))
    intent = await client.v1.payment_intents.create_async(
        {"amount": 900, "currency": "usd", "metadata": {"orderId": "ORDER#cancel"}}
    )
    with pytest.raises(stripe.APIConnectionError):
        await client.v1.payment_intents.cancel_async(intent.id)
    [seen] = await intents_of(sim, "ORDER#cancel")
    assert seen["status"] == "canceled"
    assert stripe_proxy.stats.connections == 1 and stripe_proxy.stats.exchanges == 2


# -- SMTP and SMS ---------------------------------------------------------------------------------
@pytest.fixture
async def smtp_proxy(tmp_path: Path) -> AsyncIterator[tuple[FaultProxy, Path]]:
    maildir = tmp_path / "maildir"
    controller = smtp_sink.start("127.0.0.1", free_port(), maildir)
    try:
        async with FaultProxy("127.0.0.1", 0, "127.0.0.1", controller.port) as proxy:
            yield proxy, maildir
    finally:
        controller.stop()


def mail(subject: str) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "orders@orderflow.local", "ada@example.com", subject
    message.set_content("Your order is confirmed.")
    return message


async def test_drop_answer_after_data_leaves_the_message_delivered(smtp_proxy: tuple[FaultProxy, Path]) -> None:
    proxy, maildir = smtp_proxy
    proxy.add(Fault("drop_answer", match=END_OF_DATA))
    with pytest.raises(aiosmtplib.SMTPException):
        await aiosmtplib.send(mail("lost answer"), hostname="127.0.0.1", port=proxy.port, timeout=10)
    assert proxy.stats.drop_answer == 1
    delivered = await eventually(lambda: _messages(maildir), timeout=10, what="the message in the Maildir")
    assert [m["Subject"] for m in delivered] == ["lost answer"]


async def test_reset_before_end_of_data_delivers_nothing(smtp_proxy: tuple[FaultProxy, Path]) -> None:
    proxy, maildir = smtp_proxy
    proxy.add(Fault("reset_before", match=END_OF_DATA))
    with pytest.raises(aiosmtplib.SMTPException):
        await aiosmtplib.send(mail("never sent"), hostname="127.0.0.1", port=proxy.port, timeout=10)
    assert proxy.stats.reset_before == 1
    await aiosmtplib.send(mail("sent"), hostname="127.0.0.1", port=proxy.port, timeout=10)
    assert [m["Subject"] for m in await _messages(maildir)] == ["sent"]


async def test_the_greeting_is_no_exchange(smtp_proxy: tuple[FaultProxy, Path]) -> None:
    """A fault matching everything spares the 220 the server speaks first and takes the first answer."""
    proxy, _ = smtp_proxy
    proxy.add(Fault("drop_answer"))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"220 ")
        writer.write(b"NOOP\r\n")
        with pytest.raises(ConnectionError):
            if not await asyncio.wait_for(reader.read(1024), 10):
                raise ConnectionResetError("closed")
    finally:
        writer.close()
    assert proxy.stats.drop_answer == 1 and proxy.stats.exchanges == 1


async def _messages(maildir: Path) -> list[Any]:
    return await asyncio.to_thread(smtp_sink.messages, maildir)


async def test_drop_answer_of_an_sms_that_was_accepted() -> None:
    runner = web.AppRunner(sms_server.make_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream = int(runner.addresses[0][1])
    try:
        async with FaultProxy("127.0.0.1", 0, "127.0.0.1", upstream) as proxy:
            proxy.add(Fault("drop_answer", match=b"POST /2010-04-01/"))
            url = f"http://127.0.0.1:{proxy.port}/2010-04-01/Accounts/ACorderflowlocal/Messages.json"
            form = {"To": "+15005550006", "From": "+15005550006", "Body": "confirmed"}
            auth = {"Authorization": "Basic " + base64.b64encode(b"ACorderflowlocal:orderflow-local-token").decode()}
            async with aiohttp.ClientSession(headers=auth) as s:
                with pytest.raises(aiohttp.ClientError):
                    await s.post(url, data=form)
                async with s.get(f"http://127.0.0.1:{upstream}/_test/messages") as response:
                    assert [m["body"] for m in (await response.json())["messages"]] == ["confirmed"]
            assert proxy.stats.drop_answer == 1
    finally:
        await runner.cleanup()


# -- the command line -----------------------------------------------------------------------------
def _control(port: int, method: str, path: str, body: Any = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


async def test_command_line_with_its_control_port(sim: RunningServer) -> None:
    listen, control = free_port(), free_port()
    argv = ["--listen", str(listen), "--upstream", f"127.0.0.1:{sim.port}", "--control", str(control)]
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "devservers.fault_proxy", *argv)
    http = stripe.AIOHTTPClient()
    client = stripe.StripeClient("sk_test_x", base_addresses={"api": f"http://127.0.0.1:{listen}"}, http_client=http)
    try:
        await eventually(lambda: asyncio.to_thread(_answers, control), timeout=20, what="the control port")
        fault = {"kind": "drop_answer", "match": "POST /v1/payment_intents"}
        assert (await asyncio.to_thread(_control, control, "POST", "/faults", fault))["faults"][0]["left"] == 1
        order_id = f"ORDER#{uuid.uuid4().hex[:6]}"
        with pytest.raises(stripe.APIConnectionError):
            await charge(client, order_id)
        assert len(await intents_of(sim, order_id)) == 1
        state = await asyncio.to_thread(_control, control, "GET", "/stats")
        assert state["stats"]["drop_answer"] == 1 and state["faults"] == []
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)


def _answers(port: int) -> bool:
    try:
        _control(port, "GET", "/stats")
    except OSError:
        return False
    return True


def test_faults_are_checked_when_made() -> None:
    for bad in (
        {"kind": "delay"},
        {"kind": "drop_answer", "delay_seconds": 1},
        {"kind": "reset_before", "times": 0},
        {"kind": "lose"},
    ):
        with pytest.raises(ValueError):
            Fault(**bad)
