"""Retry and Catch maths, as the Amazon States Language defines them."""

import random

import pytest

from orchestrator.definition import Catcher, Retrier
from orchestrator.retry import delay_seconds, find_catcher, matches, next_retry

pytestmark = pytest.mark.unit


def retrier(*errors: str, **fields: object) -> Retrier:
    return Retrier(ErrorEquals=list(errors), **fields)


def catcher(*errors: str, next_state: str) -> Catcher:
    return Catcher(ErrorEquals=list(errors), Next=next_state)


# -- matching ----------------------------------------------------------------------------------
@pytest.mark.parametrize("error", ["PaymentDeclined", "Service.Unavailable", "States.Timeout", "States.TaskFailed"])
def test_states_all_matches_every_error(error: str) -> None:
    assert matches(["States.ALL"], error)


@pytest.mark.parametrize("error", ["PaymentDeclined", "InsufficientStockError", "Service.Unavailable"])
def test_states_task_failed_matches_any_task_error(error: str) -> None:
    assert matches(["States.TaskFailed"], error)


def test_states_task_failed_does_not_match_states_timeout() -> None:
    assert not matches(["States.TaskFailed"], "States.Timeout")
    assert matches(["States.Timeout"], "States.Timeout")


def test_named_errors_match_exactly() -> None:
    assert matches(["ErrorA", "ErrorB"], "ErrorB")
    assert not matches(["ErrorA", "ErrorB"], "ErrorC")
    assert not matches(["ErrorA"], "errora")


# -- defaults ----------------------------------------------------------------------------------
def test_retrier_defaults_are_step_functions_defaults() -> None:
    r = retrier("X")
    assert (r.IntervalSeconds, r.MaxAttempts, r.BackoffRate) == (1, 3, 2.0)
    assert r.MaxDelaySeconds is None
    assert r.JitterStrategy == "NONE"


def test_default_retrier_waits_1_2_4_then_gives_up() -> None:
    retriers = [retrier("X")]
    counts: list[int] = []
    waits = []
    while (step := next_retry(retriers, counts, "X")) is not None:
        wait, counts = step
        waits.append(wait)
    assert waits == [1, 2, 4]
    assert counts == [3]


# -- backoff -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("interval", "rate", "expected"),
    [
        (2, 2.0, [2, 4, 8, 16]),
        (1, 1.5, [1, 1.5, 2.25, 3.375]),
        (5, 1.0, [5, 5, 5, 5]),
        (1, 2.0, [1, 2, 4, 8]),
    ],
)
def test_wait_before_retry_n_is_interval_times_rate_to_the_n_minus_1(
    interval: float, rate: float, expected: list[float]
) -> None:
    r = retrier("X", IntervalSeconds=interval, BackoffRate=rate, MaxAttempts=10)
    assert [delay_seconds(r, n) for n in range(1, 5)] == pytest.approx(expected)


def test_max_delay_seconds_caps_the_wait() -> None:
    r = retrier("X", IntervalSeconds=2, BackoffRate=3, MaxAttempts=10, MaxDelaySeconds=20)
    assert [delay_seconds(r, n) for n in range(1, 6)] == [2, 6, 18, 20, 20]


def test_full_jitter_is_uniform_between_zero_and_the_capped_wait() -> None:
    r = retrier("X", IntervalSeconds=2, BackoffRate=2, MaxAttempts=10, MaxDelaySeconds=10, JitterStrategy="FULL")
    rng = random.Random(0)
    for n, ceiling in [(1, 2), (2, 4), (3, 8), (4, 10), (5, 10)]:
        draws = [delay_seconds(r, n, rng) for _ in range(2000)]
        assert all(0 <= d <= ceiling for d in draws), n
        # Spread over the whole range, not a constant or a narrow band.
        assert min(draws) < 0.05 * ceiling
        assert max(draws) > 0.95 * ceiling
        assert sum(draws) / len(draws) == pytest.approx(ceiling / 2, rel=0.05)


