"""Throwaway message buses for the tests, and a consumer of each that collects what the
sinks published.

- `ThrowawayNats`: `nats-server -js` on a free loopback port, its store in a temporary
  folder, optionally with a user and password. It starts in a blink, so a test that
  stops and restarts a server makes its own.
- `ThrowawayRabbit`: a RabbitMQ node run as the current user with a node name, ports,
  database, logs, configuration, plugins (none) and Erlang cookie all its own, and its
  own epmd on a free port: it never meets a node the machine runs (Debian's package
  starts one as a system service). It takes seconds to boot, so the tests share one per
  run (per xdist worker: `rabbitmq_server` in conftest.py) and never change it.

Both come from Debian's packages (`nats-server`, `rabbitmq-server`), which
`scripts/setup.sh --test-tools` installs. Neither is ever the one listening on the
standard ports: every port here is a free one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aio_pika
import nats
from aio_pika.abc import AbstractIncomingMessage
from nats.js.api import ConsumerConfig, DeliverPolicy

from tests.support import free_port
from tests.tlsfiles import make_tls_files

START_S = 90.0  # RabbitMQ boots in ~7 s on 2 cores; a machine 5x slower still fits
STOP_S = 30.0


def _binary(name: str, *candidates: str) -> str:
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which(name)
    if found:
        return found
    raise RuntimeError(
        f"{name} not found: install Debian's package (scripts/setup.sh --test-tools)"
    )


def _tied(argv: list[str], signal_name: str = "KILL") -> list[str]:
    """`argv`, sent SIGKILL (or `signal_name`) by the kernel if the thread that starts it
    ends first: a test process or a benchmark killed on its deadline leaves no broker
    behind (the server runs in a process group of its own, which a kill of the caller's
    group misses)."""
    setpriv = shutil.which("setpriv")  # util-linux: on every Debian and Ubuntu
    return [setpriv, "--pdeathsig", signal_name, "--", *argv] if setpriv else argv


def _stop_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process's group, wait, then SIGKILL whatever is left of it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
    # The group outlives its leader when a child lingers (erl_child_setup, inet_gethost).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process's group at once (a crash: nothing flushed, nothing said)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            return False
        return True


class ThrowawayNats:
    """One `nats-server -js`; `stop()` keeps its store, so `start()` again is a restart
    of the same server (same port, same streams)."""

    def __init__(self, *, user: str = "", password: str = "", config: str = "") -> None:
        """`config`: nats-server configuration (e.g. an `authorization` block of users
        and permissions) under the command line's port, address and store."""
        self.folder = Path(tempfile.mkdtemp(prefix="outpost-nats-"))
        self.port = free_port()
        self.user = user
        self.password = password
        self._config = config
        self._process: subprocess.Popen[bytes] | None = None
        self._binary = _binary("nats-server", "/usr/sbin/nats-server", "/usr/bin/nats-server")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    def credentials_file(self) -> str:
        """A file holding USER:PASSWORD, as a sink's `credentials_file` ("" without a user)."""
        if not self.user:
            return ""
        path = self.folder / "sink.creds"
        path.write_text(f"{self.user}:{self.password}\n")
        return str(path)

    def start(self) -> None:
        argv = [
            self._binary,
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-sd",
            str(self.folder / "store"),
            "-l",
            str(self.log),
        ]
        if self.user:
            argv += ["--user", self.user, "--pass", self.password]
        if self._config:
            path = self.folder / "server.conf"
            path.write_text(self._config)
            argv += ["-c", str(path)]
        self._process = subprocess.Popen(
            _tied(argv),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_S
        while not _accepts(self.port):
            if self._process.poll() is not None:
                raise RuntimeError(f"nats-server exited at start:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not listen in {START_S} s")
            time.sleep(0.02)  # a poll with a deadline

    def stop(self) -> None:
        if self._process is not None:
            _stop_group(self._process, STOP_S)
            self._process = None

    def kill(self) -> None:
        """kill -9 the server; `start()` again recovers its store (a crashed bus)."""
        if self._process is not None:
            _kill_group(self._process)
            self._process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> ThrowawayNats:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ThrowawayRabbit:
    """One RabbitMQ node with one administrator (`user`, `password`) on vhost `/`."""

    def __init__(self, *, config: str = "") -> None:
        """`config`: more rabbitmq.conf lines (e.g. `max_message_size = 4096`)."""
        self._config = config
        self.folder = Path(tempfile.mkdtemp(prefix="outpost-rabbit-"))
        self.port = free_port()
        self.user = "outpost"
        self.password = secrets.token_hex(12)
        self.node = f"outpost-test-{uuid.uuid4().hex[:12]}@localhost"
        # A second listener, amqps:// with mutual TLS, on certificates of a CA of its own.
        self.tls_port = free_port()
        self.tls = make_tls_files(self.folder / "tls")
        self._dist_port = free_port()
        self._epmd_port = free_port()
        self._server = _binary("rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmq-server")
        self._epmd = _binary("epmd", "/usr/bin/epmd")
        self._process: subprocess.Popen[bytes] | None = None
        self._epmd_process: subprocess.Popen[bytes] | None = None

    def url(self, user: str | None = None, password: str | None = None) -> str:
        """amqp://USER:PASSWORD@127.0.0.1:PORT/ (this node's administrator by default)."""
        return (
            f"amqp://{user if user is not None else self.user}:"
            f"{password if password is not None else self.password}@127.0.0.1:{self.port}/"
        )

    @property
    def tls_address(self) -> str:
        """amqps://127.0.0.1:TLS_PORT/: the listener that asks for a client certificate."""
        return f"amqps://127.0.0.1:{self.tls_port}/"

    @property
    def address(self) -> str:
        """amqp://127.0.0.1:PORT/, without credentials: a sink reads them from a file
        (`credentials_file`) and refuses a URL that holds them."""
        return f"amqp://127.0.0.1:{self.port}/"

    def credentials_file(self) -> str:
        """A file holding USER:PASSWORD of the administrator, as a sink's `credentials_file`."""
        path = self.folder / "sink.creds"
        path.write_text(f"{self.user}:{self.password}\n")
        return str(path)

    def _environment(self) -> dict[str, str]:
        home = self.folder / "home"
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "LANG": "C.UTF-8",
            # The Erlang cookie lives in $HOME: a temporary one, so neither the system
            # node's cookie nor the invoking user's is read or written.
            "HOME": str(home),
            "ERL_EPMD_PORT": str(self._epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self._dist_port),
            # Not the machine's /etc/rabbitmq/rabbitmq-env.conf, advanced.config or
            # rabbitmq.conf: ours, in the temporary folder.
            "RABBITMQ_CONF_ENV_FILE": str(self.folder / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.folder / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_PID_FILE": str(self.folder / "rabbit.pid"),
        }

    def start(self) -> None:
        home = self.folder / "home"
        home.mkdir(exist_ok=True)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():  # a restart keeps the node's cookie
            cookie.write_text(secrets.token_hex(16).upper())
            cookie.chmod(0o400)
        (self.folder / "rabbitmq-env.conf").write_text("")
        (self.folder / "enabled_plugins").write_text("[].\n")
        # The administrator is made when the node first boots (no rabbitmqctl round trip,
        # each of which boots an Erlang VM). A low disk limit: a test machine with little
        # room left must not see its publishers blocked by a disk alarm.
        (self.folder / "rabbitmq.conf").write_text(
            f"default_user = {self.user}\n"
            f"default_pass = {self.password}\n"
            "default_permissions.configure = .*\n"
            "default_permissions.read = .*\n"
            "default_permissions.write = .*\n"
            "default_user_tags.administrator = true\n"
            "disk_free_limit.absolute = 10MB\n"
            f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
            f"ssl_options.cacertfile = {self.tls.ca}\n"
            f"ssl_options.certfile = {self.tls.server_cert}\n"
            f"ssl_options.keyfile = {self.tls.server_key}\n"
            "ssl_options.verify = verify_peer\n"
            "ssl_options.fail_if_no_peer_cert = true\n"
            "log.console = false\n"
            "log.file.level = info\n" + self._config
        )
        env = self._environment()
        output = (self.folder / "console.log").open("wb")
        # Our own epmd, in the node's process group, so it ends with the node (one that
        # erl started itself would detach and outlive the test).
        self._epmd_process = subprocess.Popen(
            _tied([self._epmd, "-port", str(self._epmd_port), "-address", "127.0.0.1"]),
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        # rabbitmq-server is a shell script that runs the VM as its child (the kernel's
        # parting signal reaches only the script) and stops it on SIGTERM.
        self._process = subprocess.Popen(
            _tied([self._server], "TERM"),
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.folder,
            start_new_session=True,
        )
        output.close()
        deadline = time.monotonic() + START_S
        while not self._speaks_amqp():
            if self._process.poll() is not None:
                self.stop()
                raise RuntimeError(f"rabbitmq-server exited at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rabbitmq-server did not answer in {START_S} s")
            time.sleep(0.1)  # a poll with a deadline

    def _speaks_amqp(self) -> bool:
        """The node answers AMQP's protocol header with connection.start: its listener
        is up, which RabbitMQ opens last, after the administrator exists."""
        with socket.socket() as s:
            s.settimeout(2.0)
            try:
                s.connect(("127.0.0.1", self.port))
                s.sendall(b"AMQP\x00\x00\x09\x01")
                first = s.recv(1)
            except OSError:
                return False
        return first == b"\x01"  # a method frame

    def log_tail(self) -> str:
        texts = []
        for path in [self.folder / "console.log", *sorted((self.folder / "log").glob("*.log"))]:
            with contextlib.suppress(OSError):
                texts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(texts)

    def stop(self) -> None:
        if self._process is not None:
            _stop_group(self._process, STOP_S)
            self._process = None
        if self._epmd_process is not None:
            _stop_group(self._epmd_process, 5)
            self._epmd_process = None

    def kill(self) -> None:
        """kill -9 the node (the VM and its helpers); `start()` again recovers its
        database and durable queues (a crashed broker)."""
        if self._process is not None:
            _kill_group(self._process)
            self._process = None
        self.stop()  # its epmd

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> ThrowawayRabbit:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class Received:
    """One message as a consumer saw it."""

    topic: str  # the NATS subject or the AMQP routing key
    id: str  # Nats-Msg-Id or message_id
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)


async def read_stream(
    url: str, stream: str, *, user: str = "", password: str = "", timeout: float = 10.0
) -> list[Received]:
    """Every message the JetStream stream holds, in stream order, read by an ephemeral
    consumer from the first message on."""
    client = await nats.connect(
        url, user=user or None, password=password or None, allow_reconnect=False
    )
    try:
        js = client.jetstream()
        held = (await js.stream_info(stream)).state.messages
        out: list[Received] = []
        if not held:
            return out
        sub = await js.subscribe(
            "outpost.>",
            stream=stream,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        deadline = time.monotonic() + timeout
        while len(out) < held:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"read {len(out)} of {held} messages of {stream}")
            msg = await sub.next_msg(timeout=left)
            headers = dict(msg.headers or {})
            out.append(Received(msg.subject, headers.get("Nats-Msg-Id", ""), msg.data, headers))
        await sub.unsubscribe()
        return out
    finally:
        await client.close()


async def stream_count(url: str, stream: str, *, user: str = "", password: str = "") -> int:
    """How many messages the stream holds."""
    client = await nats.connect(
        url, user=user or None, password=password or None, allow_reconnect=False
    )
    try:
        return (await client.jetstream().stream_info(stream)).state.messages
    finally:
        await client.close()


async def delete_stream(url: str, stream: str, *, user: str = "", password: str = "") -> None:
    """Delete the stream if it exists (a shared server's streams must not overlap)."""
    client = await nats.connect(
        url, user=user or None, password=password or None, allow_reconnect=False
    )
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await client.jetstream().delete_stream(stream)
    finally:
        await client.close()


class AmqpCollector:
    """An exclusive queue bound to `outpost.#` on a topic exchange, collecting every
    message routed to it. Bind it before publishing: RabbitMQ drops what no queue takes."""

    def __init__(self, url: str, exchange: str) -> None:
        self._url = url
        self._exchange = exchange
        self.messages: list[Received] = []
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> AmqpCollector:
        connection = await aio_pika.connect(self._url)
        await self._stack.enter_async_context(connection)
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            self._exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, "outpost.#")
        await queue.consume(self._take, no_ack=True)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def _take(self, message: AbstractIncomingMessage) -> None:
        self.messages.append(
            Received(
                message.routing_key or "",
                message.message_id or "",
                message.body,
                {
                    "content_type": message.content_type,
                    "delivery_mode": message.delivery_mode,
                    "timestamp": message.timestamp,
                    **dict(message.headers),
                },
            )
        )

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """The messages once at least `count` arrived; AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.messages)} of {count} AMQP messages arrived")
            await asyncio.sleep(0.02)  # a poll with a deadline
        return list(self.messages)

    async def wait_for_id(self, message_id: str, timeout: float = 10.0) -> list[Received]:
        """The messages once one with `message_id` arrived; AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        while all(m.id != message_id for m in self.messages):
            if time.monotonic() > deadline:
                raise AssertionError(f"no AMQP message {message_id} among {len(self.messages)}")
            await asyncio.sleep(0.02)  # a poll with a deadline
        return list(self.messages)


def once_each(messages: list[Received]) -> list[Received]:
    """What a consumer that dedupes by id keeps: the first of each id, in order."""
    seen: set[str] = set()
    kept = []
    for message in messages:
        if message.id not in seen:
            seen.add(message.id)
            kept.append(message)
    return kept
