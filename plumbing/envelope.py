"""The envelope every message travels in, mapped onto AMQP message properties.

The body is the payload model's JSON and nothing else, so an outside client
can publish a bare JSON document; the envelope fields ride in the standard
AMQP properties (message-id, correlation-id, type, timestamp, reply-to) and
in a few ``x-`` headers. A message that arrives without a message id gets a
content-derived one, so publishing the same bytes twice is one message. A
command carries its deadline (``x-deadline``, ISO 8601): the service refuses
it once that has passed (plumbing/commands.py).

Every text the envelope puts into a property or header is header-safe
(``HEADER_SAFE_PATTERN``): a delivery whose message id, correlation id, type,
reply-to or causation id holds a control character is refused as a bad
envelope before anything reads it.
"""

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, GetJsonSchemaHandler, field_validator
from pydantic.json_schema import JsonSchemaValue

#: What text that reaches a header must not hold: C0 and C1 control characters (CR and LF end a header line;
#: NUL, ESC, TAB and the rest are no part of an id or a name), DEL, and Unicode's line and paragraph separators
#: (U+2028, U+2029), which some readers take for line breaks. The one pattern for every such field: the
#: envelope's properties and headers here, and the contracts' ids, names and reasons (contracts/base.py) that
#: reach an AMQP header, an SMTP header or subject, an SMS or an HTTP header (Stripe's Idempotency-Key).
HEADER_SAFE_PATTERN = r"^[^\x00-\x1F\x7F-\x9F\u2028\u2029]*$"
_HEADER_SAFE = re.compile(HEADER_SAFE_PATTERN)


_FORBIDDEN = re.compile(r"[\x00-\x1F\x7F-\x9F\u2028\u2029]")


def escaped(text: str) -> str:
    """``text`` made header-safe by writing each forbidden character as its escape (``\\n``, ``\\x1b``): for text
    that quotes what a sender sent, such as a dead letter's reason naming an unknown field."""
    return _FORBIDDEN.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


def header_safe(value: str) -> str:
    """``value`` if it may travel in a header; a ValueError that does not repeat it otherwise."""
    if not _HEADER_SAFE.fullmatch(value):
        raise ValueError("holds a control character or a line separator")
    return value


