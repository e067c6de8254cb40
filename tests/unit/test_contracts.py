"""The message contracts as the wire sees them: the guide's JSON parses, bad input is refused, Money is exact.

The envelope tests build a real ``aio_pika.Message`` and read it back through
a stand-in with the attributes of an ``IncomingMessage``: that stand-in is the
delivery a broker would hand us, test data rather than a mock of our code.
"""

import copy
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aio_pika
import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from contracts.base import Money
from contracts.inventory import ReleaseInventory, ReserveInventory
from contracts.orders import OrderRequested
from contracts.payment import ProcessPayment, RefundPayment
from plumbing.envelope import HEADER_ATTEMPT, HEADER_CAUSATION, HEADER_OCCURRED, HEADER_SCHEMA, Envelope

pytestmark = pytest.mark.unit

PUBLIC_EXAMPLE: dict[str, Any] = {
    "orderId": "ORDER#123",
    "customer": {"email": "ada@example.com", "phone": None},
    "items": [{"productId": "456", "quantity": 2}],
    "paymentMethodId": "pm_card_visa",
}
#: The reference guide's example invocations of the compensations, verbatim.
GUIDE_RELEASE: dict[str, Any] = {
    "orderId": "ORDER#123",
    "items": [{"productId": "456", "quantity": 2}],
    "action": "release",
    "idempotencyId": "ORDER#123-release",
}
GUIDE_REFUND: dict[str, Any] = {
    "orderId": "ORDER#123",
    "paymentIntentId": "pi_ABC123",
    "amount": 129.57,
    "reason": "Order processing failed",
    "idempotencyKey": "ORDER#123-refund",
}


def order(**changes: Any) -> str:
    """The public example as JSON bytes on the wire, with top-level fields replaced."""
    return json.dumps(PUBLIC_EXAMPLE | changes)


def item(**changes: Any) -> list[dict[str, Any]]:
    return [PUBLIC_EXAMPLE["items"][0] | changes]


def test_public_example_parses_with_default_currency() -> None:
    parsed = OrderRequested.model_validate_json(json.dumps(PUBLIC_EXAMPLE))

    assert parsed.orderId == "ORDER#123"
    assert parsed.customer.email == "ada@example.com"
    assert parsed.customer.phone is None
    assert [(i.productId, i.quantity) for i in parsed.items] == [("456", 2)]
    assert parsed.paymentMethodId == "pm_card_visa"
    assert parsed.currency == "usd"


def test_public_example_round_trips_with_its_own_field_names() -> None:
    parsed = OrderRequested.model_validate_json(json.dumps(PUBLIC_EXAMPLE))

    assert json.loads(parsed.model_dump_json()) == PUBLIC_EXAMPLE | {"currency": "usd"}


def test_contracts_are_frozen() -> None:
    parsed = OrderRequested.model_validate_json(json.dumps(PUBLIC_EXAMPLE))

    with pytest.raises(ValidationError):
        parsed.orderId = "ORDER#124"  # type: ignore[misc]


def test_order_without_order_id_is_refused() -> None:
    body = {k: v for k, v in PUBLIC_EXAMPLE.items() if k != "orderId"}

    with pytest.raises(ValidationError, match="orderId"):
        OrderRequested.model_validate_json(json.dumps(body))


@pytest.mark.parametrize("quantity", [0, -1, -100])
def test_quantity_below_one_is_refused(quantity: int) -> None:
    with pytest.raises(ValidationError, match="quantity"):
        OrderRequested.model_validate_json(order(items=item(quantity=quantity)))


def test_order_without_items_is_refused() -> None:
    with pytest.raises(ValidationError, match="items"):
        OrderRequested.model_validate_json(order(items=[]))


