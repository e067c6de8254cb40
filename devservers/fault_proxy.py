"""A fault-injecting TCP proxy for the dev servers: it loses, delays or refuses one exchange on a live connection.

Put in front of the Stripe server, the SMTP sink or the SMS server, it forwards bytes both ways and can, for
the exchanges a :class:`Fault` matches:

- ``drop_answer``: forward the request, let the upstream act and start answering, then reset the client's
  connection without forwarding the answer (the charge exists, the mail was delivered; the client saw an error);
- ``delay``: forward the request, hold the upstream's answer ``delay_seconds``, then forward it;
- ``reset_before``: reset the client's connection when its request arrives; the request's matching bytes and
  everything after them never reach the upstream, so the upstream does nothing.

An exchange is a burst of client bytes followed by the upstream's answer on the same connection, so keep-alive
HTTP clients and an SMTP session are faulted request by request. Bytes the upstream sends before any client
bytes (SMTP's 220 greeting) belong to no exchange and are never faulted. Resets are real RSTs (SO_LINGER 0).

Run: ``python -m devservers.fault_proxy --listen 12112 --upstream 127.0.0.1:12111 [--control 12113]``; the
control port answers GET /stats, GET /faults, POST /faults (a Fault as JSON, ``match`` a string) and
DELETE /faults.
"""

import argparse
import asyncio
import contextlib
import json
import logging
import socket
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

log = logging.getLogger("devservers.fault_proxy")
FaultKind = Literal["drop_answer", "delay", "reset_before"]
#: Bytes of an exchange's request kept between reads, so a ``match`` split across two reads is still found.
MATCH_WINDOW = 4096
READ_SIZE = 65536


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    """What happens to a matching exchange."""
    times: int | None = 1
    """How many matching exchanges it applies to; None: every one, until ``clear()``."""
    delay_seconds: float = 0.0
    """How long a ``delay`` holds the answer."""
    match: bytes | None = None
    """Applies only to exchanges whose request bytes contain this (b"POST /v1/payment_intents", or SMTP's end of
    DATA b"\\r\\n.\\r\\n"); None: every exchange."""

    def __post_init__(self) -> None:
        if self.kind not in get_args(FaultKind):
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be at least 1, or None for always")
        if self.delay_seconds < 0 or (self.kind == "delay") != (self.delay_seconds > 0):
            raise ValueError("delay_seconds must be positive for a delay, and only for a delay")
        if self.match is not None and not 0 < len(self.match) <= MATCH_WINDOW:
            raise ValueError(f"match must be 1 to {MATCH_WINDOW} bytes")


@dataclass
class ProxyStats:
    """What the proxy did, so a test can assert that its fault really happened."""

    connections: int = 0
    exchanges: int = 0
    drop_answer: int = 0
    delay: int = 0
    reset_before: int = 0
    upstream_refused: int = 0


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), as a crashed peer or a middlebox does, rather than a polite FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass
class _Armed:
    fault: Fault
    left: int | None  # exchanges it still applies to; None: unlimited


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream connection; ``requesting`` is true from a request's first bytes
    until its answer's first bytes, and ``fault`` is what the current exchange is doomed to."""

    client: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    requesting: bool = False
    fault: Fault | None = None
    window: bytes = b""

    def reset(self) -> None:
        _reset(self.client[1])
        _reset(self.upstream[1])


