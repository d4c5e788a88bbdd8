"""The ports the tests start servers on: never from the kernel's ephemeral range (where
outgoing connections take their local port), never shared between pytest workers, never
one a server already listens on."""

from __future__ import annotations

import socket

import pytest

from scripts import ports


def slice_of(monkeypatch: pytest.MonkeyPatch, worker: str, count: str) -> range:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", count)
    return ports._worker_slice()


def test_workers_get_disjoint_slices_below_the_ephemeral_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slices = [slice_of(monkeypatch, f"gw{i}", "3") for i in range(3)]
    taken = [set(s) for s in slices]
    assert all(len(s) > 1000 for s in taken)
    assert sum(len(s) for s in taken) == len(taken[0] | taken[1] | taken[2])
    assert max(slices[2]) < ports._ephemeral_low()
    assert min(slices[0]) >= 10_000


def test_a_port_with_a_listener_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    slice_of(monkeypatch, "gw0", "1")
    handed = ports._Ports()
    first = handed.take()
    again = ports._Ports()
    again._next = handed._slice.index(first)  # the same walk, starting at `first`
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", first))
        server.listen()
        assert again.take() != first
    # Without the listener the same probe hands the port out.
    again._next = handed._slice.index(first)
    assert again.take() == first


def test_successive_ports_differ() -> None:
    handed = ports._Ports()
    got = [handed.take() for _ in range(50)]
    assert len(set(got)) == 50
