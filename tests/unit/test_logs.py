"""Log lines: one JSON object (or one text line) per event, secrets redacted wherever
they appear, and the policy's masked fields masked before anything is written."""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import pty
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.masking import Masker
from outpost import logs
from tests.support import REPO

JWT = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"
PEM = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\n-----END PRIVATE KEY-----"


Captured = tuple[logging.Logger, io.StringIO, logging.Handler]


@pytest.fixture
def capture() -> Iterator[Captured]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.Redact())
    logger = logging.getLogger("test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream, handler
    logger.removeHandler(handler)


def _events(stream: io.StringIO) -> list[dict[str, object]]:
    lines = stream.getvalue().splitlines()
    return [json.loads(line) for line in lines]


def test_one_json_object_per_event_with_extra_fields_and_traceback(capture: Captured) -> None:
    logger, stream, _ = capture
    logger.info("stored %d records", 3, extra={"stream": "results", "seq": 7})
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        logger.exception("failed")
    first, second = _events(stream)  # two events, two lines: the traceback stays inside
    assert first["msg"] == "stored 3 records"
    assert (first["level"], first["logger"]) == ("info", "test.logs")
    assert (first["stream"], first["seq"]) == ("results", 7)
    assert isinstance(first["ts"], str)
    assert first["ts"].endswith("Z")
    logged = datetime.datetime.fromisoformat(first["ts"])
    assert logged.utcoffset() == datetime.timedelta(0)
    assert abs(logged.timestamp() - time.time()) < 60
    assert second["level"] == "error"
    assert "ValueError: bad" in str(second["exc"])


def test_secrets_are_redacted_in_message_arguments_fields_and_tracebacks(capture: Captured) -> None:
    logger, stream, _ = capture
    logger.warning("header was Bearer %s", JWT)
    logger.warning("token %s", JWT, extra={"request": {"auth": f"Bearer {JWT}", "n": 1}})
    logger.error("key:\n%s", PEM)
    try:
        raise RuntimeError(f"refused {JWT}")
    except RuntimeError:
        logger.exception("call failed")
    text = stream.getvalue()
    assert "eyJ" not in text
    assert "MIGH" not in text
    assert text.count(logs.REDACTED) >= 4
    events = _events(stream)
    assert events[1]["request"] == {"auth": logs.REDACTED, "n": 1}


def test_masked_fields_never_reach_the_log(capture: Captured, tmp_path: Path) -> None:
    logger, stream, handler = capture
    masker = Masker(tmp_path / "mask.key")
    masker.set_rules(["operator"], ["serial"])
    handler.addFilter(logs.MaskFields(masker.mask))
    logger.debug(
        "1 record", extra={"record": {"operator": "alice", "serial": "SN-1", "v": 2}, "n": 1}
    )
    (event,) = _events(stream)
    record = event["record"]
    assert isinstance(record, dict)
    assert set(record) == {"serial", "v"}
    assert str(record["serial"]).startswith("hmac:")
    assert "alice" not in stream.getvalue()
    assert "SN-1" not in stream.getvalue()


def test_text_lines_stay_on_one_line() -> None:
    record = logging.makeLogRecord(
        {"name": "hub", "levelname": "INFO", "msg": "hello", "args": None, "site": "north"}
    )
    record.exc_text = "Traceback\n  line\nValueError"
    line = logs.TextFormatter(with_time=False).format(record)
    assert line == 'INFO hub: hello site="north" | Traceback |   line | ValueError'


# One record at a known moment, through `configure` as the daemons and CLIs call it.
AT_A_KNOWN_MOMENT = """
import logging
from outpost import logs

logs.configure("info")
logging.getLogger("hub").handle(
    logging.makeLogRecord(
        {"name": "hub", "levelname": "INFO", "levelno": 20, "msg": "hello",
         "created": 1_700_000_000.25}
    )
)
"""
# POSIX TZ syntax (no time zone database needed): a zone at UTC+05:30.
PLUS_FIVE_THIRTY = {"TZ": "XYZ-5:30"}


def test_on_a_terminal_the_log_is_text_in_local_time() -> None:
    leader, follower = pty.openpty()
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", AT_A_KNOWN_MOMENT],
            stderr=follower,
            cwd=REPO,
            env={**os.environ, **PLUS_FIVE_THIRTY},
        )
        os.close(follower)
        follower = -1
        assert child.wait(timeout=60) == 0
        written = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other side is closed, all read
                break
            if not chunk:
                break
            written += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)

    # 1700000000 is 2023-11-14 22:13:20 UTC.
    assert written.decode().splitlines() == ["2023-11-15 03:43:20.250 INFO hub: hello"]


def test_elsewhere_the_log_is_json_with_an_iso_8601_utc_time() -> None:
    done = subprocess.run(
        [sys.executable, "-c", AT_A_KNOWN_MOMENT],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=REPO,
        env={**os.environ, **PLUS_FIVE_THIRTY},
    )

    (event,) = [json.loads(line) for line in done.stderr.splitlines()]
    assert event["ts"] == "2023-11-14T22:13:20.250000Z"
    assert datetime.datetime.fromisoformat(event["ts"]).timestamp() == 1_700_000_000.25
