"""The measured window every floor measurement shares, and the error that makes a measurement void."""

import time
from dataclasses import dataclass

#: Seconds of work before the measured window opens: connections warm, queue and WAL past their first writes.
WARMUP_SECONDS = 1.0
#: A child that cannot finish within the run plus this many seconds is stuck (the broker stopped, say).
DRAIN_SECONDS = 120.0


class FloorError(Exception):
    """A measurement that cannot be trusted: a child failed, or a message was lost or duplicated."""


@dataclass(frozen=True)
class Window:
    """The measured window in time.monotonic() seconds, which on Linux is one clock for all processes."""

    start: float
    end: float
    deadline: float

    def holds(self, moment: float) -> bool:
        return self.start <= moment < self.end


def measured_window(seconds: float) -> Window:
    """A window of ``seconds`` that opens after the warm-up."""
    start = time.monotonic() + WARMUP_SECONDS
    return Window(start=start, end=start + seconds, deadline=start + seconds + DRAIN_SECONDS)