@dataclass
class FaultProxy:
    """``async with FaultProxy("127.0.0.1", 0, host, port) as proxy: proxy.add(Fault("drop_answer"))``; point the
    client at ``proxy.port``. Runs in the caller's event loop."""

    listen_host: str
    listen_port: int
    upstream_host: str
    upstream_port: int
    stats: ProxyStats = field(default_factory=ProxyStats)
    _faults: list[_Armed] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _links: dict[_Link, asyncio.Task[Any]] = field(default_factory=dict)

    @property
    def port(self) -> int:
        """The bound port (``listen_port`` 0 picks a free one)."""
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def _up(self) -> str:
        return f"{self.upstream_host}:{self.upstream_port}"

    @property
    def faults(self) -> list[tuple[Fault, int | None]]:
        """The faults still armed, each with how many exchanges it has left (None: unlimited)."""
        return [(armed.fault, armed.left) for armed in self._faults]

    def add(self, fault: Fault) -> None:
        """Arm ``fault``; faults are tried in the order added, and the first that matches an exchange takes it."""
        self._faults.append(_Armed(fault, fault.times))

    def clear(self) -> None:
        self._faults.clear()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.listen_host, self.listen_port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._links.values())
        for link, task in list(self._links.items()):
            link.reset()
            task.cancel()  # a held answer is sleeping: it would outlive the proxy
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> "FaultProxy":
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def _take(self, window: bytes) -> Fault | None:
        for armed in self._faults:
            if armed.fault.match is None or armed.fault.match in window:
                if armed.left is not None:
                    armed.left -= 1
                    if armed.left == 0:
                        self._faults.remove(armed)
                return armed.fault
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        try:
            upstream = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            self.stats.upstream_refused += 1  # the client sees what a dead upstream would show it: a reset
            _reset(writer)
            return
        link = _Link((reader, writer), upstream)
        task = asyncio.current_task()
        assert task is not None
        self._links[link] = task
        try:
            await asyncio.gather(self._requests(link), self._answers(link))
        finally:
            self._links.pop(link, None)
            for _, w in (link.client, link.upstream):
                w.close()

    async def _requests(self, link: _Link) -> None:
        reader, (_, upstream) = link.client[0], link.upstream
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await reader.read(READ_SIZE):
                if not link.requesting:  # the upstream answered the last exchange (or none yet): a new one
                    link.requesting, link.fault, link.window = True, None, b""
                    self.stats.exchanges += 1
                window = link.window + chunk
                link.window = window[-MATCH_WINDOW:]
                if link.fault is None:
                    link.fault = self._take(window)
                if link.fault is not None and link.fault.kind == "reset_before":
                    self.stats.reset_before += 1
                    log.info("reset before the request reached %s", self._up)
                    link.reset()
                    return
                upstream.write(chunk)
                await upstream.drain()
            if upstream.can_write_eof():  # the client is done sending; its last answer may still come back
                upstream.write_eof()

    async def _answers(self, link: _Link) -> None:
        reader, (_, client) = link.upstream[0], link.client
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await reader.read(READ_SIZE):
                if link.requesting:  # the first bytes of this exchange's answer: the upstream has acted
                    link.requesting, fault, link.fault = False, link.fault, None
                    if fault is not None and fault.kind == "drop_answer":
                        self.stats.drop_answer += 1
                        log.info("dropped the answer of %s", self._up)
                        link.reset()
                        return
                    if fault is not None and fault.kind == "delay":
                        self.stats.delay += 1
                        log.info("holding the answer of %s %.1fs", self._up, fault.delay_seconds)
                        await asyncio.sleep(fault.delay_seconds)
                client.write(chunk)
                await client.drain()
            client.close()


# -- the command line and its control port -------------------------------------------------------
def fault_from_json(data: dict[str, Any]) -> Fault:
    match = data.get("match")
    return Fault(
        kind=data["kind"],
        times=data.get("times", 1),
        delay_seconds=float(data.get("delay_seconds", 0.0)),
        match=match.encode() if isinstance(match, str) else None,
    )


async def _control(proxy: FaultProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One HTTP/1.0-style request per connection: enough for curl and the tests."""
    status, answer = 200, {}
    try:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        method, path = head.split(" ", 2)[:2]
        lengths = [int(h.split(":", 1)[1]) for h in head.lower().split("\r\n") if h.startswith("content-length:")]
        length = lengths[0] if lengths else 0
        body = json.loads(await reader.readexactly(length)) if length else {}
        if method == "POST" and path == "/faults":
            proxy.add(fault_from_json(body))
        elif method == "DELETE" and path == "/faults":
            proxy.clear()
        elif not (method == "GET" and path in ("/faults", "/stats")):
            status, answer = 404, {"error": f"no route {method} {path}"}
        if status == 200:
            faults = [{**asdict(f), "match": f.match and f.match.decode("latin-1"), "left": n} for f, n in proxy.faults]
            answer = {"stats": asdict(proxy.stats), "faults": faults}
    except (ValueError, KeyError, TypeError, asyncio.IncompleteReadError) as exc:
        status, answer = 400, {"error": str(exc)}
    data = json.dumps(answer).encode()
    writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % (status, len(data)))
    writer.write(b"Connection: close\r\n\r\n" + data)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()


async def serve(listen: int, upstream: str, control: int | None, host: str) -> None:
    upstream_host, _, upstream_port = upstream.rpartition(":")
    async with FaultProxy(host, listen, upstream_host or "127.0.0.1", int(upstream_port)) as proxy:
        log.info("fault proxy on %s:%d -> %s", host, proxy.port, upstream)
        if control is None:
            await asyncio.Event().wait()
        server = await asyncio.start_server(lambda r, w: _control(proxy, r, w), host, control)
        async with server:
            await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="HOST:PORT")
    parser.add_argument("--control", type=int, default=None, help="HTTP control port (optional)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.listen, args.upstream, args.control, args.host))


if __name__ == "__main__":
    main()
