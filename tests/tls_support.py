"""TLS endpoints the tests set up with a CA they make (trustme): a private PostgreSQL cluster with ssl on, and
an amqps:// proxy in front of the shared RabbitMQ. Neither shared server is reconfigured.

The cluster is initdb'd in a directory of its own, listens on a free port (TCP with TLS only: pg_hba has
``hostssl`` and no ``host`` line) and a unix socket in that directory, and runs as the ``postgres`` OS user
(initdb refuses root). Its roles log in without a password (trust): what is under test is the transport.
"""

import contextlib
import glob
import os
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import trustme

from devservers.tls_proxy import TlsProxy
from orderctl.sandbox import free_port

#: The name the servers' certificates carry; 127.0.0.1 is left out, so connecting by address is a wrong name.
SERVER_NAME = "localhost"
PG_OS_USER = "postgres"


def pg_bin(tool: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    if not found:
        raise RuntimeError(f"no {tool} under /usr/lib/postgresql/*/bin")
    return found[-1]


def ca_file(ca: trustme.CA, directory: Path, name: str = "ca.crt") -> str:
    path = directory / name
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@dataclass
class PrivatePostgres:
    port: int
    directory: Path

    def url(self, database: str = "postgres", *, user: str = "postgres", host: str = SERVER_NAME, **query: str) -> str:
        params = "&".join(f"{k}={v}" for k, v in query.items())
        return f"postgresql://{user}@{host}:{self.port}/{database}" + (f"?{params}" if params else "")


def _as_postgres(*command: str) -> None:
    subprocess.run(["runuser", "-u", PG_OS_USER, "--", *command], check=True, capture_output=True, timeout=120)


@contextlib.contextmanager
def private_postgres(ca: trustme.CA) -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster serving a certificate for ``SERVER_NAME`` signed by ``ca``; removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="orderflow-pg-tls-"))
    data = directory / "data"
    try:
        cert = ca.issue_cert(SERVER_NAME)
        cert.cert_chain_pems[0].write_to_path(str(directory / "server.crt"))
        cert.private_key_pem.write_to_path(str(directory / "server.key"))
        ca.cert_pem.write_to_path(str(directory / "ca.crt"))
        os.chmod(directory / "server.key", 0o600)
        shutil.chown(directory, PG_OS_USER, PG_OS_USER)
        for name in ("server.crt", "server.key", "ca.crt"):
            shutil.chown(directory / name, PG_OS_USER, PG_OS_USER)
        _as_postgres(pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync")
        (data / "pg_hba.conf").write_text("local all all trust\nhostssl all all all trust\n")
        port = free_port()
        options = {
            "port": port,
            "listen_addresses": SERVER_NAME,
            "unix_socket_directories": str(directory),
            "ssl": "on",
            "ssl_cert_file": directory / "server.crt",
            "ssl_key_file": directory / "server.key",
            "ssl_ca_file": directory / "ca.crt",
            "fsync": "off",
            "max_connections": 100,
        }
        with (data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = '{value}'\n" for key, value in options.items())
        _as_postgres(pg_bin("pg_ctl"), "-D", str(data), "-l", str(directory / "server.log"), "-w", "-t", "60", "start")
        try:
            yield PrivatePostgres(port=port, directory=directory)
        finally:
            _as_postgres(pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.asynccontextmanager
async def amqps_proxy(ca: trustme.CA, upstream: tuple[str, int]) -> AsyncIterator[TlsProxy]:
    """An amqps:// endpoint (a certificate for ``SERVER_NAME`` signed by ``ca``) forwarding to ``upstream``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(SERVER_NAME).configure_cert(context)
    proxy = TlsProxy(context, upstream)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
