"""Fixtures shared by the integration and end-to-end tests."""

import json
import socket
from collections.abc import AsyncIterator

import aio_pika
import pytest
from harness import (
    RABBITMQ_HOST_PORT,
    STACK_FAULTS,
    Stack,
    create_api_token,
    create_databases,
    drop_databases,
    fresh_vhost,
    settings_for,
    short_timeout_workflow,
    stack_children,
    wait_ready,
)

from orderctl.client import OutcomeListener
from orderctl.config import SERVICES
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
async def stack(
    amqp_url: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> AsyncIterator[Stack]:
    tmp = tmp_path_factory.mktemp("stack")
    settings = settings_for(amqp_url, tmp=tmp)
    await create_databases(settings)
    api_token = await create_api_token(settings, "viewer", "tests")
    extra_env = {service: {"FAULTS": json.dumps(rules)} for service, rules in STACK_FAULTS.items()}
    workflow_file = str(short_timeout_workflow(tmp))
    extra_env["orchestrator"] = {"WORKFLOW_FILE": workflow_file}
    (tmp / "traces").mkdir()
    for spec in SERVICES:  # spans as JSON lines, one file per process, for the tracing test
        extra_env.setdefault(spec.name, {})["TRACE_FILE"] = str(tmp / "traces" / f"{spec.name}.jsonl")
    supervisor = Supervisor(stack_children(settings, extra_env), log_dir=str(tmp / "log"))
    await supervisor.start()
    running = Stack(
        settings=settings,
        supervisor=supervisor,
        log_dir=tmp / "log",
        workflow_file=workflow_file,
        trace_dir=tmp / "traces",
        api_token=api_token,
    )
    try:
        await wait_ready(running)
        yield running
    finally:
        await supervisor.stop()
        await drop_databases(settings)
        if request.session.testsfailed:
            # The processes' own logs are the first thing to read when an end-to-end test fails.
            for log in sorted((tmp / "log").glob("*.log")):
                print(f"\n----- {log.name} (last 60 lines) -----\n" + "\n".join(log.read_text().splitlines()[-60:]))


@pytest.fixture
async def channel(stack: Stack) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect_robust(stack.settings.amqp_url)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


@pytest.fixture
async def listener(channel: aio_pika.abc.AbstractChannel) -> OutcomeListener:
    """Hears every order.* outcome from the moment the test starts."""
    listening = OutcomeListener()
    await listening.start(channel)
    return listening
