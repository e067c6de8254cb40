"""Issue 15 item 5: no text that can reach a header holds a control character.

Every payload field whose schema carries the header-safe pattern (or the stricter orderId pattern) is found in the
generated AsyncAPI document, not listed by hand, so a new id or name is covered by using the shared type.
Hypothesis puts generated control characters into each such field of each message: the model refuses it, naming
the field, and the published schema refuses it too. The envelope refuses them in every property and header.
"""

import json

import pytest
from header_fields import FORBIDDEN, header_bound_paths, payload_schema, poisoned, value_at, with_value
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from test_asyncapi import NAMES, SAMPLES, conforms
from test_contracts import Delivery, read

from contracts.registry import MESSAGES
from plumbing.envelope import HEADER_CAUSATION, Envelope, escaped

pytestmark = pytest.mark.unit

CONTROL = st.sampled_from(FORBIDDEN)
#: Text around the control character: printable, so the control character is the only thing wrong.
PRINTABLE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=8)
MODELS = {spec.model.__name__: spec.model for spec in MESSAGES}
CASES = [(name, path) for name in NAMES for path in header_bound_paths(name, SAMPLES[name])]


def test_the_fields_that_reach_a_header_are_all_guarded() -> None:
    """The ones issue 15 names, found by the walk: if one stops carrying the pattern, this fails."""
    guarded = {f"{name}.{'.'.join(map(str, path))}" for name, path in CASES}
    assert {
        "OrderRequested.orderId",
        "OrderRequested.customer.email",
        "OrderRequested.items.0.productId",
        "OrderRequested.paymentMethodId",
        "NotifyCustomer.customer.email",
        "NotifyCustomer.lines.0.name",
        "NotifyCustomer.lines.0.productId",
        "ProcessPayment.idempotencyKey",
        "ProcessPayment.paymentMethodId",
        "RefundPayment.idempotencyKey",
        "RefundPayment.paymentIntentId",
        "RefundPayment.reason",
        "ReleaseInventory.idempotencyId",
        "CreateOrderRecord.paymentIntentId",
        "VoidOrderRecord.reason",
    } <= guarded, sorted(guarded)


@pytest.mark.parametrize(("name", "path"), CASES, ids=[f"{n}.{'.'.join(map(str, p))}" for n, p in CASES])
@settings(max_examples=8, deadline=None)
@given(before=PRINTABLE, control=CONTROL, after=PRINTABLE)
def test_a_control_character_in_a_header_bound_field_is_refused(
    name: str, path: tuple, before: str, control: str, after: str
) -> None:
    body = with_value(SAMPLES[name], path, poisoned(value_at(SAMPLES[name], path), before, control, after))

    with pytest.raises(ValidationError) as refused:
        MODELS[name].model_validate_json(json.dumps(body))
    # Named by its location, or (NUL, refused for the whole model before any field) in the message.
    named = ".".join(map(str, path))
    assert any(
        tuple(error["loc"][: len(path)]) == path or f"{named} must not" in error["msg"]
        for error in refused.value.errors()
    ), refused.value
    # What a dead letter's x-death-reason and an order.rejected carry is each error's location and message.
    assert not any(control in error["msg"] for error in refused.value.errors()), "the refusal repeats it"
    assert not conforms(payload_schema(name), body)


@pytest.mark.parametrize("control", FORBIDDEN, ids=lambda c: f"U+{ord(c):04X}")
def test_the_envelope_refuses_a_control_character_in_every_property_and_header(control: str) -> None:
    base = {"body": b"{}", "message_id": "m-1", "correlation_id": "ORDER#1", "type": "PaymentProcessed"}
    for field, name in [
        ("message_id", "message-id"),
        ("correlation_id", "correlation-id"),
        ("type", "type"),
        ("reply_to", "reply-to"),
    ]:
        with pytest.raises(ValueError, match=name):
            read(Delivery(**base | {field: f"a{control}b"}))
    with pytest.raises(ValueError, match=HEADER_CAUSATION):
        read(Delivery(**base, headers={HEADER_CAUSATION: f"cmd{control}1".encode()}))


def test_an_envelope_built_by_us_refuses_a_control_character_but_carries_a_refused_cause_as_a_digest() -> None:
    with pytest.raises(ValidationError, match="correlationId"):
        Envelope(type="OrderRejected", correlationId="ORDER#1\r\nx-evil: 1")
    rejected = Envelope(type="OrderRejected", correlationId="", causationId="request\r\nx-evil: 1")
    assert rejected.causationId is not None and rejected.causationId.startswith("invalid:")
    assert rejected.to_amqp(b"{}").headers[HEADER_CAUSATION] == rejected.causationId


@pytest.mark.parametrize(
    "email",
    ["ada@example.com", "ada.lovelace+orders@example.co.uk", "o'brien@example.com", "ada@bücher.de"],
)
def test_one_mailbox_is_accepted_as_given(email: str) -> None:
    body = with_value(SAMPLES["OrderRequested"], ("customer", "email"), email)
    assert MODELS["OrderRequested"].model_validate_json(json.dumps(body)).customer.email == email


def test_text_quoting_a_sender_is_escaped_before_it_goes_into_a_header() -> None:
    assert escaped("schema: a\r\nb\x1b\x85\u2028: Extra inputs are not permitted; é") == (
        "schema: a\\r\\nb\\x1b\\x85\\u2028: Extra inputs are not permitted; é"
    )
