"""What an ``order.rejected`` for an unreadable OrderRequested carries: the orderId as given, and a correlation id
that can travel.

The rejection goes out as the request's saga would: correlated by its orderId. But the orderId of an invalid
request may be one that cannot be a correlation id at all (150 'é' are 300 bytes, where an AMQP short string
holds 255): the rejection itself would then be unpublishable. An orderId that is not a valid OrderId is
therefore correlated by ``invalid:`` and the SHA-256 (hex) of its UTF-8 bytes, which a client can compute from
what it sent, and carried as given in the payload, cut to ``ORDER_ID_CHARS`` characters.
"""

import hashlib
import json
import re

from contracts.base import ORDER_ID_PATTERN

#: How much of an unusable orderId the rejection's payload carries.
ORDER_ID_CHARS = 200
INVALID_PREFIX = "invalid:"
_VALID = re.compile(ORDER_ID_PATTERN)


def correlation_id(order_id: str) -> str:
    """The orderId itself when it is a valid OrderId; otherwise ``invalid:<sha256 hex of its UTF-8 bytes>``."""
    if _VALID.fullmatch(order_id):
        return order_id
    return INVALID_PREFIX + hashlib.sha256(order_id.encode("utf-8", "surrogatepass")).hexdigest()


def printable(order_id: str) -> str:
    """The orderId as given, cut, and storable: a NUL (which PostgreSQL's jsonb refuses) or a lone surrogate
    (which UTF-8 cannot encode) becomes U+FFFD."""
    return "".join("\ufffd" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in order_id[:ORDER_ID_CHARS])


def ids_of(body: bytes) -> tuple[str | None, str]:
    """The payload's orderId (None when the body has no string orderId) and the rejection's correlation id
    ("" when there is no orderId to correlate by)."""
    try:
        document = json.loads(body)
    except ValueError:
        return None, ""
    value = document.get("orderId") if isinstance(document, dict) else None
    if not isinstance(value, str) or not value:
        return None, ""
    return printable(value), correlation_id(value)
