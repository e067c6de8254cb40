"""notify's SMTP pool against a real aiosmtpd server started here: messages share a connection; a connection the
server dropped, or found dead at MAIL FROM, is replaced and the message delivered once; a failure after MAIL FROM
is raised as with a connection per email (named by email.send) and nothing is sent again, but one after the end
of DATA is an unknown outcome (EmailOutcomeUnknown); a pool of k uses at most k connections; STARTTLS or TLS and
AUTH are done again on every new connection."""

import asyncio
import ssl
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from harness import eventually, free_port

from plumbing.errors import NamedError, TransientError
from services.notify import email
from services.notify.smtp_pool import SmtpPool, SmtpServer

pytestmark = pytest.mark.integration

DEADLINE = 10.0
USER, PASSWORD = "notify", "s3cret"


@dataclass
class Delivered:
    subject: str
    connection: int
    tls: bool
    login: bytes | None


@dataclass
class Recorder:
    """The server's handler: records each message and the connection it came on; ``faults`` maps a phase
    (MAIL, RCPT, DATA) to what the server does there once: "close" drops the connection without answering
    (at DATA after the message was taken: the answer is lost, the message delivered), "garbage" answers a line
    that is no SMTP reply, "554" refuses, "421" answers 421."""

    delivered: list[Delivered] = field(default_factory=list)
    contents: list[bytes] = field(default_factory=list)
    """Each message as the server took it (its dot-stuffing undone, CRLF line endings)."""
    faults: dict[str, list[str]] = field(default_factory=dict)
    gate_at: int = 0
    """When set, DATA waits until this many messages are in DATA at once (proves concurrent connections)."""
    in_flight: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def _fault(self, phase: str, server: SMTP) -> str | None:
        pending = self.faults.get(phase)
        if not pending:
            return None
        fault = pending.pop(0)
        if fault == "close":
            assert server.transport is not None
            server.transport.close()
            return "250 OK"  # written to a closed transport: never seen by the client
        if fault == "garbage":
            return "OK, got it"
        if fault == "554":
            return "554 5.6.0 message refused"
        return "421 4.4.2 closing connection"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        envelope.mail_from = address
        return self._fault("MAIL", server) or "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        envelope.rcpt_tos.append(address)
        return self._fault("RCPT", server) or "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        subject = next(line for line in envelope.content.decode().splitlines() if line.startswith("Subject: "))
        login = session.auth_data if isinstance(session.auth_data, bytes) else None
        tls = server.transport is not None and server.transport.get_extra_info("ssl_object") is not None
        self.delivered.append(Delivered(subject[9:], id(server), tls, login))
        self.contents.append(envelope.original_content or envelope.content)
        if self.gate_at:
            self.in_flight += 1
            if self.in_flight >= self.gate_at:
                self.gate.set()
            await asyncio.wait_for(self.gate.wait(), DEADLINE)
        return self._fault("DATA", server) or "250 OK"


@dataclass
class Sink:
    controller: Controller
    recorder: Recorder
    opened: list[SMTP]
    lost: list[SMTP]

    @property
    def port(self) -> int:
        return int(self.controller.port)

    def subjects(self) -> list[str]:
        return [d.subject for d in self.recorder.delivered]

    def connections(self) -> int:
        return len(self.opened)

    async def drop_idle(self) -> None:
        """Close every open connection from the server's side, as its idle timeout would, and wait until done."""
        done = threading.Event()

        def close_all() -> None:
            for server in self.opened:
                if server.transport is not None:
                    server.transport.close()
            done.set()

        self.controller.loop.call_soon_threadsafe(close_all)
        assert await asyncio.to_thread(done.wait, DEADLINE)
        await eventually(self._all_lost, timeout=DEADLINE, what="the server to see its connections closed")

    async def _all_lost(self) -> bool:
        return all(server in self.lost for server in self.opened)