def test_full_jitter_is_reproducible_from_the_rng() -> None:
    r = retrier("X", IntervalSeconds=4, JitterStrategy="FULL")
    first = [delay_seconds(r, 1, random.Random(7)) for _ in range(3)]
    assert len(set(first)) == 1


def test_no_jitter_ignores_the_rng() -> None:
    r = retrier("X", IntervalSeconds=3, BackoffRate=2)
    assert delay_seconds(r, 2, random.Random(1)) == 6


# -- next_retry: scan order and counts ---------------------------------------------------------
def test_first_matching_retrier_applies() -> None:
    retriers = [retrier("X", IntervalSeconds=3), retrier("States.ALL", IntervalSeconds=7)]
    assert next_retry(retriers, [0, 0], "X") == (3, [1, 0])
    assert next_retry(retriers, [0, 0], "Y") == (7, [0, 1])


def test_exhausted_retrier_stops_retrying_even_if_a_later_retrier_matches() -> None:
    retriers = [retrier("X", MaxAttempts=1), retrier("States.ALL", MaxAttempts=5)]
    assert next_retry(retriers, [1, 0], "X") is None


def test_max_attempts_counts_retries_not_runs() -> None:
    retriers = [retrier("X", MaxAttempts=2, IntervalSeconds=1)]
    runs, counts = 1, [0]
    while (step := next_retry(retriers, counts, "X")) is not None:
        counts = step[1]
        runs += 1
    assert runs == 1 + 2


def test_max_attempts_zero_never_retries() -> None:
    assert next_retry([retrier("X", MaxAttempts=0)], [0], "X") is None


def test_no_matching_retrier_means_no_retry() -> None:
    assert next_retry([retrier("X")], [0], "Y") is None
    assert next_retry([], [], "Y") is None


def test_counts_are_padded_when_missing() -> None:
    retriers = [retrier("X"), retrier("Y", IntervalSeconds=4)]
    assert next_retry(retriers, [], "Y") == (4, [0, 1])


def test_next_retry_does_not_mutate_the_counts_it_is_given() -> None:
    counts = [0]
    next_retry([retrier("X")], counts, "X")
    assert counts == [0]


@pytest.mark.parametrize(
    ("max_attempts", "waits", "caught_at"),
    [
        # The AWS documentation's example: the second ErrorB finds its retrier exhausted.
        (2, [1, 2, 5], 4),
        (3, [1, 2, 5, 4], 5),
    ],
)
def test_each_retrier_keeps_its_own_count_across_errors(max_attempts: int, waits: list[float], caught_at: int) -> None:
    retriers = [
        retrier("ErrorA", "ErrorB", IntervalSeconds=1, MaxAttempts=max_attempts, BackoffRate=2),
        retrier("ErrorC", IntervalSeconds=5),
    ]
    counts: list[int] = [0, 0]
    seen = []
    for n, error in enumerate(["ErrorA", "ErrorB", "ErrorC", "ErrorB", "ErrorB"], start=1):
        step = next_retry(retriers, counts, error)
        if step is None:
            assert n == caught_at
            break
        wait, counts = step
        seen.append(wait)
    else:
        pytest.fail("every error was retried")
    assert seen == waits


# -- catchers ----------------------------------------------------------------------------------
def test_catchers_are_scanned_in_order() -> None:
    catchers = [
        catcher("PaymentDeclined", next_state="Release"),
        catcher("States.TaskFailed", next_state="Generic"),
        catcher("States.ALL", next_state="Last"),
    ]
    assert find_catcher(catchers, "PaymentDeclined").Next == "Release"  # type: ignore[union-attr]
    assert find_catcher(catchers, "CardError").Next == "Generic"  # type: ignore[union-attr]
    assert find_catcher(catchers, "States.Timeout").Next == "Last"  # type: ignore[union-attr]


def test_no_matching_catcher_returns_none() -> None:
    assert find_catcher([catcher("X", next_state="A")], "Y") is None
    assert find_catcher([], "Y") is None
