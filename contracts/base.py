"""Building blocks the domain contracts share."""

from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, model_validator

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
ProductId = Annotated[str, Field(min_length=1, max_length=100)]
Currency = Annotated[str, Field(pattern=r"^[a-z]{3}$", description="ISO 4217, lower case.")]


def _reject_nul(value: Any) -> Any:
    """PostgreSQL cannot store NUL in text: refuse it at the edge, as a schema error, not a crash later."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("text must not contain NUL characters")
    elif isinstance(value, dict):
        for key, item in value.items():
            _reject_nul(key)
            _reject_nul(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _reject_nul(item)
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
    name: str
    quantity: int = Field(gt=0, strict=True)
    unitPrice: Money
    lineTotal: Money


EMAIL_PATTERN = (
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$"
)


class Customer(Contract):
    # One mailbox, nothing an SMTP library could read as a list or a header: the local part without spaces,
    # quotes, commas, semicolons or brackets (RFC 5322's specials), the domain dot-separated letters, digits
    # and hyphens (a host name).
    email: str = Field(pattern=EMAIL_PATTERN, max_length=254, description="One address, e.g. ada@example.com.")
    phone: str | None = Field(None, pattern=r"^\+?[0-9 ()-]{6,20}$")


class ErrorInfo(Contract):
    """An error as Step Functions records it."""

    Error: str
    Cause: str = ""
