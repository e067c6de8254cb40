"""A few persistent SMTP connections, reused message after message, as a production mail client keeps them.

A connection per email paid the TCP handshake, the greeting, EHLO (and STARTTLS and AUTH when configured) and
QUIT for every message, on both sides. Here each connection is opened when first needed, kept while it works,
and closed for good after any error: a connection that failed is never handed to another message.

The fault model is the message's: nothing of it is on the server until the server accepted its MAIL FROM (and
nothing is delivered before the end of DATA). A reused connection that turns out dead at or before MAIL FROM
(the server dropped it while idle, or answered 421) is replaced and the message sent once more on a new
connection. Once MAIL FROM was accepted, a failure is raised as it came and the message is not sent again by
the pool: the caller's classification applies, as it did with a connection per email. But once the whole
message was written (up to the <CRLF>.<CRLF> ending DATA), a lost connection, a timeout or an unreadable
answer says nothing about the message: the server may have accepted it and will deliver it. That is raised as
``UnansweredMessage``, for the caller not to send it again.
"""

import asyncio
import logging
import re
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import aiosmtplib
from aiosmtplib.typing import Default

log = logging.getLogger(__name__)

#: QUIT at shutdown is a courtesy to the server; a server that does not answer it soon is just disconnected.
QUIT_TIMEOUT_SECONDS = 1.0
#: 421: the server is closing the connection (its idle timeout, a restart); another connection may be served.
SERVICE_NOT_AVAILABLE = 421
#: A line of the message starting with a period gets a second one, so it cannot end DATA (RFC 5321 4.5.2).
_LEADING_PERIOD = re.compile(rb"(?m)^\.")
#: Lone CR and LF become CRLF, as aiosmtplib's DATA does (every version from the floor, 3.0, on; its helper for
#: it is not public and is missing before 5.x, so the two rules live here).
_LINE_ENDINGS = re.compile(rb"(?:\r\n|\n|\r(?!\n))")


def data_bytes(content: bytes) -> bytes:
    """What DATA writes for ``content``: line endings made CRLF, a final CRLF, leading periods doubled, the
    terminating <CRLF>.<CRLF>."""
    content = _LINE_ENDINGS.sub(b"\r\n", content)
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    return _LEADING_PERIOD.sub(b"..", content) + b".\r\n"


class UnansweredMessage(Exception):
    """The whole message was written, then the connection failed before the server answered it: the server may
    have accepted the message (and will deliver it). Raised from the error as it came."""


@dataclass(frozen=True, kw_only=True)
class SmtpServer:
    """Where and how to connect; every (re)connection does the same STARTTLS or TLS and AUTH."""

    host: str
    port: int
    username: str | None
    password: str | None
    start_tls: bool
    use_tls: bool
    timeout: float
    """Seconds for the connection and for each command's answer."""
    local_hostname: str | None
    """The EHLO name, worked out once per process (aiosmtplib would run socket.getfqdn per connection)."""
    tls_context: ssl.SSLContext | None
    """Built once per process (aiosmtplib would build one in a worker thread per connection)."""


class _Client(aiosmtplib.SMTP):
    """aiosmtplib's client, telling how far the current message got: whether the server accepted its MAIL FROM
    (before that, a failure left nothing of the message on the server) and whether the whole message was
    written (after that, the server may have it). send_message stays aiosmtplib's (SIZE, 8BITMIME, SMTPUTF8,
    the flattening), so the bytes on the wire are those of a connection per email."""

    mail_accepted = False
    data_written = False

    async def mail(self, sender: str, /, **options: Any) -> aiosmtplib.SMTPResponse:
        response = await super().mail(sender, **options)
        self.mail_accepted = True
        return response

    async def data(self, message: str | bytes, /, **options: Any) -> aiosmtplib.SMTPResponse:
        """aiosmtplib's DATA (SMTP.data, SMTPProtocol.execute_data_command) split at its two answers, to mark
        the moment the message's end was written: aiosmtplib does both in one call, which cannot tell a
        connection lost before the 354 (nothing of the message on the server) from one lost after the end of
        DATA (the message may be accepted). The bytes written are aiosmtplib's."""
        protocol = self.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        timeout = options.get("timeout", Default.token)
        if timeout is Default.token:  # what sendmail passes on when no timeout was given: the client's
            timeout = self.timeout
        content = message.encode("ascii") if isinstance(message, str) else message
        content = data_bytes(content)
        try:
            start = await protocol.execute_command(b"DATA", timeout=timeout)
            if start.code != aiosmtplib.SMTPStatus.start_input:
                raise aiosmtplib.SMTPDataError(start.code, start.message)
            protocol.write(content)  # raises, writing nothing, when the connection is already closing
            self.data_written = True
            response = await protocol.read_response(timeout=timeout)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
            self.close()
            raise
        if response.code != aiosmtplib.SMTPStatus.completed:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return response


