"""How long a reconnect loop waits before its next try: one pure function, and each loop's numbers as data.

Every loop that waits for a platform to come back (the database pool at start, the broker at start, a
delivery held while the database is away, the relay's sweep after an interruption) asks ``backoff`` for its
next wait, with the policy named here, so the numbers are read in one place and tested once.
"""

import random
from dataclasses import dataclass

#: Doubling stops here: 2 ** 62 times any base is beyond every cap, and a float power of more overflows.
_MAX_EXPONENT = 62


def backoff(attempt: int, *, base: float, cap: float, jitter: float = 0.0, rng: random.Random | None = None) -> float:
    """Seconds to wait before try ``attempt + 1``, after ``attempt`` (1-based) failed: ``base`` doubled per
    failure, at most ``cap``. ``jitter`` (0 to 1) takes a random share of up to that fraction off, so
    replicas that lost the same server do not all come back at the same instant (1 is full jitter); the
    draw comes from ``rng``. Without jitter it is a pure function of its arguments."""
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, not {attempt}")
    if not 0 <= base <= cap:
        raise ValueError(f"need 0 <= base <= cap, not base {base}, cap {cap}")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter is a fraction from 0 to 1, not {jitter}")
    delay = min(cap, base * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
    if jitter:
        delay -= delay * jitter * (rng or random).random()
    return delay


@dataclass(frozen=True)
class Backoff:
    """One loop's policy: ``delay(attempt)`` is ``backoff`` with these numbers."""

    base: float
    """Seconds after the first failure."""
    cap: float
    """The longest wait, however many failures."""
    jitter: float = 0.0
    """The share of each wait that may be taken off at random (0: none)."""

    def __post_init__(self) -> None:
        backoff(1, base=self.base, cap=self.cap, jitter=self.jitter)  # refuse a policy that could never run

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        return backoff(attempt, base=self.base, cap=self.cap, jitter=self.jitter, rng=rng)


#: The database pool at a process's start (plumbing/process.py).
DATABASE_CONNECT = Backoff(base=0.5, cap=10.0)
#: The broker connection at a process's start (plumbing/broker.py); aio-pika's robust connection reconnects
#: on its own after that, every ``reconnect_interval``.
BROKER_CONNECT = Backoff(base=0.5, cap=10.0)
#: A delivery held while its database is unreachable (plumbing/middleware/hold.py): short, since the
#: delivery waits in memory and the database is usually back within seconds.
DATABASE_AWAY = Backoff(base=0.2, cap=5.0)
#: The outbox relay's sweep and tidy loops after an interruption (plumbing/relay.py): a steady second, since
#: a sweep also runs on the safety wake and a nudge.
RELAY_RESTART = Backoff(base=1.0, cap=1.0)
#: An outbox row the broker refused, before its next publish (plumbing/parking.py): it waits in the table,
#: so the wait can grow to a minute without holding anything.
OUTBOX_ROW_RETRY = Backoff(base=2.0, cap=60.0)
#: The orchestrator's timer loop after an interruption (its listener connection lost): a steady second.
TIMER_LOOP_RESTART = Backoff(base=1.0, cap=1.0)
#: A process that `orderctl up` (or a test stack) runs, restarted after a crash that came soon after its
#: start; one that ran ten seconds or more restarts after the first wait.
PROCESS_RESTART = Backoff(base=0.25, cap=10.0)