class CountingController(Controller):
    def __init__(self, *args: Any, opened: list[SMTP], lost: list[SMTP], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._opened, self._lost = opened, lost

    def factory(self) -> SMTP:
        opened, lost = self._opened, self._lost

        class Counting(SMTP):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                if self not in opened:  # STARTTLS calls it again for the same connection
                    opened.append(self)
                super().connection_made(transport)

            def connection_lost(self, error: Exception | None) -> None:
                lost.append(self)
                super().connection_lost(error)

        return Counting(self.handler, **self.SMTP_kwargs)


def start_sink(**smtp_kwargs: Any) -> Sink:
    recorder, opened, lost = Recorder(), [], []
    controller = CountingController(
        recorder, hostname="127.0.0.1", port=free_port(), opened=opened, lost=lost, **smtp_kwargs
    )
    controller.start()
    opened.clear()  # start() connects once to see the server up: not ours
    lost.clear()
    return Sink(controller, recorder, opened, lost)


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    started = start_sink()
    yield started
    started.controller.stop()


def server(port: int, **overrides: Any) -> SmtpServer:
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "username": None,
        "password": None,
        "start_tls": False,
        "use_tls": False,
        "timeout": DEADLINE,
        "local_hostname": "notify.test",
        "tls_context": None,
    }
    return SmtpServer(**(options | overrides))


@pytest.fixture
async def pool_of(sink: Sink) -> AsyncIterator[Callable[[int], SmtpPool]]:
    pools: list[SmtpPool] = []

    def make(size: int) -> SmtpPool:
        pools.append(SmtpPool(server(sink.port), size=size))
        return pools[-1]

    yield make
    for pool in pools:
        await pool.close()


def mail(subject: str) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "orders@orderflow.local", "ada@example.com", subject
    message.set_content("Your order is confirmed: 2 x Café crème.")
    return message


async def test_messages_share_one_connection(sink: Sink, pool_of: Callable[[int], SmtpPool]) -> None:
    pool = pool_of(4)
    for n in range(5):
        await email.send(mail(f"order {n}"), pool=pool)
    assert sink.subjects() == [f"order {n}" for n in range(5)]
    assert sink.connections() == 1 and pool.connects == 1
    assert len({d.connection for d in sink.recorder.delivered}) == 1


async def test_a_connection_the_server_closed_while_idle_is_replaced(
    sink: Sink, pool_of: Callable[[int], SmtpPool]
) -> None:
    pool = pool_of(4)
    await email.send(mail("first"), pool=pool)
    await sink.drop_idle()
    await email.send(mail("after the idle timeout"), pool=pool)
    assert sink.subjects() == ["first", "after the idle timeout"]
    assert sink.connections() == 2


@pytest.mark.parametrize("fault", ["close", "421"])
async def test_a_reused_connection_found_dead_at_mail_from_is_replaced_once(
    sink: Sink, pool_of: Callable[[int], SmtpPool], fault: str
) -> None:
    """The client still thinks the connection open; the server drops it (or answers 421) at MAIL FROM: nothing
    of the message was taken, so it goes once more on a new connection, and is delivered once."""
    pool = pool_of(4)
    await email.send(mail("first"), pool=pool)
    sink.recorder.faults["MAIL"] = [fault]
    await email.send(mail("second"), pool=pool)
    assert sink.subjects() == ["first", "second"]
    assert sink.connections() == 2 and pool.connects == 2


async def test_mail_from_failing_on_the_new_connection_too_is_raised(
    sink: Sink, pool_of: Callable[[int], SmtpPool]
) -> None:
    pool = pool_of(4)
    await email.send(mail("first"), pool=pool)
    sink.recorder.faults["MAIL"] = ["close", "close"]
    with pytest.raises(TransientError) as raised:
        await email.send(mail("second"), pool=pool)
    assert raised.value.error_name == email.SERVICE_CONNECTION
    assert sink.subjects() == ["first"] and pool.connects == 2


async def test_a_fresh_connection_is_not_tried_twice(sink: Sink, pool_of: Callable[[int], SmtpPool]) -> None:
    pool = pool_of(4)
    sink.recorder.faults["MAIL"] = ["421"]
    with pytest.raises(TransientError) as raised:
        await email.send(mail("throttled"), pool=pool)
    assert raised.value.error_name == "Service.Throttled"
    assert sink.subjects() == [] and pool.connects == 1


async def test_a_disconnect_after_mail_from_is_raised_and_not_sent_again(
    sink: Sink, pool_of: Callable[[int], SmtpPool]
) -> None:
    """As with a connection per email: a connection error (the handler records the channel failed); the
    message goes no second time through the pool, and the broken connection is not reused."""
    pool = pool_of(4)
    await email.send(mail("first"), pool=pool)
    sink.recorder.faults["RCPT"] = ["close"]
    with pytest.raises(TransientError) as raised:
        await email.send(mail("lost answer"), pool=pool)
    assert raised.value.error_name == email.SERVICE_CONNECTION
    assert sink.subjects() == ["first"] and pool.connects == 1
    await email.send(mail("next"), pool=pool)
    assert sink.subjects() == ["first", "next"] and pool.connects == 2


