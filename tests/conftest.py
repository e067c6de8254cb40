"""Fixtures shared by the integration and end-to-end tests."""

import socket
from collections.abc import AsyncIterator

import aio_pika
import pytest
from harness import (
    RABBITMQ_HOST_PORT,
    Stack,
    create_databases,
    drop_databases,
    free_port_block,
    fresh_vhost,
    settings_for,
    stack_children,
    wait_ready,
)

from orderctl.supervisor import Supervisor


def _answering(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def servers() -> None:
    for name, (host, port) in {"RabbitMQ": RABBITMQ_HOST_PORT, "PostgreSQL": ("127.0.0.1", 5432)}.items():
        if not _answering(host, port):
            pytest.fail(f"{name} is not answering on {host}:{port}; run scripts/ensure-servers")


@pytest.fixture(scope="session")
def amqp_url(servers: None) -> str:
    with fresh_vhost() as url:
        yield url


@pytest.fixture(scope="session")
async def stack(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    tmp = tmp_path_factory.mktemp("stack")
    settings = settings_for(amqp_url, base_port=free_port_block(5), tmp=tmp)
    await create_databases(settings)
    supervisor = Supervisor(stack_children(settings), log_dir=str(tmp / "log"))
    await supervisor.start()
    running = Stack(settings=settings, supervisor=supervisor, log_dir=tmp / "log")
    try:
        await wait_ready(running)
        yield running
    finally:
        await supervisor.stop()
        await drop_databases(settings)


@pytest.fixture
async def channel(stack: Stack) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect_robust(stack.settings.amqp_url)
    try:
        yield await connection.channel()
    finally:
        await connection.close()
