"""Building blocks the domain contracts share."""

from decimal import Decimal
from typing import Annotated, Any

import email_validator
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, model_validator

from plumbing.envelope import HeaderSafe

#: Money in major units (129.57), exact in Python, a JSON number on the wire.
Money = Annotated[
    Decimal,
    Field(ge=0, max_digits=14, decimal_places=2),
    PlainSerializer(lambda v: float(v), return_type=float, when_used="json"),
]
#: What an orderId may hold: printable ASCII without spaces, at most 128 characters. It travels as the AMQP
#: correlation id of every message of its saga (a short string: 255 bytes) and, with suffixes such as "-payment"
#: or "-refund", as an idempotency key (Stripe's hold 255 characters); non-ASCII text would count up to four
#: bytes a character. An order whose id breaks this is rejected at the edge instead of starting a saga whose
#: messages could never be published.
ORDER_ID_PATTERN = r"^[\x21-\x7E]{1,128}$"
OrderId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=ORDER_ID_PATTERN,
        description="Saga id, e.g. ORDER#123: 1 to 128 printable ASCII characters, no spaces.",
    ),
]
#: Every field whose text can reach a header: an AMQP property or header, an SMTP header or subject, an SMS, an
#: HTTP header (Stripe's Idempotency-Key) or the lines of the confirmation email. No C0 or C1 control character,
#: no DEL, no U+2028/2029 (plumbing.envelope.HEADER_SAFE_PATTERN), at most 500 characters; a field bounds it
#: further with its own Field(max_length=...). One type for all of them, so a new field is covered by using it.
HeaderText = Annotated[HeaderSafe, Field(max_length=500)]
#: An id: 1 to 255 header-safe characters (Stripe's ids and idempotency keys hold 255).
Identifier = Annotated[HeaderText, Field(min_length=1, max_length=255)]
ProductId = Annotated[Identifier, Field(max_length=100)]
Currency = Annotated[str, Field(pattern=r"^[a-z]{3}$", description="ISO 4217, lower case.")]


def _reject_nul(value: Any, path: str = "") -> Any:
    """PostgreSQL cannot store NUL in text: refuse it at the edge, as a schema error naming where, not a crash
    later."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{path or 'text'} must not contain NUL characters")
    elif isinstance(value, dict):
        for key, item in value.items():
            _reject_nul(key, path)
            _reject_nul(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _reject_nul(item, f"{path}.{index}" if path else str(index))
    return value


class Contract(BaseModel):
    """A message body: frozen, and unknown fields are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        return _reject_nul(data)


class OrderItem(Contract):
    productId: ProductId
    # strict: a JSON true or "2" is an error at the public edge, not an order for one or two units.
    quantity: int = Field(gt=0, le=10_000, strict=True, description="Units ordered; at least 1.")


class PricedLine(Contract):
    """An order line priced from the inventory catalog."""

    productId: ProductId
    name: Annotated[HeaderText, Field(min_length=1, max_length=200, description="The catalog's product name.")]
    quantity: int = Field(gt=0, strict=True)
    unitPrice: Money
    lineTotal: Money


def one_mailbox(value: str) -> str:
    """One addr-spec, checked by email-validator: syntax only (no DNS, so no network at the edge), no display
    name, no quoted local part, no domain literal; header-safe and at most 254 characters before it gets here.
    pydantic's EmailStr is not used: it accepts "Name <addr>" and surrounding whitespace and drops them, where
    a request carrying them is refused."""
    try:
        email_validator.validate_email(
            value,
            check_deliverability=False,
            allow_display_name=False,
            allow_quoted_local=False,
            allow_domain_literal=False,
        )
    except email_validator.EmailNotValidError as exc:
        raise ValueError(f"not one email address: {exc}") from None
    return value


#: One mailbox: nothing an SMTP library could read as a list, a second recipient or another header.
Email = Annotated[
    HeaderText,
    Field(max_length=254, json_schema_extra={"format": "email"}),
    AfterValidator(one_mailbox),
]


class Customer(Contract):
    email: Email = Field(description="One address, e.g. ada@example.com.")
    phone: str | None = Field(None, pattern=r"^\+?[0-9 ()-]{6,20}$")


class ErrorInfo(Contract):
    """An error as Step Functions records it."""

    Error: str
    Cause: str = ""
