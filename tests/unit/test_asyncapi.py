"""The AsyncAPI document: committed as generated, complete, and its schemas agree with the models.

``jsonschema`` is not a dependency, so payload schemas are checked by a small
checker of the JSON Schema keywords pydantic emits here; it fails on any other
keyword, so a schema it cannot judge never passes silently.
"""

import json
import re
from pathlib import Path
from typing import Any

import email_validator
import pytest
from aio_pika.abc import ExchangeType
from pydantic import ValidationError

from contracts import asyncapi
from contracts.orders import OrderOutcome, OrderRequested
from contracts.registry import MESSAGES, MessageSpec
from plumbing import envelope, topology

pytestmark = pytest.mark.unit

DOC: dict[str, Any] = asyncapi.build()
NAMES = [spec.model.__name__ for spec in MESSAGES]
ID = re.compile(r"^[\w.\-]+$")

CUSTOMER = {"email": "ada@example.com", "phone": "+44 20 7946 0958"}
ITEMS = [{"productId": "456", "quantity": 2}]
LINES = [{"productId": "456", "name": "Widget", "quantity": 3, "unitPrice": 43.19, "lineTotal": 129.57}]
ORDER = {"orderId": "ORDER#123"}
#: One valid body per registry message, as JSON would carry it.
SAMPLES: dict[str, dict[str, Any]] = {
    "OrderRequested": ORDER | {"customer": CUSTOMER, "items": ITEMS, "paymentMethodId": "pm_card_visa"},
    "OrderOutcome": ORDER | {"status": "CONFIRMED", "amount": 129.57, "currency": "usd", "lines": LINES},
    "OrderRejected": {"orderId": None, "reasons": ["items: List should have at least 1 item"]},
    "CheckInventory": ORDER | {"items": ITEMS, "currency": "usd"},
    "ReserveInventory": ORDER | {"items": ITEMS, "idempotencyId": "ORDER#123"},
    "ReleaseInventory": ORDER | {"items": ITEMS, "action": "release", "idempotencyId": "ORDER#123-release"},
    "CommitReservation": ORDER,
    "VoidOrderRecord": ORDER | {"reason": "Order processing failed"},
    "ReservationCommitted": {"committed": 1},
    "OrderRecordVoided": {"voided": True},
    "ProcessPayment": ORDER
    | {"amount": 129.57, "currency": "usd", "paymentMethodId": "pm_card_visa", "idempotencyKey": "ORDER#123-payment"},
    "RefundPayment": ORDER
    | {"paymentIntentId": "pi_ABC123", "amount": 129.57, "reason": "Order processing failed"}
    | {"idempotencyKey": "ORDER#123-refund"},
    "CreateOrderRecord": ORDER
    | {"customer": CUSTOMER, "lines": LINES, "amount": 129.57, "currency": "usd", "paymentIntentId": "pi_ABC123"},
    "NotifyCustomer": ORDER | {"customer": CUSTOMER, "lines": LINES, "amount": 129.57, "currency": "usd"},
    "InventoryChecked": {"lines": LINES, "amount": 129.57, "currency": "usd"},
    "InventoryReserved": {"reservationId": "res_1", "items": ITEMS},
    "InventoryReleased": {"released": True, "items": ITEMS},
    "PaymentProcessed": {"paymentIntentId": "pi_ABC123", "status": "succeeded", "amount": 129.57},
    "PaymentRefunded": {"refunded": True, "refundId": "re_1", "amount": 129.57, "alreadyRefunded": False},
    "OrderRecordCreated": ORDER | {"status": "CONFIRMED", "created": True},
    "CustomerNotified": {"results": [{"channel": "email", "status": "sent"}, {"channel": "sms", "status": "skipped"}]},
    "CommandFailed": {"Error": "PaymentDeclined", "Cause": "Your card was declined."},
    "CancelOrder": ORDER | {"reason": "Changed my mind"},
    "CancellationOutcome": ORDER
    | {"outcome": "completed", "status": "CANCELLED_BY_CUSTOMER", "amount": 129.57, "currency": "usd"}
    | {"refundId": "re_1"},
    "CancellationRejected": ORDER | {"reason": "OrderNotConfirmed", "detail": "the order is FAILED"},
    "RestockOrder": ORDER | {"idempotencyId": "ORDER#123-restock"},
    "StockRestocked": {"restocked": True, "items": ITEMS},
    "ReserveInventoryLine": ORDER | {"productId": "456", "quantity": 2, "idempotencyId": "ORDER#123-reserve-456"},
    "InventoryLineReserved": {"reservationId": "res_1", "productId": "456", "quantity": 2},
    "ScreenOrder": ORDER
    | {"amount": 129.57, "currency": "usd", "customer": CUSTOMER, "lines": LINES, "idempotencyKey": "ORDER#123-screen"},
    "OrderScreened": {"rules": ["amount_ceiling", "max_units", "blocked_email_domain"]},
}

