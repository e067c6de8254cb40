"""The floor benchmark runs end to end on the real servers and leaves no queue or database behind.

Only the shape of the figures is checked: rates depend on the machine and its load, never asserted."""

from collections.abc import Callable

import aio_pika
import asyncpg
import pytest
from harness import ADMIN_DSN

from bench import floor, floor_broker, floor_postgres
from bench.floor_window import FloorError

pytestmark = pytest.mark.integration


def recording(names: list[str], make: Callable[[], str]) -> Callable[[], str]:
    def made() -> str:
        names.append(make())
        return names[-1]

    return made


async def test_floor_measures_both_and_cleans_up(amqp_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    queues: list[str] = []
    databases: list[str] = []
    monkeypatch.setattr(floor_broker, "queue_name", recording(queues, floor_broker.queue_name))
    monkeypatch.setattr(
        floor_postgres, "scratch_database_name", recording(databases, floor_postgres.scratch_database_name)
    )

    result = await floor.measure_floor(amqp_url, ADMIN_DSN, seconds=1.5)

    broker, postgres = result.broker, result.postgres
    # measure_broker raises unless every message published was confirmed and consumed exactly once.
    assert broker.messages > 0
    assert broker.published_per_second > 0 and broker.consumed_per_second > 0
    assert (broker.seconds, broker.in_flight) == (1.5, 64)
    # The window is part of the run, so it cannot hold more messages than the whole run.
    assert round(broker.published_per_second * broker.seconds) <= broker.messages
    assert round(broker.consumed_per_second * broker.seconds) <= broker.messages
    assert postgres.transactions > 0 and postgres.per_second > 0
    assert (postgres.seconds, postgres.connections) == (1.5, 8)
    assert round(postgres.per_second * postgres.seconds) <= postgres.transactions
    assert result.as_dict()["broker"]["messages"] == broker.messages

    assert len(queues) == 1 and len(databases) == 1
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await channel.declare_queue(queues[0], passive=True)
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        assert await admin.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", databases[0]) == 0
    finally:
        await admin.close()


def test_a_lost_or_duplicated_message_fails_the_run() -> None:
    published = {"published": 3, "confirmed": 3, "in_window": 2}
    whole = {"consumed": 3, "distinct": 3, "highest": 2, "duplicates": 0, "in_window": 2}
    assert floor_broker.verify_broker_run(published, whole) == 3
    lost = {**whole, "consumed": 2, "distinct": 2, "highest": 1}
    duplicated = {**whole, "consumed": 4, "duplicates": 1}
    for consumed in (lost, duplicated):
        with pytest.raises(FloorError):
            floor_broker.verify_broker_run(published, consumed)
    with pytest.raises(FloorError):
        floor_broker.verify_broker_run({**published, "confirmed": 2}, whole)
