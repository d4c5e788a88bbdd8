"""Logging for the daemons: one event per line on stderr, as JSON (for journald and log
shippers) or as text (for a person at a terminal).

Every line passes a redaction step first: bearer tokens, JWTs and PEM private keys are
replaced wherever they appear (message, arguments, extra fields, tracebacks), so a
secret that slips into a log call never reaches the log. Fields passed as `extra` are
written as fields of the JSON object; the agent masks those its policy names (see
`MaskFields`) before they are written.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import Any, Literal

LogFormat = Literal["auto", "json", "text"]
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "json", "text")
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")

# What a secret looks like in text: a bearer token, a JWT (three base64url parts, the
# first the encoding of '{"'), a PEM private key block.
SECRETS = re.compile(
    r"(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}"
    r"|eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
    re.DOTALL,
)
REDACTED = "[redacted]"
# The attributes every LogRecord has: the rest came from `extra`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def configure(level: str, *, fmt: LogFormat = "auto", with_time: bool = True) -> None:
    """Send log records at `level` and above to stderr, as JSON lines or text (`auto`:
    text on a terminal, JSON otherwise)."""
    handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter(with_time=with_time))
    handler.addFilter(Redact())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # paho logs every packet at DEBUG; keep it at INFO unless asked for explicitly.
    logging.getLogger("mqtt").setLevel(max(logging.INFO, logging.getLogger().level))


def redact(text: str) -> str:
    return SECRETS.sub(REDACTED, text)


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class Redact(logging.Filter):
    """Replace secrets in the message and every extra field (the formatted message is
    computed here, once, so arguments are covered too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.exc_info = None  # formatted above; the formatters use exc_text
        for key, value in extra_fields(record).items():
            setattr(record, key, _walk(value, lambda s: redact(s)))
        return True


class MaskFields(logging.Filter):
    """Apply a masking function (the agent's policy rules) to the extra fields of each
    record before it is written: a masked field never reaches the log."""

    def __init__(self, mask: Callable[[Any], Any]) -> None:
        super().__init__()
        self._mask = mask

    def filter(self, record: logging.LogRecord) -> bool:
        fields = extra_fields(record)
        if fields:
            masked = self._mask(fields)
            for key in fields:
                if key in masked:
                    setattr(record, key, masked[key])
                else:
                    delattr(record, key)  # a dropped field
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO 8601 in UTC, to the microsecond), level, logger,
    msg, the extra fields, and exc (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": iso_utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            event.setdefault(key, value)
        if record.exc_text:
            event["exc"] = record.exc_text
        return json.dumps(event, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...` on one line; the time is local, to the
    millisecond (a person at the terminal reads their own clock)."""

    def __init__(self, *, with_time: bool = True) -> None:
        super().__init__()
        self._with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self._with_time:
            parts.append(local_time(record.created))
        parts.append(f"{record.levelname} {record.name}: {record.getMessage()}")
        parts += [f"{k}={json.dumps(v, default=str)}" for k, v in extra_fields(record).items()]
        line = " ".join(parts)
        if record.exc_text:
            line += " | " + record.exc_text.replace("\n", " | ")
        return line


def local_time(epoch: float) -> str:
    """`epoch` in the local time zone, to the millisecond: 2026-03-01 10:30:00.250."""
    whole = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
    return f"{whole}.{int(epoch % 1 * 1000):03d}"


def iso_utc(epoch: float) -> str:
    """`epoch` as ISO 8601 in UTC with a Z, to the microsecond: 2026-03-01T09:30:00.250000Z.

    UTC, not local time: log shippers and journald merge lines from machines in several
    time zones, and a zone's offset changes twice a year; the Z says which it is.
    """
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    return moment.isoformat(timespec="microseconds").removesuffix("+00:00") + "Z"


def _walk(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _walk(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_walk(v, fn) for v in value]
    return value