@pytest.mark.parametrize(
    "changes",
    [
        {"orderId": 123},
        {"orderId": ""},
        {"items": {"productId": "456", "quantity": 2}},
        {"items": item(quantity="two")},
        {"items": item(quantity=2.5)},
        {"items": item(productId=456)},
        {"customer": "ada@example.com"},
        {"paymentMethodId": None},
        {"currency": 840},
    ],
    ids=repr,
)
def test_wrong_types_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        OrderRequested.model_validate_json(order(**changes))


@pytest.mark.parametrize(
    "changes",
    [
        {"couponCode": "FREE"},
        {"order_id": "ORDER#123"},
        {"items": item(price=1)},
        {"customer": {"email": "ada@example.com", "name": "Ada"}},
    ],
    ids=repr,
)
def test_unknown_fields_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        OrderRequested.model_validate_json(order(**changes))


@pytest.mark.parametrize(
    "email",
    [
        "ada",
        "ada@example",
        "@example.com",
        "ada@@example.com",
        "a da@example.com",
        "",
        # More than one mailbox, or text an SMTP library would read as another header or recipient.
        "a@example.com,b@example.com",
        "a,b@example.com",
        "a@b.com,c",
        "a@example.com;b@example.com",
        "Ada <ada@example.com>",
        "ada@example.com\r\nBcc: eve@example.com",
        "ada@exa mple.com",
        "ada@-example.com",
        '"a b"@example.com',
    ],
)
def test_bad_email_is_refused(email: str) -> None:
    """One mailbox only: a list, a display name or a line break would reach the SMTP library as something else."""
    with pytest.raises(ValidationError, match="email"):
        OrderRequested.model_validate_json(order(customer={"email": email, "phone": None}))


@pytest.mark.parametrize("currency", ["USD", "us", "usdd", "eu1", ""])
def test_bad_currency_is_refused(currency: str) -> None:
    with pytest.raises(ValidationError, match="currency"):
        OrderRequested.model_validate_json(order(currency=currency))


def test_money_is_a_json_number_and_parses_back_exactly() -> None:
    payment = ProcessPayment(
        orderId="ORDER#123",
        amount=Decimal("129.57"),
        currency="usd",
        paymentMethodId="pm_card_visa",
        idempotencyKey="ORDER#123-payment",
    )

    wire = payment.model_dump_json()

    assert '"amount":129.57' in wire
    assert json.loads(wire)["amount"] == 129.57
    back = ProcessPayment.model_validate_json(wire)
    assert isinstance(back.amount, Decimal)
    assert back.amount == Decimal("129.57")
    assert back.amount.as_tuple() == Decimal("129.57").as_tuple()
    assert back == payment


@pytest.mark.parametrize("text", ["0.01", "0.1", "0.3", "10", "129.57", "1000000.05", "999999999999.99"])
def test_money_round_trips_exactly_through_json(text: str) -> None:
    money = TypeAdapter(Money)
    value = money.validate_json(text)

    assert value == Decimal(text)
    assert money.validate_json(money.dump_json(value)) == Decimal(text)


@pytest.mark.parametrize("text", ["-0.01", "1.005", '"NaN"', "1e400"])
def test_money_refuses_negative_fractional_cents_and_non_numbers(text: str) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(Money).validate_json(text)


def test_guide_release_inventory_invocation_parses() -> None:
    parsed = ReleaseInventory.model_validate_json(json.dumps(GUIDE_RELEASE))

    assert parsed.idempotencyId == "ORDER#123-release"
    assert json.loads(parsed.model_dump_json()) == GUIDE_RELEASE


def test_guide_refund_payment_invocation_parses() -> None:
    parsed = RefundPayment.model_validate_json(json.dumps(GUIDE_REFUND))

    assert parsed.paymentIntentId == "pi_ABC123"
    assert parsed.amount == Decimal("129.57")
    assert json.loads(parsed.model_dump_json()) == GUIDE_REFUND


