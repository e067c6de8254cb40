"""The webhook's typed view of a verified Stripe event: the four fields the endpoint reads, and a named
refusal (InvalidEvent, a ValueError, answered 400) for a body that is not an event."""

import json

import pytest

from services.payment.webhooks import InvalidEvent, StripeEvent

pytestmark = pytest.mark.unit


def test_reads_id_type_and_the_named_object() -> None:
    body = json.dumps(
        {
            "id": "evt_1",
            "object": "event",
            "type": "payment_intent.succeeded",
            "data": {"object": {"id": "pi_1", "object": "payment_intent", "status": "succeeded", "amount": 800}},
        }
    )
    assert StripeEvent.parse(body) == StripeEvent("evt_1", "payment_intent.succeeded", "pi_1", "succeeded")


def test_an_object_field_of_another_type_reads_as_absent() -> None:
    body = '{"id": "evt_2", "type": "payment_intent.canceled", "data": {"object": {"id": 7, "status": ["x"]}}}'
    assert StripeEvent.parse(body) == StripeEvent("evt_2", "payment_intent.canceled", None, None)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{", "not JSON"),
        ("null", "not a JSON object"),
        ('{"id": "", "type": "t", "data": {"object": {}}}', "no id"),
        ('{"id": "evt_3", "type": 5, "data": {"object": {}}}', "no type"),
        ('{"id": "evt_3", "type": "t", "data": {"object": "pi_1"}}', "no data.object"),
    ],
)
def test_a_body_that_is_not_an_event_is_refused_by_name(body: str, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        StripeEvent.parse(body)
    assert issubclass(InvalidEvent, ValueError)
