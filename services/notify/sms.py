"""SMS providers behind one small interface; the logging provider is the default."""

import logging
from typing import Protocol

log = logging.getLogger(__name__)


def mask_phone(phone: str) -> str:
    return "*" * max(0, len(phone) - 2) + phone[-2:]


class SmsProvider(Protocol):
    async def send(self, to: str, body: str) -> str:
        """Send ``body`` to ``to``; return the provider's message id; raise a NamedError on failure."""
        ...


class LoggingSmsProvider:
    """Writes the SMS to the log (number masked) instead of sending it: for development."""

    async def send(self, to: str, body: str) -> str:
        log.info("sms (logging provider)", extra={"fields": {"to": mask_phone(to), "chars": len(body)}})
        return "logged"
