"""Which database errors hold a unit (retry it after a backoff) instead of requeueing its deliveries."""

import asyncpg
import pytest

from plumbing.backoff import Backoff
from plumbing.middleware.base import RAISE, RETRY
from plumbing.middleware.delivery import Unit
from plumbing.middleware.hold import HoldWhileDatabaseAway

pytestmark = pytest.mark.unit

NO_WAIT = Backoff(base=0.0, cap=0.0)


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError("connect call failed"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
    ],
)
async def test_an_unreachable_or_full_database_holds_the_unit(error: Exception) -> None:
    unit = Unit(deliveries=[])
    assert await HoldWhileDatabaseAway(stopping=lambda: False, policy=NO_WAIT).on_error(unit, error) is RETRY
    assert unit.failures == 1


@pytest.mark.parametrize(
    "error",
    [asyncpg.UniqueViolationError("duplicate key"), ValueError("a bug"), asyncpg.DeadlockDetectedError("deadlock")],
)
async def test_anything_else_goes_on_outward(error: Exception) -> None:
    unit = Unit(deliveries=[])
    assert await HoldWhileDatabaseAway(stopping=lambda: False, policy=NO_WAIT).on_error(unit, error) is RAISE
    assert unit.failures == 0


async def test_a_stopping_consumer_holds_nothing() -> None:
    error = asyncpg.TooManyConnectionsError("sorry, too many clients already")
    unit = Unit(deliveries=[])
    assert await HoldWhileDatabaseAway(stopping=lambda: True, policy=NO_WAIT).on_error(unit, error) is RAISE
