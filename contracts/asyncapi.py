"""The AsyncAPI 3.0 document of Orderflow, generated from ``contracts.registry.MESSAGES``.

``python -m contracts.asyncapi > docs/asyncapi.json`` regenerates it and
``python -m contracts.asyncapi --check`` fails when the committed copy is stale.
Operations are seen from the Orderflow application as a whole: it receives
OrderRequested and sends the outcomes on the public ``orders`` exchange, and
both sends and receives its internal commands and replies. Exchange channels
carry the routing key as their address; queue channels document where
messages land (quorum queues, each with a dead-letter queue).
"""

import argparse
import difflib
import json
import re
import sys
from pathlib import Path
from typing import Any, get_args

from contracts.orders import OrderStatus
from contracts.registry import MESSAGES, MessageSpec
from plumbing.envelope import (
    HEADER_ATTEMPT,
    HEADER_CAUSATION,
    HEADER_DEADLINE,
    HEADER_OCCURRED,
    HEADER_SAFE_PATTERN,
    HEADER_SCHEMA,
    SCHEMA_VERSION,
    Envelope,
)
from plumbing.topology import (
    COMMANDS_EXCHANGE,
    DEAD_LETTER_EXCHANGE,
    EVENTS_EXCHANGE,
    MANDATORY_EXCHANGES,
    REPLIES_EXCHANGE,
    dq_name,
    q_name,
)

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.json"
REGENERATE = "python -m contracts.asyncapi > docs/asyncapi.json"
BINDING_VERSION = "0.3.0"
#: As plumbing.topology declares them.
EXCHANGE_TYPES = {EVENTS_EXCHANGE: "topic", COMMANDS_EXCHANGE: "topic", REPLIES_EXCHANGE: "direct"}
_ID = re.compile(r"^[\w.\-]+$")
_PARAM = re.compile(r"\{(\w+)\}")

DESCRIPTION = f"""\
The order saga of the reference guide on RabbitMQ. The body of every message is the payload JSON alone; the \
envelope travels in AMQP properties and headers:

| envelope field | where |
| --- | --- |
| messageId | `message_id` property (absent: `sha256:` of the body, so the same bytes are one message) |
| correlationId | `correlation_id` property: the orderId |
| type | `type` property: the message name below |
| occurredAt | `timestamp` property and the `x-occurred-at` header |
| replyTo | `reply_to` property: routing key of the reply to a command |
| causationId, attempt, schemaVersion | `x-causation-id`, `x-attempt`, `x-schema-version` headers |
| deadline | `x-deadline` header, on commands only: handled after it, a command is refused with `Command.Expired` |

No property or header holds a control character (C0, C1, DEL) or U+2028/U+2029: a delivery that breaks this is \
dead-lettered as a bad envelope. Payload fields whose text reaches a header (ids, names, the customer's email) \
carry the pattern `{HEADER_SAFE_PATTERN}`.

Clients publish OrderRequested to the `orders` exchange with routing key `order.requested` and hear the outcome \
on `order.<status>`. A CONFIRMED order is cancelled with CancelOrder (`order.cancel.requested`); its outcome is \
`order.cancellation_completed` or `order.cancellation_failed`, and a CancelOrder that changes nothing is answered \
with `order.cancellation_rejected`."""


def _spec_id(text: str) -> str:
    ident = _PARAM.sub(r"\1", text)
    if not _ID.match(ident):
        raise ValueError(f"not usable as an AsyncAPI id: {text!r}")
    return ident


def _topic_matches(pattern: list[str], key: list[str]) -> bool:
    if not pattern:
        return not key
    if pattern[0] == "#":
        return _topic_matches(pattern[1:], key) or (bool(key) and _topic_matches(pattern, key[1:]))
    return bool(key) and pattern[0] in ("*", key[0]) and _topic_matches(pattern[1:], key[1:])


def routes_to(binding: tuple[str, str], spec: MessageSpec) -> bool:
    """Whether a queue bound with ``binding`` (exchange, key) receives the message ``spec`` describes."""
    exchange, key = binding
    if spec.exchange != exchange:
        return False
    # A routing key with a {parameter} stands for each of the parameter's values.
    keys = [spec.routing_key]
    for name, parameter in _parameters(spec).items():
        keys = [k.replace("{" + name + "}", value) for k in keys for value in parameter["enum"]]
    if EXCHANGE_TYPES[exchange] == "topic":
        return any(_topic_matches(key.split("."), k.split(".")) for k in keys)
    return key in keys


Binding = tuple[str, str]


