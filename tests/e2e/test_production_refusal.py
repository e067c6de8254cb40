"""A real process in production mode with a development default: it exits non-zero with the one line naming the
setting on stderr, and connects nothing first (the broker and database addresses it was given hear nothing)."""

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture
def listeners() -> Iterator[dict[str, socket.socket]]:
    """Two listening sockets standing in for the broker and the database: any connection would be queued."""
    found = {}
    for name in ("amqp", "db"):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        found[name] = sock
    yield found
    for sock in found.values():
        sock.close()


def connections(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


@pytest.mark.parametrize(
    ("module", "default", "line"),
    [
        (
            "services.payment",
            {"STRIPE_API_KEY": "sk_test_orderflow_local"},
            "refusing to start in production: STRIPE_API_KEY is a test key (sk_test_...): it charges nobody",
        ),
        (
            "orchestrator",
            {"AMQP_URL": "amqp://guest:guest@127.0.0.1:{amqp}/"},
            "refusing to start in production: AMQP_URL is plain AMQP (amqp://)",
        ),
    ],
)
def test_a_process_refuses_to_start_with_one_line(
    listeners: dict[str, socket.socket], module: str, default: dict[str, str], line: str
) -> None:
    ports = {name: sock.getsockname()[1] for name, sock in listeners.items()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "AMQP_", "DATABASE_", "PG"))}
    env.update(
        {
            "ORDERFLOW_ENVIRONMENT": "production",
            "AMQP_URL": f"amqps://guest:guest@127.0.0.1:{ports['amqp']}/",
            "DATABASE_URL": f"postgresql://orderflow_payment@127.0.0.1:{ports['db']}/orderflow_payment"
            "?sslmode=verify-full",
            "STRIPE_API_KEY": "sk_live_51Hxyz",
            "STRIPE_API_BASE": "",
            "STRIPE_WEBHOOK_SECRET": "whsec_9f8e7d",
            "HTTP_PORT": "0",
        }
    )
    env.update({k: v.format(**ports) for k, v in default.items()})
    done = subprocess.run([sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr  # one line, no traceback
    assert done.stderr.startswith(line), done.stderr
    assert done.stdout == ""
    assert {name: connections(sock) for name, sock in listeners.items()} == {"amqp": 0, "db": 0}
