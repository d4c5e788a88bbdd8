"""Free loopback ports for the servers the demo, the tests and the benchmarks start.

Asking the kernel for port 0 and closing the socket hands back a port from the ephemeral
range, and that range is exactly where the kernel also picks the local port of every
outgoing connection. Between closing the probe and the server binding the port, any
client in any process (another pytest worker's agent, a broker's bridge) can be given it,
and the server then fails with "address in use". So the ports come from below the
ephemeral range instead, where the kernel never picks, and parallel pytest workers each
walk their own slice of it, so two workers never hand out the same port.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

# Below this are the well-known and registered ports of services a machine may run.
_LOWEST = 10_000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_low() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def _worker_slice() -> range:
    """This process's own ports: its pytest-xdist worker's share of the range."""
    top = _ephemeral_low()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")
    index = int(worker) if worker.isdigit() else 0
    workers = max(int(count) if count.isdigit() else 1, index + 1)
    width = (top - _LOWEST) // workers
    return range(_LOWEST + index * width, _LOWEST + (index + 1) * width)


class _Ports:
    def __init__(self) -> None:
        self._slice = _worker_slice()
        # A random start: two test runs on one machine do not walk in step.
        self._next = secrets.randbelow(len(self._slice)) if len(self._slice) else 0

    def take(self) -> int:
        for _ in range(len(self._slice)):
            port = self._slice[self._next]
            self._next = (self._next + 1) % len(self._slice)
            if _nothing_listens(port):
                return port
        return _kernel_port()  # no range below the ephemeral one (an unusual setting)


def _nothing_listens(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _kernel_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


_PORTS: _Ports | None = None


def free_port() -> int:
    """A TCP port on loopback that nothing listens on, that this process has not handed
    out lately, and that no outgoing connection or other pytest worker will take first."""
    global _PORTS
    if _PORTS is None:
        _PORTS = _Ports()
    return _PORTS.take()
