"""Database URLs named in log lines and errors (hub/dburl.py): never with the password,
whatever the URL, libpq's failover form and a broken IPv6 host included."""

from __future__ import annotations

import pytest

from hub.dburl import describe, is_postgres


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
