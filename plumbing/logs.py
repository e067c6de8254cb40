"""JSON-lines logging, one object per line with whatever context the caller binds."""

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

#: Fields bound for the message being handled (orderId, step, attempt, correlationId).
log_context: ContextVar[dict[str, Any] | None] = ContextVar("log_context", default=None)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(log_context.get() or {})
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["traceId"] = format(span.trace_id, "032x")
        extra = getattr(record, "fields", None)
        if extra:
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return mask(json.dumps(entry, default=str))


_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_PHONE = re.compile(r"\+\d[\d ()-]{6,18}(\d{2})")


def mask(text: str) -> str:
    """Contact details never reach the logs: a***@example.com, +*******12."""
    text = _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
    return _PHONE.sub(lambda m: "+" + "*" * 7 + m.group(1), text)


def setup_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiormq logs every reconnect attempt at INFO with tracebacks; keep ours readable.
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    # The Stripe SDK logs two INFO lines per API request ("Request to Stripe api", "Stripe API response"):
    # noise at a payment's volume, and 2-3 % of payment's CPU through our JSON formatter. Its errors reach
    # our own log lines as named errors; LOG_LEVEL=DEBUG shows them again.
    logging.getLogger("stripe").setLevel(logging.WARNING if root.level > logging.DEBUG else logging.DEBUG)


def bind(**fields: Any) -> None:
    """Add fields to every log line of the current task."""
    log_context.set({**(log_context.get() or {}), **fields})
