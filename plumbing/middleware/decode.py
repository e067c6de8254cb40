"""Validate at the edge: a delivery is read into an envelope, a route and a typed payload, or it is poison.

Checked in this order, so a message is dead-lettered for the first thing wrong with it: its size, its
envelope (message properties and headers), its type (a route), its schema version, a command's reply-to,
its payload against the route's model, and last its sender (a malformed message is dead-lettered for what
is wrong with it, whoever sent it).
"""

from pydantic import ValidationError

from plumbing.envelope import SCHEMA_VERSION, Envelope
from plumbing.errors import PoisonMessage
from plumbing.middleware.base import Middleware
from plumbing.middleware.delivery import Delivery, Route


class Decode(Middleware[Delivery]):
    def __init__(self, *, routes: dict[str, Route], default_type: str | None, max_message_bytes: int) -> None:
        self.routes = routes
        self.default_type = default_type
        self.max_message_bytes = max_message_bytes

    def before(self, delivery: Delivery) -> None:
        try:
            self._decode(delivery)
        except PoisonMessage:
            raise
        except Exception as exc:  # whatever else makes a delivery unreadable must not hold it for ever
            raise PoisonMessage(f"bad_envelope: {type(exc).__name__}: {str(exc)[:300]}") from exc

    def _decode(self, delivery: Delivery) -> None:
        message = delivery.message
        if len(message.body) > self.max_message_bytes:
            raise PoisonMessage(f"too_large: body of {len(message.body)} bytes exceeds {self.max_message_bytes}")
        try:
            envelope = Envelope.from_amqp(message, default_type=self.default_type)
        except (ValueError, TypeError, OverflowError, ValidationError) as exc:
            raise PoisonMessage(f"bad_envelope: {_short(exc)}") from exc
        route = self.routes.get(envelope.type)
        if route is None:
            raise PoisonMessage(f"unknown_type: no handler for message type {envelope.type!r}")
        if envelope.schemaVersion != SCHEMA_VERSION:
            raise PoisonMessage(f"schema_version: version {envelope.schemaVersion} is not supported")
        if route.needs_reply and not envelope.replyTo:
            raise PoisonMessage("bad_envelope: command has no reply-to")
        try:
            payload = route.model.model_validate_json(message.body)
        except ValidationError as exc:
            kind = "invalid_json" if any(e["type"] == "json_invalid" for e in exc.errors()) else "schema"
            raise PoisonMessage(f"{kind}: {_short(exc)}") from exc
        if route.sender_check is not None and (refusal := route.sender_check(envelope.type, message.user_id)):
            raise PoisonMessage(refusal)
        delivery.envelope, delivery.route, delivery.payload = envelope, route, payload


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()[:10])
    return str(exc)[:500]
