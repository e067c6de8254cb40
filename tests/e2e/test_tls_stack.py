"""One order end to end with every process on TLS: AMQP over amqps:// (through a TLS-terminating proxy in front
of the local RabbitMQ) and PostgreSQL with sslmode=verify-full (a private cluster that accepts only TLS), both
certificates signed by a CA the test makes and hands to the processes as the production overlay does
(AMQP_CA_FILE, PGSSLROOTCERT)."""

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import pytest
import trustme
from harness import (
    RABBITMQ_HOST_PORT,
    Stack,
    db,
    free_port_block,
    fresh_vhost,
    new_id,
    order_body,
    outcome_of,
    publish_raw,
    seed,
    stack_children,
)
from tls_support import SERVER_NAME, PrivatePostgres, amqps_proxy, ca_file, private_postgres

from orderctl.client import OutcomeListener
from orderctl.config import SERVICES, CtlSettings
from orderctl.provision import migrate_all
from orderctl.sandbox import running

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def cluster(ca: trustme.CA) -> Iterator[PrivatePostgres]:
    with private_postgres(ca) as started:
        yield started


@pytest.fixture
async def tls_stack(
    ca: trustme.CA, cluster: PrivatePostgres, servers: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Stack]:
    ca_path = ca_file(ca, tmp_path)
    # As in the production overlay: the CA path in PGSSLROOTCERT, for the migrations here and every process.
    monkeypatch.setenv("PGSSLROOTCERT", ca_path)
    with fresh_vhost("orderflow-tls") as plain_url:
        async with amqps_proxy(ca, RABBITMQ_HOST_PORT) as proxy:
            vhost = plain_url.rsplit("/", 1)[1]
            unique = f"of_tls{uuid.uuid4().hex[:8]}"
            base = free_port_block(len(SERVICES) + 3)
            settings = CtlSettings(
                # The admin URL names its CA itself; the processes' URLs leave it to PGSSLROOTCERT.
                admin_database_url=cluster.url(sslmode="verify-full", sslrootcert=ca_path),
                amqp_url=f"amqps://guest:guest@{SERVER_NAME}:{proxy.port}/{vhost}?cafile={ca_path}",
                base_http_port=base,
                stripe_port=base + len(SERVICES),
                smtp_port=base + len(SERVICES) + 1,
                sms_port=base + len(SERVICES) + 2,
                maildir=tmp_path / "maildir",
                **{
                    f"{s.name}_database_url": cluster.url(
                        f"{unique}_{s.name}", user=f"orderflow_{s.name}", sslmode="verify-full"
                    )
                    for s in SERVICES
                },
            )
            await migrate_all(settings)
            children = stack_children(settings)  # PGSSLROOTCERT reaches them with the environment
            async with running(settings, children, tmp_path / "log") as stack:
                yield stack


async def test_an_order_runs_end_to_end_with_every_process_on_tls(tls_stack: Stack, cluster: PrivatePostgres) -> None:
    sku = new_id("sku-")
    await seed(tls_stack, {sku: (2, "7.50")})
    connection = await aio_pika.connect_robust(tls_stack.settings.amqp_url)
    try:
        channel = await connection.channel()
        listener = OutcomeListener()
        await listener.start(channel)
        order_id = new_id()
        await publish_raw(channel, json.dumps(order_body(order_id, [(sku, 1)])).encode())
        assert (await outcome_of(listener, order_id))["status"] == "CONFIRMED"
    finally:
        await connection.close()

    # Every process's connections to its database are TLS (only hostssl is accepted, and pg_stat_ssl says so).
    conn = await db(tls_stack.settings, "orchestrator")
    try:
        rows = await conn.fetch(
            "SELECT a.usename, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
            "WHERE a.usename LIKE 'orderflow_%'"
        )
    finally:
        await conn.close()
    assert {r["usename"] for r in rows} == {f"orderflow_{s.name}" for s in SERVICES}
    assert all(r["ssl"] for r in rows)