@pytest.mark.parametrize(
    ("model", "names"),
    [
        (ReleaseInventory, {"orderId", "items", "action", "idempotencyId"}),
        (RefundPayment, {"orderId", "paymentIntentId", "amount", "reason", "idempotencyKey"}),
        (ReserveInventory, {"orderId", "items", "idempotencyId"}),
        (ProcessPayment, {"orderId", "amount", "idempotencyKey"}),
    ],
    ids=["ReleaseInventory", "RefundPayment", "ReserveInventory", "ProcessPayment"],
)
def test_wire_names_are_the_guides_camel_case(model: type[BaseModel], names: set[str]) -> None:
    assert names <= set(model.model_fields)
    assert all(model.model_fields[name].alias in (None, name) for name in names)


@pytest.mark.parametrize(
    ("model", "guide"), [(ReleaseInventory, GUIDE_RELEASE), (RefundPayment, GUIDE_REFUND)], ids=["release", "refund"]
)
def test_snake_case_spellings_of_guide_fields_are_refused(model: type[BaseModel], guide: dict[str, Any]) -> None:
    snake = {"order_id" if k == "orderId" else k: v for k, v in guide.items()}

    with pytest.raises(ValidationError):
        model.model_validate_json(json.dumps(snake))


@dataclass(frozen=True)
class Delivery:
    """What aio_pika's IncomingMessage offers the envelope: the same attribute names."""

    body: bytes
    headers: dict[str, Any] | None = None
    message_id: str | None = None
    correlation_id: str | None = None
    type: str | None = None
    timestamp: datetime | None = None
    reply_to: str | None = None

    @classmethod
    def of(cls, message: aio_pika.Message) -> "Delivery":
        return cls(
            body=message.body,
            headers=copy.deepcopy(dict(message.headers)),
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            type=message.type,
            timestamp=message.timestamp,
            reply_to=message.reply_to,
        )


def read(delivery: Delivery, **kwargs: Any) -> Envelope:
    return Envelope.from_amqp(delivery, **kwargs)  # type: ignore[arg-type]


def test_envelope_rides_in_amqp_properties_and_headers() -> None:
    envelope = Envelope(
        type="ReserveInventory", correlationId="ORDER#123", causationId="cmd-1", attempt=3, replyTo="orchestrator"
    )

    message = envelope.to_amqp(b'{"orderId":"ORDER#123"}')

    assert message.body == b'{"orderId":"ORDER#123"}'
    assert message.message_id == envelope.messageId
    assert message.correlation_id == "ORDER#123"
    assert message.type == "ReserveInventory"
    assert message.reply_to == "orchestrator"
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.headers == {
        HEADER_ATTEMPT: 3,
        HEADER_SCHEMA: 1,
        HEADER_OCCURRED: envelope.occurredAt.isoformat(),
        HEADER_CAUSATION: "cmd-1",
    }


def test_envelope_round_trips_through_an_amqp_message() -> None:
    envelope = Envelope(
        type="ReserveInventory", correlationId="ORDER#123", causationId="cmd-1", attempt=3, replyTo="orchestrator"
    )

    back = read(Delivery.of(envelope.to_amqp(b"{}")))

    assert back == envelope
    assert back.occurredAt == envelope.occurredAt  # to the microsecond: the header, not the whole-second timestamp


def test_envelope_without_causation_or_reply_to_round_trips() -> None:
    envelope = Envelope(type="OrderRequested", correlationId="ORDER#123")
    message = envelope.to_amqp(b"{}")

    assert HEADER_CAUSATION not in message.headers
    back = read(Delivery.of(message))
    assert back == envelope
    assert back.causationId is None and back.replyTo is None


def test_header_values_delivered_as_bytes_are_decoded() -> None:
    occurred = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    delivery = Delivery(
        body=b"{}",
        headers={HEADER_CAUSATION: b"cmd-7", HEADER_OCCURRED: occurred.isoformat().encode(), HEADER_ATTEMPT: 2},
        message_id="m-1",
        correlation_id="ORDER#123",
        type="PaymentProcessed",
    )

    back = read(delivery)

    assert (back.causationId, back.occurredAt, back.attempt) == ("cmd-7", occurred, 2)


