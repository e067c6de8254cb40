"""An installation's listening ports stay out of the kernel's ephemeral range, where an outgoing connection
could take one between the choice and the bind (orderctl/sandbox.py)."""

import socket
from pathlib import Path

from orderctl.sandbox import free_port_block


def ephemeral() -> range:
    low, high = (int(p) for p in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return range(low, high + 1)


def test_blocks_are_free_and_outside_the_ephemeral_range() -> None:
    for _ in range(20):
        base = free_port_block(9)
        block = range(base, base + 9)
        assert not set(block) & set(ephemeral()), block
        with socket.socket() as s:
            s.bind(("127.0.0.1", base))  # free when handed out
