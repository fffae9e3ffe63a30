"""Free local ports for listeners that start a moment later: brokers, workers' metrics servers.

A port the kernel hands out for ``bind(0)`` comes from the ephemeral range, the same range it
draws from for every outgoing connection's local port. Between the probe and the listener's
own bind (a JVM takes seconds to get there) any connection on the machine may take it, and the
listener dies on "Address already in use": CI lost a secured broker that way, its controller
port taken while it started. A broker that is down is worse off: its clients keep reconnecting,
and Linux may give one of those connections the broker's own port as its local port (a TCP
self-connect), so the broker cannot bind it again. So the ports come from outside that range,
where only an explicit bind lands.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: Linux's default, for systems without the file (IANA's range, 49152-65535, lies inside it).
_DEFAULT_EPHEMERAL = (32768, 60999)
#: Below this lie the well-known and commonly configured ports (9092, 9090, 3000, 8080, ...).
_LOWEST = 10000
_TRIES = 200
# Not the module-level generator: pytest-randomly seeds it alike in every xdist worker, which
# would send parallel test processes after the same ports in the same order.
_RNG = random.SystemRandom()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports, inclusive."""
    try:
        low, high = (int(part) for part in _RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return _DEFAULT_EPHEMERAL
    return low, high


def is_ephemeral(port: int) -> bool:
    low, high = ephemeral_range()
    return low <= port <= high


def bindable(port: int, host: str = "127.0.0.1", *, reuse_addr: bool = False) -> bool:
    """Whether ``port`` can be bound on ``host`` right now. ``reuse_addr``: as Java's listeners
    bind (SO_REUSEADDR), so a port whose old connections linger in TIME_WAIT (a broker that
    closed its clients' connections on a clean shutdown) counts as free; without it a bounced
    broker's port looked taken for ~30 s."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if reuse_addr:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except (OSError, OverflowError):  # OverflowError: past 65535
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port that can be bound on ``host`` now and lies outside the ephemeral range; one the
    kernel picks only if the range leaves no room or nothing outside it is free."""
    low, high = ephemeral_range()
    spans = [span for span in (range(_LOWEST, low), range(high + 1, 65536)) if len(span) > 0]
    total = sum(len(span) for span in spans)
    for _ in range(_TRIES if total else 0):
        index = _RNG.randrange(total)
        for span in spans:
            if index < len(span):
                port = span[index]
                break
            index -= len(span)
        if bindable(port, host):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