def test_bare_json_from_an_outside_client_gets_defaults() -> None:
    sent = datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC)
    delivery = Delivery(body=json.dumps(PUBLIC_EXAMPLE).encode(), correlation_id="ORDER#123", timestamp=sent)

    back = read(delivery, default_type="OrderRequested")

    assert back.type == "OrderRequested"
    assert (back.attempt, back.schemaVersion, back.causationId) == (1, 1, None)
    assert back.occurredAt == sent


def test_message_without_type_or_default_is_refused() -> None:
    with pytest.raises(ValueError, match="no type"):
        read(Delivery(body=b"{}", message_id="m-1", correlation_id="ORDER#123"))


def test_message_without_id_gets_the_same_content_derived_id_for_the_same_bytes() -> None:
    body = json.dumps(PUBLIC_EXAMPLE).encode()

    first = read(Delivery(body=body), default_type="OrderRequested")
    again = read(Delivery(body=bytes(body)), default_type="OrderRequested")
    other = read(Delivery(body=order(orderId="ORDER#124").encode()), default_type="OrderRequested")

    assert first.messageId == again.messageId == "sha256:" + hashlib.sha256(body).hexdigest()
    assert other.messageId != first.messageId


def test_message_id_property_wins_over_the_content_id() -> None:
    back = read(Delivery(body=b"{}", message_id="m-42"), default_type="OrderRequested")

    assert back.messageId == "m-42"


# -- the orderId must be able to travel as a correlation id (issue 14) ---------------------------------------------
@pytest.mark.parametrize(
    "order_id",
    ["ORDER#123", "a", "x" * 128, "ORDER#20261126010322-1", "!~#$%&'()*+,-./:;<=>?@[\\]^_`{|}"],
    ids=lambda value: repr(value[:20]),
)
def test_an_order_id_of_printable_ascii_up_to_128_characters_is_accepted(order_id: str) -> None:
    assert OrderRequested.model_validate_json(order(orderId=order_id)).orderId == order_id


@pytest.mark.parametrize(
    ("order_id", "why"),
    [
        ("é" * 150, "300 bytes of UTF-8: no AMQP short string holds it"),
        ("ORDER#é", "non-ASCII"),
        ("ORDER 123", "a space"),
        ("ORDER#123\t", "a control character"),
        ("ORDER#123\n", "a newline (a $ anchor alone would let it through)"),
        ("\u00a0ORDER#123", "a non-breaking space"),
        ("x" * 129, "too long: no room left for -payment and -refund suffixes"),
        ("", "empty"),
    ],
    ids=lambda value: repr(value[:20]),
)
def test_an_order_id_that_could_not_be_a_correlation_id_is_refused(order_id: str, why: str) -> None:
    with pytest.raises(ValidationError, match="orderId"):
        OrderRequested.model_validate_json(order(orderId=order_id))


def test_every_valid_order_id_fits_an_amqp_short_string_and_a_stripe_idempotency_key() -> None:
    longest = "~" * 128
    OrderRequested.model_validate_json(order(orderId=longest))
    assert len(f"{longest}-payment".encode()) <= 255 and len(f"{longest}-refund".encode()) <= 255
    envelope = Envelope(type="OrderRequested", correlationId=longest)
    assert envelope.to_amqp(b"{}").correlation_id == longest


def test_the_order_id_pattern_is_the_one_docs_contracts_md_documents() -> None:
    from pathlib import Path

    from contracts.base import ORDER_ID_PATTERN

    assert ORDER_ID_PATTERN == r"^[\x21-\x7E]{1,128}$"
    docs = (Path(__file__).resolve().parents[2] / "docs" / "contracts.md").read_text()
    assert f"`{ORDER_ID_PATTERN}`" in docs