def consumer_queues() -> dict[str, list[Binding]]:
    """Every consumer queue with its bindings (exchange, routing key), as orchestrator.main and plumbing.process
    declare them."""
    requested = next(s for s in MESSAGES if s.model.__name__ == "OrderRequested")
    reply_key = next(s.routing_key for s in MESSAGES if s.kind == "reply")
    services = sorted({s.routing_key.split(".", 1)[0] for s in MESSAGES if s.kind == "command"})
    queues = {q_name("orchestrator", "order-requests"): [(EVENTS_EXCHANGE, requested.routing_key)]}
    cancel = next(s for s in MESSAGES if s.model.__name__ == "CancelOrder")
    queues[q_name("orchestrator", "cancel-requests")] = [(EVENTS_EXCHANGE, cancel.routing_key)]
    queues[q_name("orchestrator", "replies")] = [(REPLIES_EXCHANGE, reply_key)]
    queues |= {q_name(service, "commands"): [(COMMANDS_EXCHANGE, f"{service}.#")] for service in services}
    # Inventory hears every outcome: order.confirmed commits the reservation, and the sweeper releases a stale hold
    # only of an order known to have ended otherwise. Not order.rejected: a rejected order reserved nothing.
    queues[q_name("inventory", "order-events")] = [
        (EVENTS_EXCHANGE, f"order.{status.lower()}") for status in get_args(OrderStatus)
    ]
    return queues


def routed_to_queue(bindings: list[Binding], spec: MessageSpec) -> bool:
    return any(routes_to(binding, spec) for binding in bindings)


def _channel_id(spec: MessageSpec) -> str:
    return _spec_id(f"{spec.exchange}.{spec.routing_key}")


def _refs(specs: list[MessageSpec]) -> dict[str, Any]:
    return {s.model.__name__: {"$ref": f"#/components/messages/{s.model.__name__}"} for s in specs}


def _parameters(spec: MessageSpec) -> dict[str, Any]:
    """``{status}`` in a routing key: the lower-cased values of the payload field of that name."""
    params = {}
    for name in _PARAM.findall(spec.routing_key):
        values = [str(v).lower() for v in get_args(spec.model.model_fields[name].annotation)]
        params[name] = {"description": f"The payload's `{name}`, lower case.", "enum": values}
    return params


def _exchange_channels() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    for spec in MESSAGES:
        channel = channels.setdefault(
            _channel_id(spec),
            {
                "address": spec.routing_key,
                "bindings": {
                    "amqp": {
                        "bindingVersion": BINDING_VERSION,
                        "exchange": {
                            "autoDelete": False,
                            "durable": True,
                            "name": spec.exchange,
                            "type": EXCHANGE_TYPES[spec.exchange],
                        },
                        "is": "routingKey",
                    }
                },
                "description": f"Routing key `{spec.routing_key}` on the `{spec.exchange}` exchange.",
                "messages": {},
            },
        )
        channel["messages"] |= _refs([spec])
        if params := _parameters(spec):
            channel["parameters"] = params
    return channels


def _queue_channel(queue: str, bindings: list[Binding], specs: list[MessageSpec], *, dead_letter: str | None) -> Any:
    arguments: dict[str, Any] = {"x-queue-type": "quorum"}
    description = "Durable quorum queue bound to " + ", ".join(f"`{e}` with `{k}`" for e, k in bindings) + "."
    if dead_letter:
        arguments |= {"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE, "x-dead-letter-routing-key": queue}
        description += f" Unreadable messages, and any after DELIVERY_LIMIT deliveries, go to `{dead_letter}`."
    return {
        "address": queue,
        "bindings": {
            "amqp": {
                "bindingVersion": BINDING_VERSION,
                "is": "queue",
                "queue": {"autoDelete": False, "durable": True, "exclusive": False, "name": queue},
                "x-arguments": arguments,
                "x-bindings": [{"exchange": exchange, "routingKey": key} for exchange, key in bindings],
            }
        },
        "description": description,
        "messages": _refs(specs),
    }


def _queue_channels() -> dict[str, Any]:
    """Each consumer queue with the messages routed to it, and its dead-letter queue."""
    channels: dict[str, Any] = {}
    for queue, bindings in consumer_queues().items():
        specs = [s for s in MESSAGES if routed_to_queue(bindings, s)]
        dlq = dq_name(queue)
        channels[_spec_id(f"queue.{queue}")] = _queue_channel(queue, bindings, specs, dead_letter=dlq)
        channels[_spec_id(f"queue.{dlq}")] = _queue_channel(
            dlq, [(DEAD_LETTER_EXCHANGE, queue)], specs, dead_letter=None
        )
    return channels


def _operation(spec: MessageSpec, action: str) -> dict[str, Any]:
    channel = _channel_id(spec)
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": [{"$ref": f"#/channels/{channel}/messages/{spec.model.__name__}"}],
        "summary": spec.summary,
    }


