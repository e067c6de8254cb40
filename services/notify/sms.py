"""SMS providers behind one small interface: Twilio's HTTP API, or the log (the default, for development)."""

import logging
from typing import Protocol

import aiohttp

from plumbing.errors import SERVICE_THROTTLED, SERVICE_UNAVAILABLE, TransientError
from services.notify.email import SERVICE_CONNECTION, NotificationError

log = logging.getLogger(__name__)


def mask_phone(phone: str) -> str:
    return "*" * max(0, len(phone) - 2) + phone[-2:]


class SmsProvider(Protocol):
    async def send(self, to: str, body: str) -> str:
        """Send ``body`` to ``to``; return the provider's message id; raise a NamedError on failure."""
        ...

    async def close(self) -> None:
        """Release connections at shutdown."""
        ...


class LoggingSmsProvider:
    """Writes the SMS to the log (number masked) instead of sending it: for development."""

    async def send(self, to: str, body: str) -> str:
        log.info("sms (logging provider)", extra={"fields": {"to": mask_phone(to), "chars": len(body)}})
        return "logged"

    async def close(self) -> None:
        pass


class TwilioSmsProvider:
    """Twilio's Messages API (or anything speaking it): POST .../Accounts/{sid}/Messages.json, basic auth."""

    def __init__(self, *, base_url: str, account_sid: str, auth_token: str, sender: str, timeout: float) -> None:
        self.url = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        self.auth = aiohttp.BasicAuth(account_sid, auth_token)
        self.sender = sender
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # One session for the process: its connections are kept alive between messages. A session per message
        # cost a TCP connect and a resolver thread per SMS (bench.load's profile of notify).
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, to: str, body: str) -> str:
        data = {"To": to, "From": self.sender, "Body": body}
        try:
            async with self._client().post(self.url, data=data, auth=self.auth) as response:
                answer = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(f"SMS provider unreachable: {type(exc).__name__}", name=SERVICE_CONNECTION) from exc
        if response.status == 429:
            raise TransientError("SMS provider throttled the send", name=SERVICE_THROTTLED)
        if response.status >= 500:
            raise TransientError(f"SMS provider answered {response.status}", name=SERVICE_UNAVAILABLE)
        if response.status >= 400:
            code = answer.get("code") if isinstance(answer, dict) else None
            raise NotificationError(f"SMS refused ({response.status}, code {code}) for {mask_phone(to)}")
        log.info("sms sent", extra={"fields": {"to": mask_phone(to), "sid": answer.get("sid")}})
        return str(answer.get("sid"))