@pytest.mark.parametrize("fault", ["close", "garbage"])
async def test_no_answer_after_the_end_of_data_is_an_unknown_outcome(
    sink: Sink, pool_of: Callable[[int], SmtpPool], fault: str
) -> None:
    """The server took the whole message (and delivers it), then its answer is lost or unreadable: not a
    connection error, which would have the channel recorded failed and the message sent again, but
    EmailOutcomeUnknown; the pool does not send it again and does not reuse the connection."""
    pool = pool_of(4)
    await email.send(mail("first"), pool=pool)
    sink.recorder.faults["DATA"] = [fault]
    with pytest.raises(email.EmailOutcomeUnknown, match="may have accepted the mail"):
        await email.send(mail("lost answer"), pool=pool)
    assert sink.subjects() == ["first", "lost answer"] and pool.connects == 1
    await email.send(mail("next"), pool=pool)
    assert sink.subjects() == ["first", "lost answer", "next"] and pool.connects == 2


@pytest.mark.parametrize(("fault", "error"), [("554", "NotificationError"), ("421", "Service.Throttled")])
async def test_an_answer_refusing_the_data_is_named_as_before(
    sink: Sink, pool_of: Callable[[int], SmtpPool], fault: str, error: str
) -> None:
    """The server answered the end of DATA: it did not accept the message, so sending it again is safe."""
    pool = pool_of(4)
    sink.recorder.faults["DATA"] = [fault]
    with pytest.raises(NamedError) as raised:
        await email.send(mail("refused"), pool=pool)
    assert raised.value.error_name == error


async def test_the_message_arrives_as_written(sink: Sink, pool_of: Callable[[int], SmtpPool]) -> None:
    """DATA is our own (split at its two answers): the server takes exactly aiosmtplib's flattening, its lines
    starting with a period included (stuffed on the wire, unstuffed by the server)."""
    message = mail("periods")
    message.set_content(".a line starting with a period\n.\n..two\nlast line without newline")
    await email.send(message, pool=pool_of(1))
    written = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
    assert sink.recorder.contents == [written]


async def test_concurrent_sends_use_at_most_the_pool_size(sink: Sink, pool_of: Callable[[int], SmtpPool]) -> None:
    size, sends = 3, 12
    pool = pool_of(size)
    sink.recorder.gate_at = size  # the first messages wait in DATA until `size` connections carry one each
    await asyncio.wait_for(
        asyncio.gather(*(email.send(mail(f"order {n}"), pool=pool) for n in range(sends))), DEADLINE * 2
    )
    assert sorted(sink.subjects()) == sorted(f"order {n}" for n in range(sends))
    assert sink.connections() == size and pool.connects == size


async def test_the_pool_quits_its_connections_on_close(sink: Sink) -> None:
    pool = SmtpPool(server(sink.port), size=2)
    await asyncio.gather(*(pool.send(mail(f"order {n}")) for n in range(2)))
    await pool.close()
    await eventually(sink._all_lost, timeout=DEADLINE, what="the server to see the pool's connections closed")
    assert sink.connections() == 2


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.mark.parametrize("mode", ["starttls", "tls"])
async def test_tls_and_auth_are_done_again_on_a_new_connection(ca: trustme.CA, mode: str) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (USER.encode(), PASSWORD.encode())
        return AuthResult(success=ok, auth_data=data.login if ok else None)

    # aiosmtpd offers AUTH under implicit TLS only with auth_require_tls off; the transport is TLS all the same
    tls: dict[str, Any] = {"tls_context": server_context, "require_starttls": True, "auth_require_tls": True}
    if mode == "tls":
        tls = {"ssl_context": server_context, "auth_require_tls": False}
    sink = start_sink(authenticator=authenticate, **tls)
    pool = SmtpPool(
        server(
            sink.port,
            username=USER,
            password=PASSWORD,
            start_tls=mode == "starttls",
            use_tls=mode == "tls",
            tls_context=client_context,
        ),
        size=1,
    )
    try:
        await email.send(mail("first"), pool=pool)
        await email.send(mail("same connection"), pool=pool)
        await sink.drop_idle()
        await email.send(mail("new connection"), pool=pool)
    finally:
        await pool.close()
        sink.controller.stop()
    assert sink.subjects() == ["first", "same connection", "new connection"]
    assert sink.connections() == 2
    assert all(d.tls and d.login == USER.encode() for d in sink.recorder.delivered)
