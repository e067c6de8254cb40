"""What a failed publish says about its outbox row (plumbing/parking.py): only the row's own fault parks it at
once, the broker being away never counts, everything else counts towards the relay's max_attempts."""

import aiormq
import pytest
from pamqp.commands import Basic

from plumbing.parking import Unreadable, classify, retry_delay

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("exc", "verdict"),
    [
        (TypeError("string exceeds maximum length of 255 bytes"), "unpublishable"),  # pamqp, a long correlation id
        (TypeError("a error: Unknown type: <class 'object'>"), "unpublishable"),  # a header of no AMQP type
        (Unreadable("the row's envelope: ValidationError"), "unpublishable"),
        (aiormq.exceptions.ChannelPreconditionFailed("message size exceeds max"), "refused"),
        # Nacked; returned unroutable is its subclass PublishError (tests/integration/test_outbox.py).
        (aiormq.exceptions.DeliveryError(None, Basic.Nack()), "failed"),
        (aiormq.exceptions.ChannelNotFoundEntity("no exchange"), "failed"),
        (aiormq.exceptions.ChannelClosed("closed with the connection"), "outage"),
        (aiormq.exceptions.ChannelInvalidStateError("closed"), "outage"),
        (aiormq.exceptions.AMQPConnectionError("reset"), "outage"),
        (ConnectionResetError(), "outage"),
        (TimeoutError(), "outage"),
        (RuntimeError("anything else"), "failed"),
    ],
)
def test_a_failure_is_classified_by_what_it_says_about_the_row(exc: BaseException, verdict: str) -> None:
    assert classify(exc) == verdict


def test_a_failing_row_waits_longer_after_each_failure_up_to_a_minute() -> None:
    delays = [retry_delay(n) for n in range(1, 9)]
    assert delays[:4] == [2, 4, 8, 16]
    assert delays == sorted(delays) and max(delays) == 60