def _operations() -> dict[str, Any]:
    """Receive what lands in one of our queues; send every message but those outside clients publish."""
    queues = consumer_queues()
    reply_channels = sorted({_channel_id(s) for s in MESSAGES if s.kind == "reply"})
    operations: dict[str, Any] = {}
    for spec in MESSAGES:
        name = spec.model.__name__
        queue = next((q for q, bindings in queues.items() if routed_to_queue(bindings, spec)), None)
        if queue is not None:
            receive = _operation(spec, "receive")
            receive["bindings"] = {"amqp": {"ack": True, "bindingVersion": BINDING_VERSION}}
            receive["description"] = f"Consumed from the queue `{queue}`."
            operations[f"receive{name}"] = receive
        if not spec.from_client:
            send = _operation(spec, "send")
            amqp = {"bindingVersion": BINDING_VERSION, "deliveryMode": 2, "timestamp": True}
            send["bindings"] = {"amqp": amqp | {"mandatory": spec.exchange in MANDATORY_EXCHANGES}}
            if spec.kind == "command" and len(reply_channels) == 1:
                send["reply"] = {"channel": {"$ref": f"#/channels/{reply_channels[0]}"}}
            operations[f"send{name}"] = send
    return operations


def _schemas() -> dict[str, Any]:
    """Each model's schema under its name, its ``$defs`` hoisted beside it; one name, one schema."""
    schemas: dict[str, Any] = {}

    def put(name: str, schema: dict[str, Any]) -> None:
        if schemas.setdefault(_spec_id(name), schema) != schema:
            raise ValueError(f"two different schemas are named {name}")

    for spec in MESSAGES:
        schema = spec.model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in schema.pop("$defs", {}).items():
            put(name, definition)
        put(spec.model.__name__, schema)
    put("EnvelopeHeaders", _headers_schema())
    return schemas


def _headers_schema() -> dict[str, Any]:
    fields = Envelope.model_fields
    return {
        "description": "The AMQP headers of the envelope; Orderflow always sets all but x-causation-id, and "
        "x-deadline on commands only.",
        "properties": {
            HEADER_ATTEMPT: {"description": fields["attempt"].description, "minimum": 1, "type": "integer"},
            HEADER_CAUSATION: {
                "description": fields["causationId"].description,
                "pattern": HEADER_SAFE_PATTERN,
                "type": "string",
            },
            HEADER_DEADLINE: {"description": fields["deadline"].description, "format": "date-time", "type": "string"},
            HEADER_OCCURRED: {"description": "When the message was created.", "format": "date-time", "type": "string"},
            HEADER_SCHEMA: {"description": fields["schemaVersion"].description, "minimum": 1, "type": "integer"},
        },
        "type": "object",
    }


def _message(spec: MessageSpec) -> dict[str, Any]:
    name = spec.model.__name__
    return {
        "bindings": {"amqp": {"bindingVersion": BINDING_VERSION, "messageType": name}},
        "contentType": "application/json",
        "correlationId": {"$ref": "#/components/correlationIds/orderId"},
        "headers": {"$ref": "#/components/schemas/EnvelopeHeaders"},
        "name": name,
        "payload": {"$ref": f"#/components/schemas/{name}"},
        "summary": spec.summary,
        "tags": [{"name": spec.kind}],
        "title": name,
    }


def build() -> dict[str, Any]:
    """The AsyncAPI document as a dict."""
    channels = _exchange_channels()
    queue_channels = _queue_channels()
    if clash := channels.keys() & queue_channels.keys():
        raise ValueError(f"channel ids used twice: {sorted(clash)}")
    return {
        "asyncapi": "3.0.0",
        "channels": channels | queue_channels,
        "components": {
            "correlationIds": {
                "orderId": {
                    "description": "The AMQP correlation_id property (AsyncAPI runtime expressions name AMQP "
                    "properties as headers), not an x- header: the orderId, shared by every message of a saga.",
                    "location": "$message.header#/correlation_id",
                }
            },
            "messages": {s.model.__name__: _message(s) for s in MESSAGES},
            "schemas": _schemas(),
        },
        "defaultContentType": "application/json",
        "id": "urn:orderflow",
        "info": {"description": DESCRIPTION, "title": "Orderflow", "version": f"{SCHEMA_VERSION}.0.0"},
        "operations": _operations(),
        "servers": {
            "rabbitmq": {
                "description": "The RabbitMQ broker of AMQP_URL; host and vhost differ per environment.",
                "host": "127.0.0.1:5672",
                "pathname": "/",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
            }
        },
    }


def render() -> str:
    """The document as it is committed: sorted keys, two-space indent, final newline."""
    return json.dumps(build(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contracts.asyncapi", description=__doc__.splitlines()[0])
    parser.add_argument("--check", nargs="?", const=DOC_PATH, type=Path, metavar="PATH", help="fail if PATH is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check is None:
        sys.stdout.write(text)
        return 0
    current = args.check.read_text(encoding="utf-8") if args.check.exists() else ""
    if current == text:
        return 0
    diff = difflib.unified_diff(current.splitlines(), text.splitlines(), str(args.check), "generated", lineterm="")
    print("\n".join(list(diff)[:40]), file=sys.stderr)
    print(f"{args.check} is stale; regenerate it with: {REGENERATE}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
