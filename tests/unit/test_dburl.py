"""Database URLs named in log lines and errors (hub/dburl.py): never with the password,
whatever the URL, libpq's failover form and a broken IPv6 host included."""

from __future__ import annotations

import pytest

from hub.dburl import describe, is_postgres, port_problem


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://outpost:s3cret@db:5432/hub", "postgresql://outpost@db:5432/hub"),
        ("postgresql://outpost:s3cret@a:1,b:2/hub", "postgresql://outpost@a:1,b:2/hub"),
        ("postgresql://outpost:s3cret@[::1/hub", "postgresql://outpost@[::1/hub"),
        ("postgresql://outpost:s3cret%zz@db/hub", "postgresql://outpost@db/hub"),
        ("postgresql://db/hub?password=s3cret", "postgresql://db/hub"),
        ("postgresql:///hub", "postgresql://local socket/hub"),
        ("hub.db", "hub.db"),
    ],
)
def test_a_url_is_named_without_its_password(url: str, shown: str) -> None:
    assert describe(url) == shown
    assert "s3cret" not in describe(url)


def test_which_urls_are_postgresql() -> None:
    assert is_postgres("postgresql://outpost:s3cret@[::1/hub")  # broken, but named so
    assert is_postgres("postgres://db/hub")
    assert not is_postgres("sqlite:hub.db")
    assert not is_postgres("/var/lib/hub/postgresql.db")


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("postgresql://u@h:notaport/x", "the port 'notaport' of host 'h' is not a number"),
        ("postgresql://u:p@a:5432,b:x2/x", "the port 'x2' of host 'b' is not a number"),
        ("postgresql://u@[::1]:p/x", "the port 'p' of host '[::1]' is not a number"),
        ("postgresql://h:" + "9" * 30 + "x/x", "the port '" + "9" * 20 + "...' of host 'h'"),
    ],
)
def test_a_port_that_is_no_number_is_named(url: str, said: str) -> None:
    """libpq hands it to the resolver, which says "Servname not supported for ai_socktype"."""
    problem = port_problem(url)

    assert problem is not None
    assert problem.startswith(said)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:pw@h:5432/x",
        "postgresql://u:p:w@h/x",  # a colon in the password is no port
        "postgresql://a:1,b:2/x",
        "postgresql://u@[::1]:5432/x",
        "postgresql://u@[::1/x",  # broken, but libpq says so itself
        "postgresql:///x",
        "postgresql://h:/x",  # an empty port is libpq's default one
        "postgresql://h/x?port=5432",
    ],
)
def test_urls_with_number_ports_or_none_pass(url: str) -> None:
    assert port_problem(url) is None