_KEYWORDS = {
    "$ref",
    "additionalProperties",
    "anyOf",
    "default",
    "description",
    "enum",
    "exclusiveMinimum",
    "format",
    "items",
    "maxItems",
    "maxLength",
    "maximum",
    "minItems",
    "minLength",
    "minimum",
    "pattern",
    "properties",
    "required",
    "title",
    "type",
}
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "null": (type(None),),
    "integer": (int,),
    "number": (int, float),
}


def resolve(ref: str) -> Any:
    """Follow a local JSON pointer in the document."""
    assert ref.startswith("#/"), ref
    node: Any = DOC
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _ecma_end(pattern: str) -> str:
    """A JSON Schema pattern is ECMA-262, where a final ``$`` is the end of the text; Python's ``$`` also matches
    before a final newline, which would let "\\n" through the header-safe pattern here."""
    return re.sub(r"(?<!\\)\$$", r"\\Z", pattern)


def _is_addr_spec(value: str) -> bool:
    """ "format": "email" as JSON Schema means it: an RFC 5321 address, checked here by email-validator without DNS."""
    try:
        email_validator.validate_email(value, check_deliverability=False)
    except email_validator.EmailNotValidError:
        return False
    return True


def conforms(schema: dict[str, Any], value: Any) -> bool:
    """Whether ``value`` satisfies ``schema``, for the keywords in _KEYWORDS."""
    assert set(schema) <= _KEYWORDS, f"keywords this checker does not know: {set(schema) - _KEYWORDS}"
    if "$ref" in schema:
        return conforms(resolve(schema["$ref"]), value)
    if "anyOf" in schema and not any(conforms(option, value) for option in schema["anyOf"]):
        return False
    if "type" in schema:
        if not isinstance(value, _TYPES[schema["type"]]) or (isinstance(value, bool) and schema["type"] != "boolean"):
            return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if isinstance(value, str):
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            return False
        if "pattern" in schema and not re.search(_ecma_end(schema["pattern"]), value):
            return False
        if schema.get("format") == "email" and not _is_addr_spec(value):
            return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            return False
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            return False
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            return False
        return all(conforms(schema.get("items", {}), v) for v in value)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        if any(name not in value for name in schema.get("required", [])):
            return False
        if schema.get("additionalProperties") is False and set(value) - set(properties):
            return False
        return all(conforms(properties[k], v) for k, v in value.items() if k in properties)
    return True


def payload_schema(name: str) -> dict[str, Any]:
    return resolve(DOC["components"]["messages"][name]["payload"]["$ref"])


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def exchange_channel(spec: MessageSpec) -> dict[str, Any]:
    matches = [
        c
        for c in DOC["channels"].values()
        if c["address"] == spec.routing_key and c["bindings"]["amqp"].get("exchange", {}).get("name") == spec.exchange
    ]
    assert len(matches) == 1, f"{spec.model.__name__}: {len(matches)} channels"
    return matches[0]


def test_committed_document_is_what_the_generator_makes() -> None:
    committed = asyncapi.DOC_PATH.read_text(encoding="utf-8")

    assert committed == asyncapi.render(), f"docs/asyncapi.json is stale; run: {asyncapi.REGENERATE}"


def test_main_prints_the_document(capsys: pytest.CaptureFixture[str]) -> None:
    assert asyncapi.main([]) == 0
    assert capsys.readouterr().out == asyncapi.render()


def test_check_passes_on_the_committed_document() -> None:
    assert asyncapi.main(["--check"]) == 0


def test_check_fails_with_a_hint_when_stale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "asyncapi.json"
    stale.write_text(asyncapi.render().replace('"title": "Orderflow"', '"title": "Old"'), encoding="utf-8")

    assert asyncapi.main(["--check", str(stale)]) == 1
    err = capsys.readouterr().err
    assert '-    "title": "Old",' in err
    assert asyncapi.REGENERATE in err


def test_output_is_deterministic_with_sorted_keys() -> None:
    text = asyncapi.render()

    assert text == asyncapi.render()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_document_is_asyncapi_3() -> None:
    assert DOC["asyncapi"] == "3.0.0"
    assert DOC["defaultContentType"] == "application/json"
    assert DOC["servers"]["rabbitmq"]["protocol"] == "amqp"