def _unanswered(client: _Client, exc: BaseException) -> bool:
    """After the end of DATA, anything but the server's answer: a lost connection, a timeout (both OSError,
    as SMTPServerDisconnected and SMTPTimeoutError are), or an answer that could not be read."""
    if not client.data_written:
        return False
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return exc.code == aiosmtplib.SMTPStatus.invalid_response
    return isinstance(exc, OSError)


def _found_dead(exc: BaseException) -> bool:
    """A failure saying the connection is gone (not that this message was refused)."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return exc.code == SERVICE_NOT_AVAILABLE
    return isinstance(exc, ConnectionError)  # SMTPServerDisconnected is one


class SmtpPool:
    """At most ``size`` connections; a send waits for a free one. Idle ones are reused most recent first, so
    a light load keeps one warm and the others are left to the server's idle timeout."""

    def __init__(self, server: SmtpServer, *, size: int) -> None:
        if size < 1:
            raise ValueError(f"an SMTP pool needs at least one connection, not {size}")
        self._server = server
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Client] = []
        self._closed = False
        self.connects = 0
        """Connections opened so far (for tests and logs)."""

    async def send(self, message: EmailMessage) -> None:
        """Send ``message`` once. Raises UnansweredMessage when the server may have it, else aiosmtplib's errors
        (and OSError) as they came."""
        async with self._slots:
            client = self._take_idle()
            if client is not None:
                try:
                    await self._send_on(client, message)
                    return
                except Exception as exc:
                    if client.mail_accepted or not _found_dead(exc):
                        raise
                    log.info("smtp connection found closed, sending again", extra={"fields": {"error": str(exc)}})
            await self._send_on(await self._connect(), message)

    async def close(self) -> None:
        """QUIT the idle connections; one still sending is closed when it comes back."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_quit(client) for client in idle))

    def _take_idle(self) -> _Client | None:
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:  # one the server closed while idle was already closed by aiosmtplib
                return client
        return None

    async def _connect(self) -> _Client:
        server = self._server
        client = _Client(
            hostname=server.host,
            port=server.port,
            username=server.username,
            password=server.password,
            start_tls=server.start_tls,
            use_tls=server.use_tls,
            timeout=server.timeout,
            local_hostname=server.local_hostname,
            tls_context=server.tls_context,
        )
        self.connects += 1
        await client.connect()  # closes itself when it fails
        return client

    async def _send_on(self, client: _Client, message: EmailMessage) -> None:
        client.mail_accepted = client.data_written = False
        try:
            await client.send_message(message)
        except BaseException as exc:  # an error, a timeout or a cancellation: the session's state is unknown
            client.close()
            if _unanswered(client, exc):
                raise UnansweredMessage(f"no answer after the end of DATA: {exc!r}") from exc
            raise
        if self._closed:
            client.close()
        else:
            self._idle.append(client)


async def _quit(client: _Client) -> None:
    try:
        await client.quit(timeout=QUIT_TIMEOUT_SECONDS)
    except (aiosmtplib.SMTPException, OSError):
        pass
    finally:
        client.close()
