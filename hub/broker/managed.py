"""The managed Mosquitto: where its files are, a supervisor that keeps it running, and
how a hub (or a command beside it) makes it reload. What it is told (mosquitto.conf and
the ACL) is hub/broker/mosquittoconf.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from hub.broker.mosquittoconf import BrokerFiles, write_config
from hub.paths import HubPaths
from outpost import backoff, files

logger = logging.getLogger(__name__)

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
RESTART_BACKOFF_CAP = 10.0
RELOAD_TIMEOUT = 5.0
# Mosquitto's log grows by about 244 bytes per connection and never shrinks: the hub
# moves it aside (one old copy kept) past `log_max_bytes`, and Mosquitto reopens it.
LOG_CHECK_S = 5.0
# What Mosquitto logs when it handles SIGHUP, before it re-reads its certificates and
# CRL in the same pass of its loop: a connection it accepts after this line sees them.
RELOADED_LINE = b"Reloading config."


class BrokerStartError(RuntimeError):
    """Mosquitto did not start listening; the message carries its last log lines."""


def crl_file(paths: HubPaths) -> Path:
    """The certificate revocation list the broker checks client certificates against."""
    return BrokerFiles.managed(paths).crl


def pid_file(paths: HubPaths) -> Path:
    """Where the hub keeps the pid of its running Mosquitto, for `outpost-hub` commands
    run beside it (Mosquitto writes its own pid file only when it daemonises)."""
    return paths.broker_dir / "mosquitto.pid"


def log_file(paths: HubPaths) -> Path:
    return BrokerFiles.managed(paths).log


class BrokerSupervisor:
    """Runs Mosquitto as a child, restarts it when it dies, stops it on exit."""

    def __init__(
        self,
        paths: HubPaths,
        *,
        program: str,
        host: str,
        port: int,
        max_packet_bytes: int,
        max_connections: int = -1,
        log_max_bytes: int = 16 << 20,
        replicas: Sequence[str] = (),
    ) -> None:
        self._paths = paths
        self._replicas = tuple(replicas)
        self._log_max_bytes = log_max_bytes
        self.log_rotations = 0
        self._program = program
        self._host = host
        self._port = port
        self._max_packet_bytes = max_packet_bytes
        self._max_connections = max_connections  # -1: Mosquitto's default, no cap
        self._process: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._rotator: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def reload(self) -> bool:
        """Make Mosquitto re-read its CRL and certificates (SIGHUP); return once it has,
        or False if it is not running or did not say so in time. Open connections stay."""
        process = self._process
        if process is None or process.returncode is not None:
            return False
        return await reload_pid(self._paths, process.pid)

    async def start(self) -> None:
        """Write the config, start Mosquitto and return once it accepts connections."""
        self._stopping.clear()  # a supervisor may be started again after a stop
        self._program = find_program(self._program)
        self._conf = await asyncio.to_thread(
            write_config,
            self._paths,
            host=self._host,
            port=self._port,
            max_packet_bytes=self._max_packet_bytes,
            max_connections=self._max_connections,
            replicas=self._replicas,
        )
        await self._spawn()
        self._watcher = asyncio.create_task(self._watch(), name="hub.broker-supervisor")
        self._rotator = asyncio.create_task(self._rotate_log(), name="hub.broker-log")

    async def stop(self) -> None:
        """Stop Mosquitto (SIGTERM, then SIGKILL after a grace period)."""
        self._stopping.set()
        for task in (self._watcher, self._rotator):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        process = self._process
        if process and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                logger.warning("mosquitto did not stop in %.0f s; killing it", STOP_TIMEOUT)
                process.kill()
                await process.wait()
        pid_file(self._paths).unlink(missing_ok=True)
        logger.info("broker stopped")

    async def _spawn(self) -> None:
        # Another program on the port would answer the readiness probe below as if it
        # were our Mosquitto: check that the port is free first.
        self._check_port_free()
        self._process = await asyncio.create_subprocess_exec(
            self._program,
            "-c",
            str(self._conf),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        await self._wait_listening(self._process)
        await asyncio.to_thread(
            files.replace, pid_file(self._paths), f"{self._process.pid}\n".encode(), files.PRIVATE
        )
        logger.info(
            "broker listening on %s:%d (mosquitto pid %d)",
            self._host,
            self._port,
            self._process.pid,
        )

    async def _wait_listening(self, process: asyncio.subprocess.Process) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.returncode is not None:
                break
            try:
                _, writer = await asyncio.open_connection(self._host, self._port)
            except OSError:
                await asyncio.sleep(0.05)  # poll: Mosquitto has no readiness signal
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        if process.returncode is None:
            process.kill()
            await process.wait()
        tail = await asyncio.to_thread(self._log_tail)
        if "Address already in use" in tail:
            raise BrokerStartError(self._port_in_use())
        raise BrokerStartError(
            f"mosquitto did not start listening on {self._host}:{self._port}: {tail}"
        )

    async def _watch(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            assert self._process is not None
            code = await self._process.wait()
            if self._stopping.is_set():
                return
            self.restarts += 1
            logger.error("mosquitto exited with status %s; restarting it", code)
            while not self._stopping.is_set():
                await asyncio.sleep(backoff.delay(attempt, cap=RESTART_BACKOFF_CAP))
                attempt += 1
                try:
                    await self._spawn()
                except (BrokerStartError, OSError) as exc:
                    logger.error("broker restart failed: %s", exc)
                    continue
                attempt = 0
                break

    async def _rotate_log(self) -> None:
        log = log_file(self._paths)
        while True:
            await asyncio.sleep(LOG_CHECK_S)
            process = self._process
            if process is None or process.returncode is not None:
                continue
            if await asyncio.to_thread(_size, log) <= self._log_max_bytes:
                continue
            try:
                await asyncio.to_thread(os.replace, log, log.with_name(log.name + ".1"))
                os.kill(process.pid, signal.SIGHUP)  # Mosquitto reopens its log file
            except OSError as exc:
                logger.warning("could not rotate the broker's log: %s", exc)
                continue
            self.log_rotations += 1

    def _check_port_free(self) -> None:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Mosquitto
            try:
                probe.bind((self._host, self._port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    return  # Mosquitto will meet it too and say why in its log
                raise BrokerStartError(self._port_in_use()) from None

    def _port_in_use(self) -> str:
        return (
            f"the broker's port {self._port} on {self._host} is in use (another program "
            "listens there): set mqtt_port in hub.toml or --mqtt-port"
        )

    def _log_tail(self) -> str:
        log = log_file(self._paths)
        try:
            lines = log.read_text(errors="replace").splitlines()[-5:]
        except FileNotFoundError:
            return "no log written"
        return " | ".join(lines) or "log is empty"


async def reload_running(paths: HubPaths) -> bool:
    """Reload the managed Mosquitto of a hub running in another process (found by its
    pid file); False if none runs (it reads the CRL when the hub next starts it)."""
    pid = await asyncio.to_thread(_running_pid, paths)
    return pid is not None and await reload_pid(paths, pid)


async def reload_pid(paths: HubPaths, pid: int) -> bool:
    """Send SIGHUP to Mosquitto `pid` and wait until its log shows it reloaded."""
    log = log_file(paths)
    offset = await asyncio.to_thread(_size, log)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while time.monotonic() < deadline:
        if await asyncio.to_thread(_logged_since, log, offset, RELOADED_LINE):
            logger.info("broker reloaded (mosquitto pid %d)", pid)
            return True
        await asyncio.sleep(0.02)  # poll: Mosquitto has no other reload signal
    logger.warning("mosquitto (pid %d) did not confirm its reload in %.0f s", pid, RELOAD_TIMEOUT)
    return False


def _running_pid(paths: HubPaths) -> int | None:
    """The pid in the pid file, if that process is still this hub's Mosquitto (a stale
    file's pid may have been reused by another program)."""
    try:
        pid = int(pid_file(paths).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    conf = str(paths.broker_dir / "mosquitto.conf").encode()
    return pid if conf in cmdline else None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _logged_since(path: Path, offset: int, line: bytes) -> bool:
    try:
        with path.open("rb") as log:
            if os.fstat(log.fileno()).st_size < offset:
                offset = 0  # moved aside and started afresh meanwhile
            log.seek(offset)
            return line in log.read()
    except FileNotFoundError:
        return False


def find_program(program: str) -> str:
    """Resolve the Mosquitto program; Debian installs it in /usr/sbin, often not on PATH."""
    found = shutil.which(program) or shutil.which(program, path="/usr/local/sbin:/usr/sbin")
    if found is None:
        raise BrokerStartError(
            f"cannot find {program!r}: install Debian's `mosquitto` package "
            "(sudo apt-get install mosquitto) or set `mosquitto` in hub.toml"
        )
    return found


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM the child if the hub dies (even by kill -9)."""
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)
    os.setpgid(0, 0)  # own process group: a Ctrl-C meant for the hub does not reach it
