"""Database URLs named in log lines and errors (hub/dburl.py): never with the password,
whatever the URL, libpq's failover form and a broken IPv6 host included."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

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


# Each password's two halves are checked apart: any piece of it in a message is a leak.
ODD_PASSWORDS = ["Zq1?Wv2", "Zq1/Wv2", "Zq1#Wv2", "Zq1@Wv2", "Zq1:Wv2", "Zq1?/#@:Wv2", "Zq1@Wv2:x"]
HOST_LISTS = ["127.0.0.1:1", "h1:5432,h2:5433", "[::1]:5432", "db"]


def _libpq_ports(url: str) -> list[str] | None:
    """The ports libpq itself reads from `url` (none given: an empty list); None if
    libpq cannot parse it (PostgresEngine then says so without quoting it)."""
    try:
        port = conninfo_to_dict(url).get("port", "")
    except psycopg.ProgrammingError:
        return None
    return [p for p in str(port).split(",") if p]


@pytest.mark.parametrize("hosts", HOST_LISTS)
@pytest.mark.parametrize("password", ODD_PASSWORDS)
@pytest.mark.parametrize("query", ["", "?sslmode=disable"])
def test_an_odd_password_is_never_shown_and_a_valid_url_never_refused(
    password: str, hosts: str, query: str
) -> None:
    """libpq ends the password at the first '@' before any '/', so '?', '#' and ':' are
    plain characters in it; an unescaped '@' or '/' makes libpq read a piece of the
    password as a host or port. Whatever libpq reads, port_problem says what libpq says
    of the ports (a number or not) and neither it nor describe quotes the password."""
    url = f"postgresql://hub:{password}@{hosts}/hub{query}"
    problem = port_problem(url)

    ports = _libpq_ports(url)
    if ports is not None:
        libpq_refuses = any(not p.isdigit() for p in ports)
        assert (problem is not None) == libpq_refuses, (url, problem, conninfo_to_dict(url))
    for said in (problem or "", describe(url)):
        assert "Zq1" not in said
        assert "Wv2" not in said


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://hub:s3cr?et@127.0.0.1:1/hub",  # libpq: password 's3cr?et', port 1
        "postgresql://hub:s3cr?et@h1:5432,h2:5433/hub",
        "postgresql://hub:s3cr#et@[::1]:5432/hub",
        "postgresql://u:pw@h:5432?password=a@b:zz",  # the '@' is the query's
        "postgresql://h:%35432/x",  # libpq decodes the port: 5432
    ],
)
def test_urls_libpq_reads_with_number_ports_pass(url: str) -> None:
    ports = _libpq_ports(url)
    assert ports is not None
    assert all(p.isdigit() for p in ports)
    assert port_problem(url) is None


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://hub:s3cr/et@127.0.0.1:1/hub",  # libpq: host 'hub', port 's3cr'
        "postgresql://hub:s3cr@et:x@127.0.0.1:1/hub",  # libpq: host 'et', port 'x@127...'
    ],
)
def test_a_port_that_may_be_part_of_the_password_is_not_quoted(url: str) -> None:
    problem = port_problem(url)

    assert problem is not None
    assert problem.startswith("a port of its hosts is not a number as libpq reads the URL")
    assert "s3cr" not in problem
    assert "et" not in problem.partition(";")[0]
    assert "s3cr" not in describe(url)
