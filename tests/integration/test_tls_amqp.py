"""AMQP over TLS as the processes connect: amqps:// with the CA bundle from AMQP_CA_FILE, through a
TLS-terminating proxy (devservers/tls_proxy.py) in front of the local RabbitMQ. The right CA and name connect
and publish; a wrong CA, or a name the certificate does not carry, never completes the handshake."""

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import pytest
import trustme
from harness import RABBITMQ_HOST_PORT, eventually, fresh_vhost
from tls_support import SERVER_NAME, amqps_proxy, ca_file

from devservers.tls_proxy import TlsProxy
from plumbing.broker import Broker
from plumbing.settings import ProcessSettings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def vhost(servers: None) -> Iterator[str]:
    with fresh_vhost("orderflow-tls") as url:
        yield url.rsplit("/", 1)[1]


@pytest.fixture
async def proxy(ca: trustme.CA) -> AsyncIterator[TlsProxy]:
    async with amqps_proxy(ca, RABBITMQ_HOST_PORT) as running:
        yield running


def settings(proxy: TlsProxy, vhost: str, ca: str, *, host: str = SERVER_NAME) -> ProcessSettings:
    return ProcessSettings(amqp_url=f"amqps://guest:guest@{host}:{proxy.port}/{vhost}", amqp_ca_file=ca)


async def test_the_right_ca_connects_and_publishes(proxy: TlsProxy, vhost: str, ca, tmp_path: Path) -> None:
    broker = Broker(settings(proxy, vhost, ca_file(ca, tmp_path)).amqp_url, name="tls-test")
    await asyncio.wait_for(broker.connect(), 30)
    try:
        channel = await broker.channel(prefetch=1)
        queue = await channel.declare_queue("", exclusive=True)
        await broker.publish("", queue.name, aio_pika.Message(b"over tls"), mandatory=True)
        message = await eventually(lambda: queue.get(fail=False), timeout=10, what="the message back")
        assert message.body == b"over tls"
        await message.ack()
        assert proxy.accepted >= 1
    finally:
        await broker.close()


async def refused(url: str, caplog: pytest.LogCaptureFixture) -> str:
    """Broker.connect keeps retrying a failed handshake; the warning it logs says why."""
    broker = Broker(url, name="tls-test-refused")
    with caplog.at_level(logging.WARNING, logger="plumbing.broker"):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(broker.connect(), 3)
    errors = [r.fields["error"] for r in caplog.records if r.getMessage() == "broker not reachable, retrying"]
    assert errors, "no connection attempt logged"
    return errors[0]


async def test_a_wrong_ca_is_refused(proxy: TlsProxy, vhost: str, tmp_path: Path, caplog) -> None:
    wrong = ca_file(trustme.CA(), tmp_path, "wrong-ca.crt")
    error = await refused(settings(proxy, vhost, wrong).amqp_url, caplog)
    assert "CERTIFICATE_VERIFY_FAILED" in error and "unable to get local issuer certificate" in error
    assert proxy.accepted == 0


async def test_a_name_the_certificate_does_not_carry_is_refused(
    proxy: TlsProxy, vhost: str, ca, tmp_path: Path, caplog
) -> None:
    error = await refused(settings(proxy, vhost, ca_file(ca, tmp_path), host="127.0.0.1").amqp_url, caplog)
    assert "CERTIFICATE_VERIFY_FAILED" in error and "IP address mismatch" in error
    assert proxy.accepted == 0
