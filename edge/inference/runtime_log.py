"""The inference runtime's own log lines, turned into records of the agent's log.

LiteRT prints from C++ straight to file descriptor 2, past Python's logging: `INFO:
Created TensorFlow Lite XNNPACK delegate for CPU.` when the first interpreter of a
process applies its default delegate. No setting turns that off: the runtime's minimum
severity is a C++ static with no environment variable and no exported setter in the
wheel (TF_CPP_MIN_LOG_LEVEL governs TensorFlow's other logger, not this one; tried on
ai-edge-litert 2.3.0). So while an interpreter is made, descriptor 2 points at a
temporary file; afterwards the runtime's lines (`SEVERITY: message`) become records of
this module's logger and any other bytes (a line another thread wrote meanwhile) go on
to the real stderr unchanged, only a little later.

The detour lasts until the runtime has printed that line, which it does once per
process: after it, interpreters are made with stderr untouched. That keeps the window
in which a crash's last words would land in the temporary file to the first model load.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator

logger = logging.getLogger(__name__)

# What tflite's minimal logger writes: "%s: " with the severity's name, the message, "\n".
_RUNTIME_LINE = re.compile(rb"(VERBOSE|INFO|WARNING|ERROR): (.*)")
# The runtime's INFO is chatter about its own set-up: debug here, to keep a terminal quiet.
_LEVELS = {
    b"VERBOSE": logging.DEBUG,
    b"INFO": logging.DEBUG,
    b"WARNING": logging.WARNING,
    b"ERROR": logging.ERROR,
}
_ONCE = b"Created TensorFlow Lite XNNPACK delegate"
STDERR = 2

# Descriptor 2 is one per process: two threads making interpreters at once must not both
# point it somewhere (the second would save the first's file as "the real stderr").
_lock = threading.Lock()
_once_seen = False


@contextlib.contextmanager
def runtime_lines_to_log() -> Iterator[None]:
    """Run the block with the runtime's stderr lines captured and logged as records."""
    global _once_seen
    if _once_seen:  # read without the lock: at worst one more detour than needed
        yield
        return
    with _lock, tempfile.TemporaryFile() as capture:
        try:
            saved = _redirect(capture.fileno())
        except OSError:  # no descriptor 2 at all (closed by a supervisor): nothing to hide
            yield
            return
        try:
            yield
        finally:  # a failed load too: its error lines say why
            _restore(saved)
            capture.seek(0)
            if replay(capture.read()):
                _once_seen = True


def replay(captured: bytes) -> bool:
    """Log the runtime's lines in `captured`, pass the rest on to stderr; say whether the
    runtime's once-per-process line was among them."""
    passed: list[bytes] = []
    once = False
    for line in captured.splitlines(keepends=True):
        match = _RUNTIME_LINE.fullmatch(line.rstrip(b"\r\n"))
        if match is None:
            passed.append(line)
            continue
        severity, message = match.groups()
        once = once or message.startswith(_ONCE)
        logger.log(_LEVELS[severity], "runtime: %s", message.decode(errors="replace"))
    _write_all(b"".join(passed))
    return once


def _redirect(target: int) -> int:
    """Point descriptor 2 at `target`; return a copy of what it pointed at."""
    _flush_stderr()  # what Python buffered so far belongs to the real stderr
    saved = os.dup(STDERR)
    try:
        os.dup2(target, STDERR)
    except OSError:
        os.close(saved)
        raise
    return saved


def _restore(saved: int) -> None:
    _flush_stderr()
    try:
        os.dup2(saved, STDERR)
    finally:
        os.close(saved)


def _flush_stderr() -> None:
    if sys.stderr is not None:
        sys.stderr.flush()


def _write_all(data: bytes) -> None:
    view = memoryview(data)
    # A stderr that cannot be written loses these bytes as it loses every other line;
    # it must not turn the model's load into a failure.
    with contextlib.suppress(OSError):
        while view:
            view = view[os.write(STDERR, view) :]
