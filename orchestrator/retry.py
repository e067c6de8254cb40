"""Retry and Catch, as the Amazon States Language defines them. Pure functions.

Retriers are scanned in order and the first whose ErrorEquals holds the error
applies; each retrier keeps its own count across every error it matches in
one state. An exhausted retrier ends retrying (no later retrier is tried) and
the catchers are scanned in order.
"""

import random

from orchestrator.definition import ALL, TASK_FAILED, TIMEOUT, Catcher, Retrier


def matches(error_equals: list[str], error: str) -> bool:
    """States.ALL matches everything; States.TaskFailed everything but States.Timeout."""
    for name in error_equals:
        if name == ALL or name == error:
            return True
        if name == TASK_FAILED and error != TIMEOUT:
            return True
    return False


def delay_seconds(retrier: Retrier, retry_number: int, rng: random.Random | None = None) -> float:
    """Wait before retry ``retry_number`` (1-based): interval * rate^(n-1), capped, then jittered."""
    delay = retrier.IntervalSeconds * retrier.BackoffRate ** (retry_number - 1)
    if retrier.MaxDelaySeconds is not None:
        delay = min(delay, retrier.MaxDelaySeconds)
    if retrier.JitterStrategy == "FULL":
        delay = (rng or random.Random()).uniform(0, delay)
    return delay


def next_retry(
    retriers: list[Retrier], counts: list[int], error: str, rng: random.Random | None = None
) -> tuple[float, list[int]] | None:
    """The delay before the next run and the updated counts, or None when no retry applies."""
    for index, retrier in enumerate(retriers):
        if not matches(retrier.ErrorEquals, error):
            continue
        used = counts[index] if index < len(counts) else 0
        if used >= retrier.MaxAttempts:
            return None
        new_counts = list(counts) + [0] * (len(retriers) - len(counts))
        new_counts[index] = used + 1
        return delay_seconds(retrier, used + 1, rng), new_counts
    return None


def find_catcher(catchers: list[Catcher], error: str) -> Catcher | None:
    for catcher in catchers:
        if matches(catcher.ErrorEquals, error):
            return catcher
    return None
