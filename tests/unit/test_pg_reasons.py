"""PostgreSQL's reason for refusing a connection, as the hub prints it: libpq's lines kept
and joined on one line ("Connection refused" and the hint after it), without its tabs."""

from __future__ import annotations

import pytest

from hub.dburl import DatabaseUrlError
from hub.store.engine import open_engine
from hub.store.postgres import DatabaseUnavailableError, PostgresEngine, one_line
from tests.support import free_port


def test_a_refused_connection_keeps_the_reason_and_the_hint() -> None:
    port = free_port()  # nothing listens there

    with pytest.raises(DatabaseUnavailableError) as refused:
        PostgresEngine(f"postgresql://outpost@127.0.0.1:{port}/hub")

    said = str(refused.value)
    assert f"port {port} failed: Connection refused; Is the server running on that host" in said
    assert "\t" not in said
    assert "\n" not in said


def test_a_port_that_is_no_number_is_named_before_connecting() -> None:
    with pytest.raises(DatabaseUnavailableError, match="the port 'notaport' of host 'h'"):
        PostgresEngine("postgresql://u@h:notaport/x")


@pytest.mark.parametrize(
    ("message", "line"),
    [
        ("connection failed: at x failed: Connection refused\n\tIs the server running?",
         "connection failed: at x failed: Connection refused; Is the server running?"),
        ("Multiple connection attempts failed. All failures were:\n- host: 'a': refused\n"
         "- host: 'b': refused",
         "Multiple connection attempts failed. All failures were: - host: 'a': refused; "
         "- host: 'b': refused"),
        ('FATAL:  password authentication failed for user "x"\n',
         'FATAL: password authentication failed for user "x"'),
        ("", ""),
    ],
)  # fmt: skip
def test_libpq_s_lines_are_joined(message: str, line: str) -> None:
    assert one_line(message) == line


@pytest.mark.parametrize("password", ["s3cr?et", "s3cr#et", "s3cr:et"])
def test_a_password_with_odd_characters_is_used_not_refused_nor_shown(password: str) -> None:
    """libpq reads 's3cr?et' before the '@' as the password and 1 as the port: the URL is
    tried (the connection is refused, nothing listens), and no piece of the password is
    in the error."""
    port = free_port()

    with pytest.raises(DatabaseUrlError) as refused:
        open_engine(f"postgresql://hub:{password}@127.0.0.1:{port}/hub")

    said = str(refused.value)
    assert f"port {port} failed: Connection refused" in said
    assert "is not a number" not in said
    assert "s3cr" not in said
    assert "et@" not in said


def test_a_password_with_a_slash_is_not_shown_in_the_refusal() -> None:
    """An unescaped '/' ends libpq's host list early: it reads host 'hub', port 's3cr'."""
    with pytest.raises(DatabaseUrlError) as refused:
        open_engine("postgresql://hub:s3cr/et@127.0.0.1:1/hub")

    said = str(refused.value)
    assert "is not a number" in said
    assert "s3cr" not in said
    assert "et@" not in said
