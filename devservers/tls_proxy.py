"""A TLS-terminating TCP proxy: clients speak TLS to it, it forwards the plain bytes to an upstream.

Put in front of the local RabbitMQ (127.0.0.1:5672) it is an amqps:// endpoint with a certificate of our choosing,
so the processes' TLS client side (certificate and host name checked against a CA bundle) is tested without
reconfiguring the shared broker. In production RabbitMQ terminates TLS itself (deploy/k8s/overlays/production).

Run: ``python -m devservers.tls_proxy --listen 5671 --upstream 127.0.0.1:5672 --cert server.pem --key server.key``
(``--cert`` may hold the chain); tests start :class:`TlsProxy` in their own event loop.
"""

import argparse
import asyncio
import contextlib
import logging
import ssl

log = logging.getLogger("devservers.tls_proxy")
READ_SIZE = 65536


class TlsProxy:
    """Accept TLS on ``host:port`` (0: a free port, see ``port`` after ``start``) and forward to ``upstream``."""

    def __init__(self, context: ssl.SSLContext, upstream: tuple[str, int], *, host: str = "127.0.0.1", port: int = 0):
        self.context = context
        self.upstream = upstream
        self.host = host
        self.port = port
        #: Connections whose TLS handshake completed (a client that refused our certificate is not counted).
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        # A failed handshake never reaches _serve: asyncio logs it and closes the connection.
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            log.warning("upstream %s:%s not reachable: %s", *self.upstream, exc)
            client_writer.close()
            return
        pumps = [
            asyncio.create_task(_pump(client_reader, upstream_writer)),
            asyncio.create_task(_pump(upstream_reader, client_writer)),
        ]
        self._tasks.update(pumps)
        try:
            # Either side closing ends the connection: the other gets its close, as with a direct connection.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
                self._tasks.discard(task)
            for writer in (client_writer, upstream_writer):
                with contextlib.suppress(Exception):
                    writer.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            await writer.drain()


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


async def _main(args: argparse.Namespace) -> None:
    host, _, port = args.upstream.rpartition(":")
    proxy = TlsProxy(server_context(args.cert, args.key), (host, int(port)), host=args.host, port=args.listen)
    await proxy.start()
    log.info("TLS on %s:%s -> %s", args.host, proxy.port, args.upstream)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, default=5671)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--upstream", default="127.0.0.1:5672")
    parser.add_argument("--cert", required=True, help="PEM: the server certificate (and its chain)")
    parser.add_argument("--key", required=True, help="PEM: the server's private key")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