def test_every_registry_message_appears() -> None:
    assert len(set(NAMES)) == len(NAMES)
    assert set(DOC["components"]["messages"]) == set(NAMES)
    for spec in MESSAGES:
        name = spec.model.__name__
        message = DOC["components"]["messages"][name]
        assert message["payload"] == {"$ref": f"#/components/schemas/{name}"}
        assert message["summary"] == spec.summary
        assert message["bindings"]["amqp"]["messageType"] == name
        assert exchange_channel(spec)["messages"][name] == {"$ref": f"#/components/messages/{name}"}


def test_every_ref_resolves() -> None:
    found = refs(DOC)

    assert found
    for ref in found:
        assert resolve(ref) is not None, ref


def test_component_names_are_asyncapi_ids() -> None:
    for section in ("channels", "operations"):
        assert all(ID.match(key) for key in DOC[section]), section
    for section, entries in DOC["components"].items():
        assert all(ID.match(key) for key in entries), section


def test_schemas_have_their_defs_hoisted() -> None:
    schemas = DOC["components"]["schemas"]

    assert not [name for name, schema in schemas.items() if "$defs" in schema]
    assert {"Customer", "OrderItem", "PricedLine", "ErrorInfo"} <= set(schemas)
    assert not [ref for ref in refs(schemas) if not ref.startswith("#/components/schemas/")]


def test_public_exchange_operations() -> None:
    ops = DOC["operations"]
    by_message = {
        (op["action"], ref["$ref"].rsplit("/", 1)[1]): op for op in ops.values() for ref in op.get("messages", [])
    }

    assert set(by_message) >= {("receive", "OrderRequested"), ("send", "OrderOutcome"), ("send", "OrderRejected")}
    assert ("send", "OrderRequested") not in by_message
    assert ("receive", "OrderOutcome") in by_message  # inventory commits a reservation on order.confirmed
    for action, name, address in [
        ("receive", "OrderRequested", "order.requested"),
        ("send", "OrderOutcome", "order.{status}"),
        ("send", "OrderRejected", "order.rejected"),
    ]:
        channel = resolve(by_message[action, name]["channel"]["$ref"])
        assert channel["address"] == address
        assert channel["bindings"]["amqp"]["exchange"]["name"] == topology.EVENTS_EXCHANGE


def test_outcome_channel_lists_every_status() -> None:
    outcome = next(spec for spec in MESSAGES if spec.model is OrderOutcome)
    statuses = payload_schema("OrderOutcome")["properties"]["status"]["enum"]

    parameter = exchange_channel(outcome)["parameters"]["status"]
    assert parameter["enum"] == [s.lower() for s in statuses]
    assert "confirmed" in parameter["enum"] and "failed_compensated" in parameter["enum"]


def test_commands_and_replies_are_sent_and_received() -> None:
    ops = DOC["operations"]
    for spec in MESSAGES:
        if spec.kind == "event":
            continue
        name = spec.model.__name__
        send, receive = ops[f"send{name}"], ops[f"receive{name}"]
        assert (send["action"], receive["action"]) == ("send", "receive")
        assert send["channel"] == receive["channel"]
        assert send["bindings"]["amqp"]["mandatory"] is True
        assert send["bindings"]["amqp"]["deliveryMode"] == 2
        assert receive["bindings"]["amqp"]["ack"] is True
        if spec.kind == "command":
            assert resolve(send["reply"]["channel"]["$ref"])["address"] == "orchestrator"


