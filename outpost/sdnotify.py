"""The systemd notify protocol, spoken directly: one datagram per message to the Unix
socket named by `$NOTIFY_SOCKET` (sd_notify(3)).

A daemon under `Type=notify` says `READY=1` when it serves, `STATUS=...` for
`systemctl status`, `WATCHDOG=1` at least once per `$WATCHDOG_USEC` (or systemd kills
and restarts it), and `STOPPING=1` when it begins to shut down. Outside systemd (no
`$NOTIFY_SOCKET`) every call does nothing, so the daemons need no mode of their own.

A few lines of code rather than a dependency: the protocol is one `sendto`, and the
maintained libraries either wrap libsystemd (a C build on every device) or add nothing.
Sending never blocks and never raises into the daemon: a lost status line must not take
the service down (a lost `WATCHDOG=1` is what the watchdog is for).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Final

logger = logging.getLogger(__name__)

ENVIRONMENT: Final = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
# How often the status line is recomputed; it is sent only when it changed.
STATUS_PERIOD_S: Final = 5.0


def encode(fields: Mapping[str, str]) -> bytes:
    """The datagram for `fields`: `KEY=value` lines. A value is one line of the
    protocol, so newlines in it (an error message quoted in a status) become spaces."""
    lines = []
    for key, value in fields.items():
        if not key or not key.isupper() or "=" in key:
            raise ValueError(f"not a notify field name: {key!r}")
        lines.append(f"{key}={' '.join(str(value).splitlines())}")
    return ("\n".join(lines) + "\n").encode()


def address(value: str) -> str | None:
    """The socket address `$NOTIFY_SOCKET` names: a path, or an abstract socket written
    `@name` (bound as a leading NUL); None when it names neither."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # systemd also allows vsock:, which the daemons have no use for


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds within which systemd wants `WATCHDOG=1`, or None when it watches no
    process or another one (`$WATCHDOG_PID` names the process it watches)."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    watched = environ.get("WATCHDOG_PID")
    if watched is not None and watched.strip() != str(pid):
        return None
    return usec / 1_000_000


class Notifier:
    """Sends notify messages to the service manager, if there is one."""

    def __init__(self, address: str | None, *, watchdog_s: float | None = None) -> None:
        self.address = address
        self.watchdog_s = watchdog_s if address else None
        self._socket: socket.socket | None = None
        self._failed = False
        self._status = ""

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Read `$NOTIFY_SOCKET` and the watchdog settings, then remove them from the
        environment (as sd_notify's `unset_environment` does): a child such as the hub's
        Mosquitto, built with systemd support, would otherwise say READY=1 for us."""
        env = os.environ if environ is None else environ
        values = {name: env.pop(name) for name in ENVIRONMENT if name in env}
        where = address(values.get("NOTIFY_SOCKET", ""))
        return cls(where, watchdog_s=watchdog_interval(values, os.getpid()))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str) -> bool:
        """Send one message; return whether it left (False outside systemd or on error)."""
        if self.address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._socket.setblocking(False)
            self._socket.sendto(encode(fields), self.address)
        except (OSError, ValueError) as exc:  # no listener, a full queue, a bad field
            if not self._failed:
                self._failed = True
                logger.debug("could not notify the service manager at %r: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """The daemon serves: systemd finishes starting it and starts what waits on it."""
        fields = {"READY": "1"}
        if status is not None:
            fields["STATUS"] = self._status = status
        return self.send(**fields)

    def status(self, text: str) -> bool:
        """Show `text` in `systemctl status`; sent only when it changed."""
        if text == self._status:
            return False
        self._status = text
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        """The daemon is alive: restart the watchdog timer."""
        return self.send(WATCHDOG="1") if self.watchdog_s else False

    def stopping(self, status: str = "stopping") -> bool:
        """The daemon has begun to shut down."""
        self._status = status
        return self.send(STOPPING="1", STATUS=status)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def keep_alive(self) -> None:
        """Say `WATCHDOG=1` every half interval, from the event loop: a loop that stalls
        (a blocking call, a busy handler) stops saying it, and systemd restarts us.
        Returns at once when there is no watchdog."""
        if not self.watchdog_s:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(self.watchdog_s / 2)

    async def report(self, describe: Callable[[], Awaitable[str]]) -> None:
        """Keep the status line current: `describe` every few seconds, sent on change.
        Returns at once outside systemd."""
        if not self.enabled:
            return
        while True:
            await asyncio.sleep(STATUS_PERIOD_S)
            try:
                text = await describe()
            except Exception as exc:  # a busy database: keep the last line, try again
                logger.debug("no status line this time: %s", exc)
                continue
            self.status(text)
