"""The notify protocol: what goes in a datagram, where it goes, and that nothing here
can stop the daemon."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Iterator

import pytest

from outpost import sdnotify
from outpost.sdnotify import Notifier


@pytest.fixture
def manager() -> Iterator[tuple[str, socket.socket]]:
    """The service manager's end: an abstract datagram socket and its `@name`."""
    name = f"@outpost-unit-{secrets.token_hex(6)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name[1:])
    sock.settimeout(2)  # a deadline for each read, never a sleep
    yield name, sock
    sock.close()


def test_encode_writes_one_line_per_field() -> None:
    assert sdnotify.encode({"READY": "1", "STATUS": "up"}) == b"READY=1\nSTATUS=up\n"
    # A value is one protocol line: a quoted error's newlines cannot forge a field.
    assert sdnotify.encode({"STATUS": "lost\nREADY=1"}) == b"STATUS=lost READY=1\n"
    for bad in ("", "ready", "A=B"):
        with pytest.raises(ValueError, match="not a notify field name"):
            sdnotify.encode({bad: "1"})


def test_address_takes_paths_and_abstract_names() -> None:
    assert sdnotify.address("/run/systemd/notify") == "/run/systemd/notify"
    assert sdnotify.address("@name") == "\0name"
    for other in ("", "@", "relative/path", "vsock:2:1234"):
        assert sdnotify.address(other) is None


def test_watchdog_interval_is_for_this_process_only() -> None:
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}, 42) == 30.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "42"}, 42) == 0.5
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "7"}, 42) is None
    for usec in ("", "0", "-1", "soon"):
        assert sdnotify.watchdog_interval({"WATCHDOG_USEC": usec}, 42) is None
    assert sdnotify.watchdog_interval({}, 42) is None


def test_from_environ_reads_and_removes_the_variables() -> None:
    env = {
        "NOTIFY_SOCKET": "@x",
        "WATCHDOG_USEC": "2000000",
        "WATCHDOG_PID": str(os.getpid()),
        "PATH": "/bin",
    }
    notifier = Notifier.from_environ(env)
    assert (notifier.address, notifier.watchdog_s) == ("\0x", 2.0)
    assert env == {"PATH": "/bin"}  # a child (Mosquitto) must not answer for us


async def test_without_a_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_s is None
    assert not notifier.ready("up")
    assert not notifier.status("x")
    assert not notifier.watchdog()
    assert not notifier.stopping()
    await asyncio.wait_for(notifier.keep_alive(), 1)  # returns at once
    await asyncio.wait_for(notifier.report(_never), 1)


async def _never() -> str:
    raise AssertionError("not called outside systemd")


def test_messages_reach_an_abstract_socket(manager: tuple[str, socket.socket]) -> None:
    name, sock = manager
    notifier = Notifier(sdnotify.address(name), watchdog_s=1.0)
    try:
        assert notifier.ready("serving")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving\n"
        assert not notifier.status("serving")  # unchanged: not sent again
        assert notifier.status("link down")
        assert sock.recv(4096) == b"STATUS=link down\n"
        assert notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1\n"
        assert notifier.stopping()
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping\n"
    finally:
        notifier.close()


def test_no_watchdog_message_when_systemd_watches_none(
    manager: tuple[str, socket.socket],
) -> None:
    name, sock = manager
    notifier = Notifier(sdnotify.address(name))
    assert not notifier.watchdog()
    notifier.status("x")
    assert sock.recv(4096) == b"STATUS=x\n"  # the first datagram is the status, no ping
    notifier.close()


def test_a_missing_listener_never_raises_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notifier = Notifier(f"\0outpost-nobody-{secrets.token_hex(6)}", watchdog_s=1.0)
    with caplog.at_level(logging.DEBUG, logger="outpost.sdnotify"):
        assert not notifier.ready("up")
        assert not notifier.watchdog()
        assert not notifier.stopping()
    assert len([r for r in caplog.records if r.name == "outpost.sdnotify"]) == 1
    assert caplog.records[0].levelno == logging.DEBUG
    notifier.close()


async def test_keep_alive_pings_at_half_the_interval(
    manager: tuple[str, socket.socket],
) -> None:
    name, sock = manager
    sock.setblocking(False)
    # Pings a second apart: room for a loaded machine's late wake-ups, still far from
    # pings at the whole interval.
    notifier = Notifier(sdnotify.address(name), watchdog_s=2.0)
    pinging = asyncio.create_task(notifier.keep_alive())
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        for _ in range(4):
            assert await asyncio.wait_for(loop.sock_recv(sock, 4096), 10) == b"WATCHDOG=1\n"
        # The first at once, then one every 1 s: 3 s, where pings at the interval take 6.
        assert 2.5 <= loop.time() - started < 5.0
    finally:
        pinging.cancel()
        notifier.close()