def test_operations_use_messages_of_their_channel() -> None:
    for op_id, op in DOC["operations"].items():
        channel_ref = op["channel"]["$ref"]
        for message in op["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), op_id


async def test_exchange_bindings_match_the_topology() -> None:
    declared: dict[str, tuple[str, bool]] = {}

    class Recorder:
        """Stands in for an aio_pika channel: records what topology declares."""

        async def declare_exchange(self, name: str, kind: ExchangeType, *, durable: bool) -> str:
            declared[name] = (kind.value, durable)
            return name

    await topology.declare_exchanges(Recorder())  # type: ignore[arg-type]

    for spec in MESSAGES:
        exchange = exchange_channel(spec)["bindings"]["amqp"]["exchange"]
        assert (exchange["type"], exchange["durable"]) == declared[spec.exchange], spec.exchange


def test_consumer_queues_are_quorum_with_a_dead_letter_queue() -> None:
    queues = {c["address"]: c for c in DOC["channels"].values() if c["bindings"]["amqp"]["is"] == "queue"}
    expected = {
        "orchestrator.order-requests",
        "orchestrator.cancel-requests",
        "orchestrator.replies",
        "inventory.order-events",
    } | {f"{service}.commands" for service in ("inventory", "payment", "orders", "notify")}

    assert set(queues) == expected | {topology.dq_name(q) for q in expected}
    for name in expected:
        amqp = queues[name]["bindings"]["amqp"]
        assert amqp["queue"] == {"autoDelete": False, "durable": True, "exclusive": False, "name": name}
        assert amqp["x-arguments"] == {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": topology.DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": name,
        }
        dlq = queues[topology.dq_name(name)]["bindings"]["amqp"]
        assert dlq["x-arguments"] == {"x-queue-type": "quorum"}
        assert dlq["x-bindings"] == [{"exchange": topology.DEAD_LETTER_EXCHANGE, "routingKey": name}]
        assert queues[topology.dq_name(name)]["messages"] == queues[name]["messages"]
    assert set(queues["inventory.commands"]["messages"]) == {
        "CheckInventory",
        "ReserveInventory",
        "ReserveInventoryLine",
        "ReleaseInventory",
        "CommitReservation",
        "RestockOrder",
    }
    assert set(queues["orchestrator.order-requests"]["messages"]) == {"OrderRequested"}
    assert set(queues["orchestrator.cancel-requests"]["messages"]) == {"CancelOrder"}
    replies = {spec.model.__name__ for spec in MESSAGES if spec.kind == "reply"}
    assert set(queues["orchestrator.replies"]["messages"]) == replies


def test_messages_carry_envelope_headers_and_correlation_id() -> None:
    headers = DOC["components"]["schemas"]["EnvelopeHeaders"]
    correlation = DOC["components"]["correlationIds"]["orderId"]

    assert set(headers["properties"]) == {
        envelope.HEADER_CAUSATION,
        envelope.HEADER_ATTEMPT,
        envelope.HEADER_SCHEMA,
        envelope.HEADER_OCCURRED,
        envelope.HEADER_DEADLINE,
    }
    assert correlation["location"] == "$message.header#/correlation_id"
    for name in NAMES:
        message = DOC["components"]["messages"][name]
        assert message["headers"] == {"$ref": "#/components/schemas/EnvelopeHeaders"}
        assert message["correlationId"] == {"$ref": "#/components/correlationIds/orderId"}
        assert message["contentType"] == "application/json"


def test_headers_schema_accepts_what_the_envelope_writes() -> None:
    written = envelope.Envelope(type="CheckInventory", correlationId="ORDER#123", causationId="m-1").headers()

    assert conforms(DOC["components"]["schemas"]["EnvelopeHeaders"], written)
    assert not conforms(DOC["components"]["schemas"]["EnvelopeHeaders"], written | {envelope.HEADER_ATTEMPT: 0})
    command = envelope.Envelope(type="CheckInventory", correlationId="ORDER#123", deadline="2024-05-01T12:00:30Z")
    assert conforms(DOC["components"]["schemas"]["EnvelopeHeaders"], command.headers())


def test_there_is_a_sample_for_every_registry_message() -> None:
    assert set(SAMPLES) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_payload_schema_accepts_a_valid_body(name: str) -> None:
    model = next(spec.model for spec in MESSAGES if spec.model.__name__ == name)
    body = SAMPLES[name]

    model.model_validate_json(json.dumps(body))
    assert conforms(payload_schema(name), body)


def _bad_bodies(name: str) -> dict[str, dict[str, Any]]:
    body, schema = SAMPLES[name], payload_schema(name)
    first = schema["required"][0]
    return {
        "unknown field": body | {"unexpectedField": 1},
        f"missing {first}": {k: v for k, v in body.items() if k != first},
        f"wrong type of {first}": body | {first: {"wrong": "type"}},
    }


@pytest.mark.parametrize("name", NAMES)
def test_payload_schema_and_model_refuse_bad_bodies(name: str) -> None:
    model = next(spec.model for spec in MESSAGES if spec.model.__name__ == name)
    schema = payload_schema(name)

    assert schema["type"] == "object" and schema["additionalProperties"] is False
    for label, body in _bad_bodies(name).items():
        assert not conforms(schema, body), label
        with pytest.raises(ValidationError):
            model.model_validate_json(json.dumps(body))


@pytest.mark.parametrize(
    "changes",
    [
        {"items": [{"productId": "456", "quantity": 0}]},
        {"items": []},
        {"customer": {"email": "ada@example", "phone": None}},
        {"currency": "USD"},
        {"orderId": ""},
        {"customer": {"email": "ada@example.com", "name": "Ada"}},
    ],
    ids=repr,
)
def test_order_requested_schema_refuses_what_the_model_refuses(changes: dict[str, Any]) -> None:
    body = SAMPLES["OrderRequested"] | changes

    assert not conforms(payload_schema("OrderRequested"), body)
    with pytest.raises(ValidationError):
        OrderRequested.model_validate_json(json.dumps(body))
