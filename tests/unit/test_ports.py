"""deploy.ports: free ports a listener can still bind after a moment, away from the kernel's
range for outgoing connections."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from deploy import ports


def _kernel_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


@pytest.mark.skipif(not Path("/proc/sys/net/ipv4/ip_local_port_range").exists(), reason="Linux only")
def test_free_ports_lie_outside_the_ephemeral_range_and_can_be_bound() -> None:
    low, high = _kernel_range()
    assert ports.ephemeral_range() == (low, high)
    drawn = {ports.free_port() for _ in range(50)}
    for port in drawn:
        assert not low <= port <= high
        assert 10000 <= port <= 65535
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
    # Drawn at random, not walked in order: parallel test processes must not collide.
    assert len(drawn) > 40


def test_a_port_in_use_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        held.listen()
        # Only the held port lies outside the "ephemeral range": every draw lands on it and is
        # refused, so the kernel's own pick is the answer, and it is another port.
        monkeypatch.setattr(ports, "_LOWEST", taken)
        monkeypatch.setattr(ports, "ephemeral_range", lambda: (taken + 1, 65535))
        assert not ports.bindable(taken)
        port = ports.free_port()
        assert port != taken
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_without_the_kernel_file_linux_defaults_apply(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ports, "_RANGE_FILE", tmp_path / "absent")
    assert ports.ephemeral_range() == (32768, 60999)
    assert ports.is_ephemeral(40000) and not ports.is_ephemeral(9093)
