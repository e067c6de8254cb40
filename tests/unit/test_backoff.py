"""The one backoff function every reconnect loop asks, and the loops' policies."""

import random

import pytest

from plumbing import backoff as policies
from plumbing.backoff import Backoff, backoff

pytestmark = pytest.mark.unit


def test_doubles_from_base_up_to_the_cap() -> None:
    assert [backoff(n, base=0.5, cap=10.0) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_a_huge_attempt_stays_at_the_cap() -> None:
    assert backoff(10_000, base=0.2, cap=5.0) == 5.0


def test_a_steady_policy_waits_the_same_every_time() -> None:
    assert {backoff(n, base=1.0, cap=1.0) for n in range(1, 50)} == {1.0}


def test_jitter_takes_off_at_most_its_share_and_is_repeatable_with_a_seed() -> None:
    waits = [backoff(4, base=0.5, cap=10.0, jitter=0.5, rng=random.Random(7)) for _ in range(3)]
    assert len(set(waits)) == 1  # same seed, same draw
    draws = [backoff(4, base=0.5, cap=10.0, jitter=0.5, rng=random.Random(seed)) for seed in range(200)]
    assert all(2.0 <= w <= 4.0 for w in draws)
    assert min(draws) < 2.2 and max(draws) > 3.8
    full = [backoff(1, base=1.0, cap=1.0, jitter=1.0, rng=random.Random(seed)) for seed in range(200)]
    assert all(0.0 <= w <= 1.0 for w in full) and min(full) < 0.05


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "jitter"),
    [(0, 1.0, 2.0, 0.0), (1, -1.0, 2.0, 0.0), (1, 3.0, 2.0, 0.0), (1, 1.0, 2.0, 1.5), (1, 1.0, 2.0, -0.1)],
)
def test_refuses_what_makes_no_sense(attempt: int, base: float, cap: float, jitter: float) -> None:
    with pytest.raises(ValueError):
        backoff(attempt, base=base, cap=cap, jitter=jitter)


def test_a_policy_is_refused_when_made_not_when_first_used() -> None:
    with pytest.raises(ValueError):
        Backoff(base=2.0, cap=1.0)


def test_the_loops_wait_what_they_waited_before_the_function() -> None:
    # The numbers each hand-written loop had: the pool and the broker at start 0.5 s doubling to 10 s, a
    # delivery held while the database is away 0.2 s doubling to 5 s, the relay a steady second.
    for policy in (policies.DATABASE_CONNECT, policies.BROKER_CONNECT):
        assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert [policies.DATABASE_AWAY.delay(n) for n in range(1, 7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0]
    assert [policies.RELAY_RESTART.delay(n) for n in range(1, 4)] == [1.0, 1.0, 1.0]
    # And those moved onto it later: an outbox row's next publish 2 s doubling to a minute, a crashing child of
    # orderctl up 0.25 s doubling to 10 s, the timer loop after an interruption a steady second.
    assert [policies.OUTBOX_ROW_RETRY.delay(n) for n in range(1, 8)] == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert [policies.PROCESS_RESTART.delay(n) for n in range(1, 8)] == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert [policies.TIMER_LOOP_RESTART.delay(n) for n in range(1, 4)] == [1.0, 1.0, 1.0]