@dataclass(frozen=True)
class _HeaderSafeSchema:
    """Puts HEADER_SAFE_PATTERN into the JSON schema (docs/asyncapi.json), where a client can read it."""

    def __get_pydantic_json_schema__(self, core: Any, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler(core)
        schema["pattern"] = HEADER_SAFE_PATTERN
        return schema


#: Header-safe text, refused with a message that does not repeat it. Bound its length where it is used.
HeaderSafe = Annotated[str, AfterValidator(header_safe), _HeaderSafeSchema()]


#: Text for an AMQP property: header-safe. Its length is the broker's to bound (a short string holds 255 bytes):
#: a delivery cannot exceed it, and an envelope of ours that does is parked by the outbox, not lost.
PropertyText = HeaderSafe

SCHEMA_VERSION = 1
HEADER_CAUSATION = "x-causation-id"
HEADER_ATTEMPT = "x-attempt"
HEADER_SCHEMA = "x-schema-version"
HEADER_OCCURRED = "x-occurred-at"
HEADER_DEADLINE = "x-deadline"


def new_id() -> str:
    return str(uuid.uuid4())


class Envelope(BaseModel):
    """Metadata of one message; correlationId is the saga's id (the orderId)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    messageId: PropertyText = Field(default_factory=new_id, description="Unique per message; the inbox key.")
    type: PropertyText = Field(description="Name of the payload model, e.g. ReserveInventory.")
    correlationId: PropertyText = Field(description="The orderId: every message of one saga shares it.")
    causationId: PropertyText | None = Field(
        None,
        description="messageId of the message that caused this one; `invalid:` and the SHA-256 (hex) of it when "
        "that id could not travel in a header (only an order.rejected answering a refused message id).",
    )
    attempt: int = Field(1, ge=1, description="Which run of a saga step this command is.")
    schemaVersion: int = Field(SCHEMA_VERSION, description="Version of the payload schema.")
    occurredAt: datetime = Field(default_factory=lambda: datetime.now(UTC))
    replyTo: PropertyText | None = Field(None, description="Routing key for the reply to a command.")
    deadline: datetime | None = Field(
        None,
        description="A command's deadline (UTC): sent time + its step's TimeoutSeconds. A service refuses the "
        "command once it has passed (Command.Expired), since its requester no longer waits for that answer.",
    )
    trace: dict[str, str] = Field(
        default_factory=dict,
        description="Trace context of the producer, kept with an outbox row; on the wire it is in the headers.",
    )

    @field_validator("causationId", mode="before")
    @classmethod
    def _travelling_causation(cls, value: Any) -> Any:
        # What a refused delivery caused (its order.rejected) must still go out: its unusable message id is
        # carried as a digest the sender can compute. Deliveries themselves never get here with one: from_amqp
        # refuses a causation id that is not header-safe.
        if isinstance(value, str) and not _HEADER_SAFE.fullmatch(value):
            return "invalid:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
        return value

    @field_validator("deadline")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # A deadline without a zone (from an outside client) is read as UTC, so it compares with an aware clock.
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value

    def to_amqp(self, body: bytes) -> aio_pika.Message:
        return aio_pika.Message(
            body=body,
            message_id=self.messageId,
            correlation_id=self.correlationId,
            type=self.type,
            reply_to=self.replyTo,
            timestamp=self.occurredAt,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=self.headers(),
        )

    def headers(self) -> dict[str, Any]:
        headers: dict[str, Any] = {
            HEADER_ATTEMPT: self.attempt,
            HEADER_SCHEMA: self.schemaVersion,
            HEADER_OCCURRED: self.occurredAt.isoformat(),
        }
        if self.causationId:
            headers[HEADER_CAUSATION] = self.causationId
        if self.deadline:
            headers[HEADER_DEADLINE] = self.deadline.isoformat()
        return headers

    @classmethod
    def from_amqp(cls, message: AbstractIncomingMessage, *, default_type: str | None = None) -> "Envelope":
        """Read the envelope of a delivery; raises ValueError on a missing type or bad header."""
        headers = message.headers or {}
        message_type = message.type or default_type
        if not message_type:
            raise ValueError("message has no type property")
        message_id = message.message_id or "sha256:" + hashlib.sha256(message.body).hexdigest()
        occurred = headers.get(HEADER_OCCURRED) or message.timestamp or datetime.now(UTC)
        causation = _text(headers.get(HEADER_CAUSATION))
        for name, value in (
            ("message-id", message_id),
            ("type", message_type),
            ("correlation-id", message.correlation_id),
            ("reply-to", message.reply_to),
            (HEADER_CAUSATION, causation),
        ):
            if isinstance(value, str) and not _HEADER_SAFE.fullmatch(value):
                raise ValueError(f"{name} holds a control character or a line separator")
        return cls.model_validate(
            {
                "messageId": message_id,
                "type": message_type,
                "correlationId": message.correlation_id or "",
                "causationId": causation,
                "attempt": _int(headers.get(HEADER_ATTEMPT), 1),
                "schemaVersion": _int(headers.get(HEADER_SCHEMA), SCHEMA_VERSION),
                "occurredAt": _text(occurred) if isinstance(occurred, bytes) else occurred,
                "replyTo": message.reply_to,
                "deadline": _text(headers.get(HEADER_DEADLINE)),
            }
        )


def copy_of(message: AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
    """A delivery as a new persistent message with the same body and properties, and ``headers``:
    what dead-lettering and replaying a dead letter publish."""
    return aio_pika.Message(
        body=message.body,
        headers=headers,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        type=message.type,
        reply_to=message.reply_to,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        timestamp=message.timestamp,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def _int(value: Any, default: int) -> int:
    """A header that must hold a whole number; anything else (a table, a float, text) is a ValueError."""
    if value is None:
        return default
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"header holds {type(value).__name__}, not a whole number")
    return int(value)


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value
