"""Ports for servers that tests and jobs start on this machine.

A port the kernel picks (bind to port 0) comes from the ephemeral range, the same
range it hands out to every outgoing connection. A server stopped and started
again on its old port (SeaweedFS in an outage) then finds it taken now and then
by someone's connection: seen in a chaos run, where the restart failed and took
storage away for good. So ports come from below the ephemeral range instead,
which only explicit choices use.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterable
from pathlib import Path

#: Ray's workers take ports 10002-19999 by default: start above them.
LOWEST = 20000


def ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_ports(count: int, avoid: Iterable[int] = (), offset: int = 0, attempts: int = 1000) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now, below the ephemeral range and not
    in ``avoid``; with ``offset``, ``port + offset`` is free (and below the range) too."""
    taken = set(avoid)
    high = ephemeral_start() - 1 - offset
    picked: list[int] = []
    for _ in range(attempts):
        if len(picked) == count:
            return picked
        port = random.randint(LOWEST, high)
        pair = {port, port + offset}
        if taken & pair or not all(is_free(p) for p in pair):
            continue
        picked.append(port)
        taken |= pair
    if len(picked) == count:
        return picked
    raise RuntimeError(f"found only {len(picked)} of {count} free ports in {attempts} attempts")
